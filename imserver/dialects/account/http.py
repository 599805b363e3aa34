"""
Document 001's HTTP API as a Klein app: ``/register /upload /log /room
/list /friend /golden``.

Each path serves several operations; the flag fields choose one
(``register=1``, ``live=1``, ``friendlist=1`` …). Parameters come from the
query string and a form, multipart or JSON body alike, with GET or POST
(:func:`imserver.web.http.read_params`). Every route reads its parameters,
authenticates the token where the operation needs a user, calls the core
(accounts, friends, wallet, live rooms, media) and answers with the
document's envelope (:mod:`.codec`). A route never touches Redis itself.

A handler answers a refusal by raising :class:`.codec.Refused` with the
document's code; anything unexpected is logged and answered with ``0006``
(``0013`` on ``/golden``, the document's "database update error") so a
client always gets the envelope.
"""

from __future__ import annotations

import math

from klein import Klein
from twisted.logger import Logger

from imserver import metrics
from imserver.core.accounts import (CodeExpired, CodeLocked, CodeMismatch, DuplicatePhone,
                                    UnknownUser, WrongPassword)
from imserver.core.errors import CoreError, InvalidInput, NotFound
from imserver.core.friends import AlreadyFriends, NotFriends
from imserver.core.wallet import InsufficientGold, UnknownAnchor
from imserver.dialects.account import codec
from imserver.dialects.account.codec import Refused, reply
from imserver.web.http import BodyTooLarge, client_address, json_body, read_params, token_from

log = Logger()

LOGIN_FAILURES = 10          # failed logins per phone (x5 per address) ...
LOGIN_WINDOW = 300           # ... within this many seconds, then 0016 until it passes
UPLOADS_PER_HOUR = 60        # avatar uploads per address
FRIEND_REQUESTS_PER_HOUR = 100
VERIFY_WINDOW = 300          # step 2 needs a phone verified within this many seconds
LEDGER_PAGE = 50

ROOM_OPS = ("live", "leave")
LIST_OPS = ("friendlist", "messagelist")
FRIEND_OPS = ("search", "add", "dealMessage", "delete")
GOLDEN_OPS = ("refill", "send_gift", "balance", "ledger")


class AccountApi:
    app = Klein()
    # the paths that take files: the site buffers bodies up to the upload cap there
    UPLOAD_PATHS = ("/upload",)

    def __init__(self, *, accounts, limits, friends, wallet, clock, live=None, media=None,
                 max_body: int = 1024 * 1024, max_upload: int = 20 * 1024 * 1024):
        self.accounts = accounts
        self.limits = limits
        self.friends = friends
        self.wallet = wallet
        self.clock = clock
        self.live = live
        self.media = media
        self.max_body = max_body
        self.max_upload = max_upload

    # -- the common path of every request ---------------------------------------

    async def _serve(self, request, handler, *, authenticated: bool = True,
                     max_body: int | None = None, failure: str = codec.UNKNOWN_ERROR):
        metrics.HTTP_REQUESTS.labels("account").inc()
        try:
            params = await read_params(request, max_body or self.max_body)
        except BodyTooLarge as e:
            return json_body(request, reply(codec.BAD_REQUEST, e.reason), status=413)
        except InvalidInput as e:
            return json_body(request, reply(codec.BAD_REQUEST, e.reason))
        try:
            user = None
            if authenticated:
                user = await self.accounts.user_for_token(token_from(request, params))
                if user is None:
                    raise Refused(codec.BAD_TOKEN, "invalid or expired token")
            result = await handler(request, params, user)
        except Refused as r:
            result = r.reply()
        except Exception:
            log.failure("account request {path} failed",
                        path=request.path.decode("utf-8", "replace"))
            result = reply(failure, "update failed" if failure == codec.UPDATE_FAILED
                           else "internal error")
        return json_body(request, result)

    async def _find_user(self, ref: str):
        """A user named by 001's ``userId`` (the phone) or by numeric user id."""
        ref = (ref or "").strip()
        if not ref or len(ref) > 32:
            return None
        user = await self.accounts.get_by_phone(ref)
        if user is None and ref.isdigit() and len(ref) < 11:
            user = await self.accounts.get(ref)
        return user

    # -- /register: SMS code, verification, account creation -----------------------

    @app.route("/register", methods=["GET", "POST"])
    async def register(self, request):
        return await self._serve(request, self._register, authenticated=False)

    async def _register(self, request, p, _user):
        if codec.flag(p, "register"):
            return await self._create_account(p)
        # the document names the phone ``token`` on the code request, the
        # original client sent ``userId`` (ORIGINALS.md): both work
        phone = (p.get("userId") or p.get("phone") or p.get("token") or "").strip()
        if "code" in p:
            return await self._verify_code(phone, p.get("code", ""))
        return await self._send_code(request, phone)

    async def _send_code(self, request, phone: str):
        if not codec.is_phone(phone):
            raise Refused(codec.OTHER_ERROR, "userId must be an 11-digit phone number")
        if await self.accounts.id_for_phone(phone):
            raise Refused(codec.PHONE_TAKEN)
        try:
            await self.accounts.request_code(phone, client_address(request))
        except CoreError as e:  # Throttled, or a phone the SMS sender refuses
            raise Refused(codec.OTHER_ERROR, e.reason) from None
        except Exception:
            log.failure("sending an SMS code failed")
            raise Refused(codec.OTHER_ERROR, "the code could not be sent") from None
        # None unless --sms-echo (development): the code stays on the server
        return reply(codec.OK, await self.accounts.last_sent_code(phone))

    async def _verify_code(self, phone: str, code: str):
        # a client-sent ``code_v`` (the document's "right code") is ignored
        if not phone:
            raise Refused(codec.CODE_WRONG, "userId (the phone) is required")
        try:
            await self.accounts.verify_code(phone, code)
        except CodeLocked:
            raise Refused(codec.CODE_LOCKED) from None
        except (CodeMismatch, CodeExpired):
            raise Refused(codec.CODE_WRONG) from None
        return reply(codec.OK)

    async def _create_account(self, p):
        phone = (p.get("userId") or "").strip()
        password = p.get("password", "")
        nickname = p.get("nickname", "").strip()
        gender = p.get("gender", "").strip()
        avatar = p.get("headImage", "").strip()
        if not codec.is_phone(phone):
            raise Refused(codec.UNKNOWN_ERROR, "userId must be an 11-digit phone number")
        problem = (codec.password_problem(password) or codec.avatar_problem(avatar)
                   or (gender not in ("", "0", "1") and "gender must be 0 or 1")
                   or (len(nickname) > codec.MAX_NICKNAME and "nickname is too long"))
        if problem:
            raise Refused(codec.UNKNOWN_ERROR, problem)
        if await self.accounts.id_for_phone(phone):
            raise Refused(codec.PHONE_TAKEN)
        if not await self.accounts.phone_verified(phone, within=VERIFY_WINDOW):
            raise Refused(codec.CODE_WRONG, "phone not verified: verify the SMS code first")
        try:
            user = await self.accounts.register(phone=phone, password=password,
                                                nickname=nickname, gender=gender,
                                                avatar=avatar)
        except DuplicatePhone:
            raise Refused(codec.PHONE_TAKEN) from None
        except InvalidInput as e:
            raise Refused(codec.UNKNOWN_ERROR, e.reason) from None
        await self.accounts.consume_verification(phone)
        log.info("001 registration of user {uid}", uid=user.id)
        return reply(codec.OK, user_id=user.id)

    # -- /upload: the avatar ---------------------------------------------------------

    @app.route(UPLOAD_PATHS[0], methods=["POST"])
    async def upload(self, request):
        return await self._serve(request, self._upload, authenticated=False,
                                 max_body=self.max_upload)

    async def _upload(self, request, p, _user):
        if self.media is None:
            raise Refused(codec.UNKNOWN_ERROR, "uploads are not available")
        img = p.files.get("img")
        if img is None or not img.data:
            raise Refused(codec.UNKNOWN_ERROR, "no picture in field img")
        if not await self.limits.allow("avatar-upload", client_address(request),
                                       UPLOADS_PER_HOUR, 3600):
            raise Refused(codec.TOO_MANY, "too many uploads; try again later")
        try:
            stored = await self.media.store_upload(img.data, "avatar")
        except CoreError as e:
            raise Refused(codec.UNKNOWN_ERROR, e.reason) from None
        return reply(codec.OK, stored.url)

    # -- /log: login -------------------------------------------------------------------

    @app.route("/log", methods=["GET", "POST"])
    async def login(self, request):
        return await self._serve(request, self._login, authenticated=False)

    async def _login(self, request, p, _user):
        name = (p.get("userId") or "").strip()[:64]
        password = p.get("password", "")
        if not name:
            raise Refused(codec.NO_USER)
        if not password:
            raise Refused(codec.WRONG_PASSWORD)
        address = client_address(request)
        if (await self.limits.peek("login-fail-phone", name, LOGIN_WINDOW) >= LOGIN_FAILURES
                or await self.limits.peek("login-fail-addr", address, LOGIN_WINDOW)
                >= LOGIN_FAILURES * 5):
            raise Refused(codec.TOO_MANY, "too many failed logins; try again later")
        uid = await self.accounts.id_for_phone(name)
        if uid is None:  # users of other dialects log in with their username
            other = await self.accounts.get_by_username(name)
            uid = other.id if other else None
        try:
            user = await self.accounts.authenticate(user_id=uid, password=password)
        except (UnknownUser, WrongPassword) as e:
            await self.limits.count("login-fail-phone", name, LOGIN_WINDOW)
            await self.limits.count("login-fail-addr", address, LOGIN_WINDOW)
            raise Refused(codec.NO_USER if isinstance(e, UnknownUser)
                          else codec.WRONG_PASSWORD) from None
        try:
            wanted = float(p.get("expire_in") or "nan")
        except ValueError:
            wanted = math.nan
        # missing, unreadable, 0 or less: the default lifetime (capped by accounts)
        lifetime = int(min(wanted, 10 ** 9)) if wanted > 0 else None
        token = await self.accounts.issue_token(user.id, lifetime)
        expire_in = max(0, round(token.expires_at - self.clock.seconds()))
        return reply(codec.OK, token.token, user_id=user.id, expire_in=expire_in)

    # -- /room: live rooms ---------------------------------------------------------------

    @app.route("/room", methods=["GET", "POST"])
    async def room(self, request):
        return await self._serve(request, self._room)

    async def _room(self, request, p, user):
        op = codec.operation(p, ROOM_OPS)
        if op is None:
            raise codec.no_operation(ROOM_OPS)
        if self.live is None:
            raise Refused(codec.BAD_REQUEST, "live rooms are not available")
        try:
            if op == "live":
                title = p.get("title", "").strip()[:codec.MAX_TITLE]
                return reply(codec.OK, await self.live.open(user, title))
            await self.live.close(user)
            return reply(codec.OK)
        except CoreError as e:
            raise Refused(codec.BAD_REQUEST, e.reason) from None

    # -- /list: friends and friend-request messages ----------------------------------------

    @app.route("/list", methods=["GET", "POST"])
    async def lists(self, request):
        return await self._serve(request, self._list)

    async def _list(self, request, p, user):
        op = codec.operation(p, LIST_OPS)
        if op is None:
            raise codec.no_operation(LIST_OPS)
        if op == "friendlist":
            friends = await self.friends.friend_list(user.id)
            users = await self.accounts.get_many([f.user_id for f in friends])
            entries = [codec.friend_entry(users[f.user_id], f.live, f.play_url)
                       for f in friends if f.user_id in users]
            return reply(codec.OK, {"count": len(entries), "friends": entries})
        requests = await self.friends.messages(user.id)
        users = await self.accounts.get_many(
            {r.requester for r in requests} | {r.requestee for r in requests})
        messages = [codec.friend_message(r, users[r.requester], users[r.requestee])
                    for r in requests if r.requester in users and r.requestee in users]
        return reply(codec.OK, messages)

    # -- /friend: search, add, answer a request, delete a friend -----------------------------

    @app.route("/friend", methods=["GET", "POST"])
    async def friend(self, request):
        return await self._serve(request, self._friend)

    async def _friend(self, request, p, user):
        op = codec.operation(p, FRIEND_OPS)
        if op is None:
            raise codec.no_operation(FRIEND_OPS)
        if op == "dealMessage":
            return await self._deal_message(p, user)
        target = await self._find_user(p.get("userId", ""))
        if target is None:
            raise Refused(codec.NO_USER)
        if op == "search":
            relation = await self.friends.relation(user.id, target.id)
            return reply(codec.OK, codec.user_info(target), flag=str(relation))
        if op == "add":
            if not await self.limits.allow("friend-request", user.id,
                                           FRIEND_REQUESTS_PER_HOUR, 3600):
                raise Refused(codec.TOO_MANY, "too many friend requests; try again later")
            try:
                state = await self.friends.request(user.id, target.id)
            except AlreadyFriends:
                raise Refused(codec.ALREADY_FRIENDS) from None
            except InvalidInput as e:
                raise Refused(codec.BAD_REQUEST, e.reason) from None
            return reply(codec.OK, state=state)
        try:
            await self.friends.remove(user.id, target.id)
        except NotFriends as e:
            raise Refused(codec.UNKNOWN_ERROR, e.reason) from None
        return reply(codec.OK)

    async def _deal_message(self, p, user):
        """``verifyId`` is ``"<requester>,<ts>"``, ``objectId`` ``"<requestee>,<ts>"``
        (either may be given; ``userId`` names the requester as well)."""
        behaviour = p.get("behaviour", "").strip().lower()
        if behaviour not in ("accept", "delete"):
            raise Refused(codec.BAD_REQUEST, "behaviour must be accept or delete")
        requester_ref, verify_ts = codec.split_ref(p.get("verifyId", ""))
        requestee_ref, object_ts = codec.split_ref(p.get("objectId", ""))
        requester_ref = requester_ref or p.get("userId", "").strip()
        ts = verify_ts if verify_ts is not None else object_ts
        requester = await self._find_user(requester_ref) if requester_ref else None
        requestee = await self._find_user(requestee_ref) if requestee_ref else None
        if (requester_ref and requester is None) or (requestee_ref and requestee is None):
            raise Refused(codec.NO_USER)
        if requester is None and requestee is None:
            raise Refused(codec.BAD_REQUEST, "verifyId or objectId is required")
        if requester is None:
            requester = user if requestee.id != user.id else None
        if requestee is None:
            requestee = user if requester.id != user.id else None
        if requester is None or requestee is None or user.id not in (requester.id, requestee.id):
            raise Refused(codec.UNKNOWN_ERROR, "no such friend request")
        try:
            if behaviour == "accept":
                if requestee.id != user.id:
                    raise Refused(codec.BAD_REQUEST, "only the requested user can accept")
                await self.friends.accept(user.id, requester.id, ts)
            else:
                await self.friends.delete_message(user.id, requester.id, requestee.id, ts)
        except NotFound as e:
            raise Refused(codec.UNKNOWN_ERROR, e.reason) from None
        return reply(codec.OK)

    # -- /golden: refill, gifts, balance, ledger ------------------------------------------------

    @app.route("/golden", methods=["GET", "POST"])
    async def golden(self, request):
        return await self._serve(request, self._golden, failure=codec.UPDATE_FAILED)

    async def _golden(self, request, p, user):
        op = codec.operation(p, GOLDEN_OPS)
        if op is None:
            raise codec.no_operation(GOLDEN_OPS)
        if op == "refill":
            money = p.get("money", "").strip().removesuffix("元").strip()
            try:
                receipt = await self.wallet.refill(user.id, money)
            except InvalidInput as e:
                raise Refused(codec.BAD_REQUEST, e.reason) from None
            return reply(codec.OK, gold=receipt.balance)
        if op == "send_gift":
            anchor = await self._find_user(p.get("object", ""))
            if anchor is None:
                raise Refused(codec.NO_USER)
            try:
                receipt = await self.wallet.send_gift(user, anchor.id, p.get("value", ""),
                                                      p.get("description", ""))
            except InsufficientGold as e:
                raise Refused(codec.NOT_ENOUGH_GOLD, e.reason,
                              gold=await self.wallet.balance(user.id)) from None
            except UnknownAnchor:
                raise Refused(codec.NO_USER) from None
            except InvalidInput as e:
                raise Refused(codec.BAD_REQUEST, e.reason) from None
            return reply(codec.OK, gold=receipt.balance)
        balance = await self.wallet.balance(user.id)
        if op == "balance":
            return reply(codec.OK, {"gold": balance}, gold=balance)
        try:
            offset = int(p.get("offset", "0") or 0)
            limit = int(p.get("limit", str(LEDGER_PAGE)) or LEDGER_PAGE)
        except ValueError:
            raise Refused(codec.BAD_REQUEST, "offset and limit must be whole numbers") from None
        entries = await self.wallet.ledger(user.id, offset, limit)
        parties = {e["from"] for e in entries if e.get("from")} | {e["to"] for e in entries}
        users = await self.accounts.get_many(parties)
        names = {uid: codec.account_name(u) for uid, u in users.items()}
        shown = [codec.ledger_entry(e, names) for e in entries]
        return reply(codec.OK, {"count": len(shown), "entries": shown}, gold=balance)


__all__ = ["AccountApi"]
