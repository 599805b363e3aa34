"""Document 001 end to end: the real service on a real port, a real HTTP client."""

from __future__ import annotations

import io
import json

import pytest
import pytest_twisted
import treq
from PIL import Image
from twisted.internet import defer, reactor

PASSWORD = "secret123"


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def is_envelope(body: dict) -> bool:
    result = body.get("result")
    return (isinstance(result, str) and len(result) == 4 and result.isdigit()
            and "message" in body)


class Client:
    """Posts to one server; keeps every raw reply so tests can check what leaked."""

    def __init__(self, url: str):
        self.url = url
        self.raw: list[str] = []

    async def _read(self, response) -> dict:
        text = await response.text("utf-8")
        self.raw.append(text)
        assert response.headers.getRawHeaders(b"content-type")[0].startswith(
            b"application/json")
        body = json.loads(text)
        assert is_envelope(body), body
        return body

    async def post(self, path: str, **data) -> dict:
        return await self._read(await treq.post(self.url + path, data=data))

    async def post_json(self, path: str, **data) -> dict:
        return await self._read(await treq.post(self.url + path, json=data))

    async def post_multipart(self, path: str, files=None, **data) -> dict:
        return await self._read(await treq.post(self.url + path, data=data, files=files or {}))

    async def get(self, path: str, **params) -> dict:
        return await self._read(await treq.get(self.url + path, params=params))


async def make_user(srv, phone: str, nickname: str = "", password: str = PASSWORD):
    """A registered, logged-in user: (user id, token)."""
    user = await srv.core.accounts.register(phone=phone, password=password, nickname=nickname)
    body = await Client(srv.url).post("/log", userId=phone, password=password)
    assert body["result"] == "0000"
    return user.id, body["message"]


async def befriend(c: Client, a_token: str, b_token: str, b_phone: str) -> None:
    assert (await c.post("/friend", token=a_token, userId=b_phone, add="1"))["result"] == "0000"
    (msg,) = (await c.post("/list", token=b_token, messagelist="1"))["message"]
    assert (await c.post("/friend", token=b_token, dealMessage="1", behaviour="accept",
                         verifyId=msg["verifyId"], objectId=msg["objectId"]))["result"] == "0000"


class CapturingSender:
    """Stands in for the SMS gateway: remembers what would have been texted."""

    def __init__(self):
        self.sent: dict[str, str] = {}

    async def send(self, phone, code):
        self.sent[phone] = code


class AccountWalkTests:
    @pytest_twisted.ensureDeferred
    async def test_document_walkthrough(self, start_server):
        """Code, verify, avatar, register, login, live, friends, refill, gift: the document's codes and shapes."""
        srv = await start_server(sms_echo=True)
        c = Client(srv.url)
        a_phone, b_phone = "13800000001", "13800000002"

        # the code request, as the original client sent it (GET with userId)
        sent = await c.get("/register", userId=a_phone)
        assert sent["result"] == "0000"
        code = await srv.core.accounts.last_sent_code(a_phone)
        assert sent["message"] == code and len(code) == 4 and code.isdigit()
        # verification: the server's code counts, the client's code_v does not
        wrong = "0000" if code != "0000" else "1111"
        assert (await c.post("/register", userId=a_phone, code=wrong, code_v=wrong))[
            "result"] == "0004"
        assert (await c.post("/register", userId=a_phone, code=code, code_v="9999")) == {
            "result": "0000", "message": None}
        # step 1: the avatar
        up = await c.post_multipart("/upload", files={"img": ("me.png", "image/png",
                                                              io.BytesIO(png_bytes()))})
        assert up["result"] == "0000" and "/media/" in up["message"]
        picture = await treq.get(up["message"] if up["message"].startswith("http")
                                 else srv.url + up["message"])
        assert picture.code == 200 and (await picture.content()) == png_bytes()
        # step 2: the account
        reg = await c.post("/register", register="1", userId=a_phone, password=PASSWORD,
                           headImage=up["message"], gender="1", nickname="Anna")
        assert reg["result"] == "0000" and reg["message"] is None
        # login
        login = await c.post("/log", userId=a_phone, password=PASSWORD, expire_in="604800")
        assert login["result"] == "0000" and isinstance(login["message"], str)
        assert isinstance(login["user_id"], int) and login["expire_in"] == 604800
        a_token = login["message"]

        # a second user through the same steps
        await c.post("/register", userId=b_phone)
        b_code = await srv.core.accounts.last_sent_code(b_phone)
        assert (await c.post("/register", userId=b_phone, code=b_code))["result"] == "0000"
        assert (await c.post("/register", register="1", userId=b_phone, password=PASSWORD,
                             nickname="Bo"))["result"] == "0000"
        b_login = await c.post("/log", userId=b_phone, password=PASSWORD, expire_in="3600")
        b_token, b_id = b_login["message"], b_login["user_id"]

        # live room: the stream description is a JSON object in message
        live = await c.post("/room", token=b_token, title="Bo sings", live="1")
        assert live["result"] == "0000"
        stream = live["message"]
        assert isinstance(stream, dict)
        assert {"id", "hub", "title", "publishKey", "hosts"} <= set(stream)
        assert {"publish", "play"} <= set(stream["hosts"])

        # friends: search, add, the request list, accept
        found = await c.post("/friend", token=a_token, userId=b_phone, search="1")
        assert found["result"] == "0000" and found["flag"] == "0"
        assert found["message"]["userId"] == b_phone and found["message"]["nickname"] == "Bo"
        self_search = await c.post("/friend", token=a_token, userId=a_phone, search="1")
        assert self_search["flag"] == "-1"
        missing = await c.post("/friend", token=a_token, userId="13899999999", search="1")
        assert missing == {"result": "0007", "message": None}
        assert (await c.post("/friend", token=a_token, userId=b_phone, add="1"))[
            "result"] == "0000"
        (b_msg,) = (await c.post("/list", token=b_token, messagelist="1"))["message"]
        (a_msg,) = (await c.post("/list", token=a_token, messagelist="1"))["message"]
        assert b_msg["flag"] == 0 and b_msg["userId"] == a_phone
        assert a_msg["flag"] == 2 and a_msg["userId"] == b_phone
        assert b_msg["verifyId"] == a_msg["verifyId"] and b_msg["verifyId"].startswith(a_phone + ",")
        accepted = await c.post("/friend", token=b_token, userId=a_phone, dealMessage="1",
                                verifyId=b_msg["verifyId"], objectId=b_msg["objectId"],
                                behaviour="accept")
        assert accepted["result"] == "0000"
        assert (await c.post("/list", token=b_token, messagelist="1"))["message"][0]["flag"] == 1
        assert (await c.post("/list", token=a_token, messagelist="1"))["message"][0]["flag"] == 3
        assert (await c.post("/friend", token=a_token, userId=b_phone, search="1"))["flag"] == "1"
        assert (await c.post("/friend", token=a_token, userId=b_phone, add="1")) == {
            "result": "0010", "message": None}

        # the friend list, with the live friend's play URL
        listed = (await c.post("/list", token=a_token, friendlist="1"))
        assert listed["result"] == "0000"
        assert listed["message"]["count"] == 1
        (entry,) = listed["message"]["friends"]
        assert entry["userId"] == b_phone and entry["nickname"] == "Bo"
        assert entry["liveStatus"] == 1 and entry["playUrl"]
        assert {"headImage", "gender"} <= set(entry)
        assert (await c.post("/room", token=b_token, leave="1")) == {"result": "0000",
                                                                    "message": None}
        (entry,) = (await c.post("/list", token=a_token, friendlist="1"))["message"]["friends"]
        assert entry["liveStatus"] == 0 and entry["playUrl"] == ""

        # gold: refill at the configured rate, a gift to the anchor
        refill = await c.post("/golden", token=a_token, money="100", refill="1")
        assert refill["result"] == "0000" and refill["message"] is None
        assert refill["gold"] == 100 * srv.config.gold_per_unit
        gift = await c.post("/golden", token=a_token, value="30", object=str(b_id),
                            description="rose", send_gift="1")
        assert gift["result"] == "0000" and gift["gold"] == refill["gold"] - 30
        too_much = await c.post("/golden", token=a_token, value=str(10 ** 6), object=b_phone,
                                description="yacht", send_gift="1")
        assert too_much["result"] == "0014" and too_much["gold"] == gift["gold"]
        b_balance = await c.post("/golden", token=b_token, balance="1")
        assert b_balance == {"result": "0000", "message": {"gold": 30}, "gold": 30}
        ledger = (await c.post("/golden", token=b_token, ledger="1"))["message"]
        assert ledger["count"] == 1
        (e,) = ledger["entries"]
        assert e["fromUserId"] == a_phone and e["toUserId"] == b_phone
        assert e["amount"] == 30 and e["description"] == "rose" and e["balance"] == 30

        # delete the friend: both sides are strangers again
        assert (await c.post("/friend", token=a_token, userId=b_phone, delete="1"))[
            "result"] == "0000"
        assert (await c.post("/friend", token=b_token, userId=a_phone, search="1"))["flag"] == "0"
        assert (await c.post("/list", token=b_token, friendlist="1"))["message"] == {
            "count": 0, "friends": []}
        assert (await c.post("/friend", token=a_token, userId=b_phone, delete="1"))[
            "result"] == "0006"

        for text in c.raw:
            assert PASSWORD not in text and "$argon2" not in text


class RegistrationTests:
    @pytest_twisted.ensureDeferred
    async def test_registered_phone(self, start_server):
        """A registered phone gets 0001 on the code request and on step 2."""
        srv = await start_server()
        c = Client(srv.url)
        await make_user(srv, "13800000011")
        assert await c.post("/register", userId="13800000011") == {"result": "0001",
                                                                    "message": None}
        assert (await c.post("/register", token="13800000011"))["result"] == "0001"
        assert (await c.post("/register", register="1", userId="13800000011",
                             password=PASSWORD))["result"] == "0001"

    @pytest_twisted.ensureDeferred
    async def test_step2_needs_verified_phone(self, start_server):
        """Step 2 refuses a phone that was not verified, and a verification is used once."""
        srv = await start_server(sms_echo=True)
        c = Client(srv.url)
        phone = "13800000012"
        assert (await c.post("/register", register="1", userId=phone, password=PASSWORD))[
            "result"] == "0004"
        await c.post("/register", userId=phone)
        code = await srv.core.accounts.last_sent_code(phone)
        # the client's code_v is not trusted: code_v == code but both wrong
        assert (await c.post("/register", userId=phone, code="x", code_v="x"))["result"] == "0004"
        assert (await c.post("/register", userId=phone, code=code))["result"] == "0000"
        assert (await c.post("/register", register="1", userId=phone, password=PASSWORD))[
            "result"] == "0000"
        assert await srv.core.accounts.phone_verified(phone) is False

    @pytest_twisted.ensureDeferred
    async def test_step2_checks_input(self, start_server):
        """11-digit phone, 8+ characters with letters and digits, gender 0/1: otherwise 0006."""
        srv = await start_server(sms_echo=True)
        c = Client(srv.url)
        phone = "13800000013"
        await c.post("/register", userId=phone)
        await c.post("/register", userId=phone,
                     code=await srv.core.accounts.last_sent_code(phone))
        for bad in ({"password": "short1"}, {"password": "lettersonly"},
                    {"password": "1234567890"}, {"gender": "x"},
                    {"headImage": "javascript:alert(1)"}, {"userId": "1380000001"}):
            form = {"register": "1", "userId": phone, "password": PASSWORD, **bad}
            body = await c.post("/register", **form)
            assert body["result"] == "0006" and body["message"], bad
        assert await srv.core.accounts.get_by_phone(phone) is None

    @pytest_twisted.ensureDeferred
    async def test_code_request_checks(self, start_server):
        """A bad phone or a resend within the throttle gets 0002."""
        srv = await start_server()
        c = Client(srv.url)
        assert (await c.post("/register", userId="12345"))["result"] == "0002"
        assert (await c.post("/register", userId="13800000014"))["result"] == "0000"
        again = await c.post("/register", userId="13800000014")
        assert again["result"] == "0002" and again["message"]

    @pytest_twisted.ensureDeferred
    async def test_wrong_code_five_times_locks(self, start_server):
        """Four wrong codes get 0004, the fifth 0005, and then even the right code is refused."""
        srv = await start_server()
        srv.core.accounts.sms = sender = CapturingSender()
        c = Client(srv.url)
        phone = "13800000015"
        assert (await c.post("/register", userId=phone))["result"] == "0000"
        right = sender.sent[phone]
        wrong = "0000" if right != "0000" else "1111"
        results = [(await c.post("/register", userId=phone, code=wrong))["result"]
                   for _ in range(5)]
        assert results == ["0004"] * 4 + ["0005"]
        assert (await c.post("/register", userId=phone, code=right))["result"] == "0005"
        assert (await c.post("/register", register="1", userId=phone, password=PASSWORD))[
            "result"] == "0004"

    @pytest_twisted.ensureDeferred
    async def test_no_secrets_in_replies(self, start_server):
        """Without sms_echo no reply holds the code, and none holds a password or hash."""
        srv = await start_server()
        srv.core.accounts.sms = sender = CapturingSender()
        c = Client(srv.url)
        phone = "13800000016"
        sent = await c.post("/register", userId=phone)
        assert sent == {"result": "0000", "message": None}
        code = sender.sent[phone]
        await c.post("/register", userId=phone, code=code, code_v=code)
        await c.post("/register", register="1", userId=phone, password=PASSWORD)
        login = await c.post("/log", userId=phone, password=PASSWORD)
        token = login["message"]
        await c.post("/log", userId=phone, password="wrongpass1")
        await c.post("/friend", token=token, userId=phone, search="1")
        await c.post("/list", token=token, friendlist="1")
        await c.post("/golden", token=token, ledger="1")
        for text in c.raw:
            assert code not in text.replace(token, "")
            assert PASSWORD not in text and "$argon2" not in text and "argon2" not in text


class LoginTests:
    @pytest_twisted.ensureDeferred
    async def test_login_codes_and_expiry(self, start_server):
        """0007 unknown user, 0008 wrong password; expire_in is honoured up to the maximum."""
        srv = await start_server(token_max_age=7200)
        c = Client(srv.url)
        uid, _ = await make_user(srv, "13800000021")
        assert await c.post("/log", userId="13800000029", password=PASSWORD) == {
            "result": "0007", "message": None}
        assert await c.post("/log", userId="13800000021", password="wrongpass1") == {
            "result": "0008", "message": None}
        short = await c.post("/log", userId="13800000021", password=PASSWORD, expire_in="60")
        assert short["result"] == "0000" and short["user_id"] == uid and short["expire_in"] == 60
        long = await c.post("/log", userId="13800000021", password=PASSWORD,
                            expire_in=str(30 * 86400))
        assert long["expire_in"] == 7200
        assert (await c.post("/list", token=short["message"], friendlist="1"))["result"] == "0000"

    @pytest_twisted.ensureDeferred
    async def test_repeated_failures_slow_down(self, start_server):
        """After ten failures for a phone, even the right password gets 0016 for a while."""
        srv = await start_server()
        c = Client(srv.url)
        await make_user(srv, "13800000022")
        for _ in range(10):
            assert (await c.post("/log", userId="13800000022", password="wrongpass1"))[
                "result"] == "0008"
        locked = await c.post("/log", userId="13800000022", password=PASSWORD)
        assert locked["result"] == "0016" and "message" in locked

    @pytest_twisted.ensureDeferred
    async def test_every_body_form(self, start_server):
        """GET query, form, multipart and JSON bodies all log in."""
        srv = await start_server()
        c = Client(srv.url)
        await make_user(srv, "13800000023")
        creds = {"userId": "13800000023", "password": PASSWORD}
        for send in (c.get, c.post, c.post_json):
            assert (await send("/log", **creds))["result"] == "0000"
        assert (await c.post_multipart("/log", files={"x": ("x.txt", "text/plain",
                                                            io.BytesIO(b"x"))},
                                       **creds))["result"] == "0000"

    @pytest_twisted.ensureDeferred
    async def test_token_required(self, start_server):
        """Without a valid token /room /list /friend /golden answer 0015 and change nothing."""
        srv = await start_server()
        c = Client(srv.url)
        uid, token = await make_user(srv, "13800000024")
        for path, flag in (("/room", "live"), ("/list", "friendlist"), ("/friend", "search"),
                           ("/golden", "refill")):
            assert (await c.post(path, **{flag: "1", "money": "10"}))["result"] == "0015"
            assert (await c.post(path, **{flag: "1", "token": "nope", "money": "10"}))[
                "result"] == "0015"
        assert await srv.core.wallet.balance(uid) == 0
        assert not await srv.core.live.is_live(uid)
        r = await treq.post(srv.url + "/golden", data={"balance": "1"},
                            headers={"Authorization": f"Bearer {token}"})
        assert json.loads(await r.text())["result"] == "0000"

    @pytest_twisted.ensureDeferred
    async def test_no_operation_and_bad_body(self, start_server):
        """No flag gets 0009 naming the flags; a malformed JSON body gets 0009 too."""
        srv = await start_server()
        c = Client(srv.url)
        _, token = await make_user(srv, "13800000025")
        body = await c.post("/golden", token=token)
        assert body["result"] == "0009" and "refill=1" in body["message"]
        assert (await c.post("/room", token=token))["result"] == "0009"
        r = await treq.post(srv.url + "/log", data=b"{not json",
                            headers={"Content-Type": "application/json"})
        assert json.loads(await r.text())["result"] == "0009"


class FriendTests:
    @pytest_twisted.ensureDeferred
    async def test_live_friend_comes_first(self, start_server):
        """A friend who goes live is first in the very next friend list."""
        srv = await start_server()
        c = Client(srv.url)
        _, me = await make_user(srv, "13800000031")
        phones = ["13800000032", "13800000033", "13800000034"]
        tokens = {}
        for p in phones:
            _, tokens[p] = await make_user(srv, p)
            await befriend(c, me, tokens[p], p)
        before = (await c.post("/list", token=me, friendlist="1"))["message"]
        assert before["count"] == 3 and before["friends"][0]["userId"] != phones[0]
        assert (await c.post("/room", token=tokens[phones[0]], live="1"))["result"] == "0000"
        after = (await c.post("/list", token=me, friendlist="1"))["message"]["friends"]
        assert after[0]["userId"] == phones[0] and after[0]["liveStatus"] == 1
        assert all(f["liveStatus"] == 0 for f in after[1:])

    @pytest_twisted.ensureDeferred
    async def test_decline_and_withdraw(self, start_server):
        """The requestee deletes (declines) by verifyId; the requester withdraws by objectId."""
        srv = await start_server()
        c = Client(srv.url)
        _, a = await make_user(srv, "13800000035")
        _, b = await make_user(srv, "13800000036")
        await c.post("/friend", token=a, userId="13800000036", add="1")
        (msg,) = (await c.post("/list", token=b, messagelist="1"))["message"]
        # the requester cannot accept its own request
        assert (await c.post("/friend", token=a, dealMessage="1", behaviour="accept",
                             verifyId=msg["verifyId"], objectId=msg["objectId"]))[
            "result"] == "0009"
        assert (await c.post("/friend", token=b, dealMessage="1", behaviour="delete",
                             verifyId=msg["verifyId"]))["result"] == "0000"
        assert (await c.post("/list", token=a, messagelist="1"))["message"] == []
        await c.post("/friend", token=a, userId="13800000036", add="1")
        (mine,) = (await c.post("/list", token=a, messagelist="1"))["message"]
        assert (await c.post("/friend", token=a, dealMessage="1", behaviour="delete",
                             objectId=mine["objectId"]))["result"] == "0000"
        assert (await c.post("/list", token=b, messagelist="1"))["message"] == []
        # a stale id refers to nothing
        assert (await c.post("/friend", token=b, dealMessage="1", behaviour="accept",
                             verifyId=msg["verifyId"]))["result"] == "0006"
        assert (await c.post("/friend", token=b, dealMessage="1", behaviour="shrug",
                             verifyId=msg["verifyId"]))["result"] == "0009"


class GoldTests:
    @pytest_twisted.ensureDeferred
    async def test_refill_amounts(self, start_server):
        """10, 50 and 100 (also written 50元) refill at gold_per_unit; other amounts get 0009."""
        srv = await start_server(gold_per_unit=7)
        c = Client(srv.url)
        _, t = await make_user(srv, "13800000041")
        assert (await c.post("/golden", token=t, money="10", refill="1"))["gold"] == 70
        assert (await c.post("/golden", token=t, money="50元", refill="1"))["gold"] == 420
        for bad in ("20", "0", "-10", "ten", "", "10.5"):
            assert (await c.post("/golden", token=t, money=bad, refill="1"))["result"] == "0009"
        assert (await c.post("/golden", token=t, balance="1"))["gold"] == 420

    @pytest_twisted.ensureDeferred
    async def test_gift_refusals(self, start_server):
        """Unknown anchors get 0007; bad values and gifts to oneself 0009; nothing moves."""
        srv = await start_server()
        c = Client(srv.url)
        uid, t = await make_user(srv, "13800000042")
        await make_user(srv, "13800000043")
        await c.post("/golden", token=t, money="10", refill="1")
        assert (await c.post("/golden", token=t, value="1", object="13899999999",
                             description="", send_gift="1"))["result"] == "0007"
        for value, anchor in (("0", "13800000043"), ("-1", "13800000043"),
                              ("abc", "13800000043"), ("1", "13800000042")):
            assert (await c.post("/golden", token=t, value=value, object=anchor,
                                 description="", send_gift="1"))["result"] == "0009"
        assert await srv.core.wallet.balance(uid) == 100

    @pytest_twisted.ensureDeferred
    async def test_concurrent_gifts(self, start_server):
        """100 concurrent gifts against gold for 50: exactly 50 succeed; the ledger adds up."""
        srv = await start_server()
        c = Client(srv.url)
        sender, t = await make_user(srv, "13800000044")
        anchor, at = await make_user(srv, "13800000045")
        per_unit = srv.config.gold_per_unit
        await c.post("/golden", token=t, money="50", refill="1")   # 50 * per_unit gold
        value = str(per_unit)                                     # 50 gifts' worth

        async def gift():
            return (await c.post("/golden", token=t, value=value, object="13800000045",
                                 description="star", send_gift="1"))

        replies = await defer.gatherResults([defer.ensureDeferred(gift()) for _ in range(100)])
        codes = [r["result"] for r in replies]
        assert codes.count("0000") == 50 and codes.count("0014") == 50
        assert all(r["gold"] >= 0 for r in replies)
        assert await srv.core.wallet.balance(sender) == 0
        assert await srv.core.wallet.balance(anchor) == 50 * per_unit
        for token, final, n in ((t, 0, 51), (at, 50 * per_unit, 50)):
            ledger = (await c.post("/golden", token=token, ledger="1", limit="500"))["message"]
            assert ledger["count"] == n
            running = 0
            for e in reversed(ledger["entries"]):
                running += e["delta"]
                assert e["balance"] == running and running >= 0
            assert running == final

    @pytest_twisted.ensureDeferred
    async def test_anchor_receives_gift_event(self, start_server):
        """The anchor's bus topic user:<id> carries the gift."""
        srv = await start_server()
        c = Client(srv.url)
        sender, t = await make_user(srv, "13800000046", nickname="Fan")
        anchor, _ = await make_user(srv, "13800000047")
        got = defer.Deferred()
        await srv.core.bus.listen(f"user:{anchor}",
                                  lambda e: e.kind == "gift.received" and not got.called
                                  and got.callback(e)).ready
        await c.post("/golden", token=t, money="10", refill="1")
        await c.post("/golden", token=t, value="5", object=str(anchor), description="heart",
                     send_gift="1")
        got.addTimeout(5, reactor)
        event = await got
        assert event.data["from"] == sender and event.data["value"] == 5
        assert event.data["from_nickname"] == "Fan" and event.data["description"] == "heart"


@pytest.mark.parametrize("picture", [b"", b"not a picture at all", b"\x89PNG\r\n\x1a\nbroken"])
@pytest_twisted.ensureDeferred
async def test_upload_refuses_bad_pictures(start_server, picture):
    """An avatar that is not a real picture gets 0006 and a reason."""
    srv = await start_server()
    c = Client(srv.url)
    body = await c.post_multipart("/upload", files={"img": ("a.png", "image/png",
                                                            io.BytesIO(picture))})
    assert body["result"] == "0006" and body["message"]


GARBAGE = ["", "1", "0", "-1", "true", "13800000051", "13800000052", "13899999999", "10",
           "50", "100", "nan", "inf", "-inf", "1e309", "99999999999999999999999", "1.5",
           "accept", "delete", "x" * 5000, "密码\u0000\u202e", "13800000051,abc", ",", "，",
           "13800000052,1", "javascript:alert(1)", "{}", "[]", "%00", "../../etc/passwd"]
NAMES = ["userId", "token", "code", "code_v", "register", "password", "gender", "nickname",
         "headImage", "expire_in", "title", "live", "leave", "friendlist", "messagelist",
         "search", "add", "dealMessage", "delete", "verifyId", "objectId", "behaviour",
         "refill", "money", "send_gift", "value", "object", "description", "balance",
         "ledger", "offset", "limit"]
FLAGS = {"/register": ["register", "code", "userId"], "/upload": ["img"], "/log": ["userId"],
         "/room": ["live", "leave"], "/list": ["friendlist", "messagelist"],
         "/friend": ["search", "add", "dealMessage", "delete"],
         "/golden": ["refill", "send_gift", "balance", "ledger"]}
PATHS = list(FLAGS)


@pytest_twisted.ensureDeferred
async def test_garbage_requests_get_envelopes(start_server):
    """Random parameters in every form get the envelope, never an internal error."""
    import random

    srv = await start_server()
    c = Client(srv.url)
    _, token = await make_user(srv, "13800000051")
    await make_user(srv, "13800000052")
    rng = random.Random(20240601)
    for i in range(200):
        path = rng.choice(PATHS)
        params = {rng.choice(NAMES): rng.choice(GARBAGE) for _ in range(rng.randint(0, 6))}
        if rng.random() < 0.8:
            params[rng.choice(FLAGS[path])] = "1"
        if rng.random() < 0.7:
            params["token"] = token
        form = i % 3
        if form == 0:
            body = await c.post(path, **params)
        elif form == 1:
            weird = rng.choice([None, 7, 1.5, True, [1, "a"], {"k": "v"}])
            body = await c.post_json(path, **{**params, rng.choice(NAMES): weird})
        else:
            body = await c.get(path, **params) if path != "/upload" else await c.post(path)
        assert body["message"] not in ("internal error", "update failed"), (path, params)
    # the server is still fine
    assert (await c.post("/log", userId="13800000051", password=PASSWORD))["result"] == "0000"


HOSTILE = ["", "0", "-1", "nan", "inf", "1e309", "99999999999999999999999", "1.5", "x" * 5000,
           "密码\u0000\u202e", "13800000051,abc", ",", "13800000052,99999999999999999999", "[]"]
FIELDS = {"/register": ["userId", "token", "code", "password", "gender", "nickname",
                        "headImage"],
          "/log": ["userId", "password", "expire_in"], "/room": ["title"],
          "/list": ["token"], "/friend": ["userId", "verifyId", "objectId", "behaviour"],
          "/golden": ["money", "value", "object", "description", "offset", "limit"]}
VALID = {"userId": "13800000052", "password": PASSWORD, "code": "1234", "money": "10",
         "value": "1", "object": "13800000052", "description": "d", "behaviour": "accept",
         "verifyId": "13800000052,1", "objectId": "13800000051,1", "expire_in": "60"}


@pytest_twisted.ensureDeferred
async def test_each_hostile_field_of_each_operation(start_server):
    """One hostile value in one field of an otherwise valid request: an envelope, never an internal error."""
    srv = await start_server()
    c = Client(srv.url)
    _, token = await make_user(srv, "13800000051")
    await make_user(srv, "13800000052")
    for path, names in FIELDS.items():
        for op in FLAGS[path]:
            for name in names:
                for value in HOSTILE:
                    params = {**VALID, op: "1", "token": token, name: value}
                    body = await c.post(path, **params)
                    assert body["message"] not in ("internal error", "update failed"), (
                        path, op, name, value[:20])


@pytest_twisted.ensureDeferred
async def test_random_bodies_and_content_types(start_server):
    """Random bytes under random content types, on every path: the envelope, no account made."""
    from hypothesis import HealthCheck, given, settings, strategies as st
    from twisted.internet.threads import blockingCallFromThread

    from tests.conftest import blocking

    srv = await start_server()
    _, token = await make_user(srv, "13800000061")
    query = st.dictionaries(st.sampled_from(NAMES + ["x", ""]), st.text(max_size=200),
                            max_size=5)
    ctypes = st.sampled_from(["application/json", "application/x-www-form-urlencoded",
                              "multipart/form-data; boundary=xx", "multipart/form-data",
                              "text/plain", ""])

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(PATHS), query, st.binary(max_size=2000), ctypes, st.booleans())
    def check(path, params, body, ctype, authed):
        async def one():
            headers = {"Content-Type": [ctype]} if ctype else {}
            if authed:
                headers["Authorization"] = [f"Bearer {token}"]
            r = await treq.post(srv.url + path, params=params, data=body, headers=headers)
            payload = json.loads(await r.text("utf-8"))
            assert r.code == 200 and is_envelope(payload), (r.code, payload)
            assert payload["message"] not in ("internal error", "update failed")

        blockingCallFromThread(reactor, lambda: defer.ensureDeferred(one()))

    from imserver.store import keys

    users_before = await srv.core.store.execute("GET", keys.user_seq())
    await blocking(check)
    assert await srv.core.store.execute("GET", keys.user_seq()) == users_before
    assert (await treq.get(srv.url + "/health")).code == 200
