"""
Document 004's group API: ``creategrp addmembers delmembers editgrp
querymygrps grpinfo``, at the root and under ``/wsim/``, GET or POST.

Every reply is the document's envelope ``{"code", "message"[, "data"]}``.
Success is ``code`` 1 (the document) or 0 with ``--signal-group-ok-code 0``
(the original server, which its Android client expects); refusals use
negative codes (:mod:`.envelope`), which neither kind of client mistakes
for success: -1 a missing or invalid parameter, -2 no valid token, -3 not
allowed (not a member, not the creator, group full, ``creator`` or
``userid`` naming someone other than the token's user), -4 no such group,
-5 too many requests, -6 service unavailable.

The acting user is always the token's; the document's ``creator`` and
``userid`` parameters are accepted when they name that user. Who may do what
is :mod:`imserver.core.groups`' business.
"""

from __future__ import annotations

from klein import Klein

from imserver import metrics
from imserver.core.errors import CoreError, Forbidden, InvalidInput, RateLimited
from imserver.core.groups import parse_ids
from imserver.dialects.signal.envelope import NoToken, refusal_code
from imserver.store.redis import StoreError, StoreTimeout
from imserver.web.http import BodyTooLarge, json_body, read_params, token_from

CREATES_PER_HOUR = 30


def both(app: Klein, path: str):
    """Route ``path`` and ``/wsim`` + ``path``, GET and POST."""
    def decorate(f):
        return app.route(path, methods=["GET", "POST"])(
            app.route("/wsim" + path, methods=["GET", "POST"])(f))
    return decorate


class GroupApi:
    app = Klein()

    def __init__(self, *, accounts, groups, limits, ok_code: int = 1, max_body: int = 1 << 20):
        self.accounts = accounts
        self.groups = groups
        self.limits = limits
        self.ok_code = ok_code
        self.max_body = max_body

    # -- the envelope ------------------------------------------------------------------

    def _ok(self, request, data=None):
        body = {"code": self.ok_code, "message": "OK"}
        if data is not None:
            body["data"] = data
        return json_body(request, body)

    @staticmethod
    def _refused(request, exc: Exception):
        reason = getattr(exc, "reason", None) or "service unavailable; try again"
        status = 413 if isinstance(exc, BodyTooLarge) else 200
        return json_body(request, {"code": refusal_code(exc), "message": reason}, status)

    @app.handle_errors(CoreError)
    def _domain_error(self, request, failure):
        return self._refused(request, failure.value)

    @app.handle_errors(StoreTimeout, StoreError)
    def _store_error(self, request, failure):
        return self._refused(request, failure.value)

    async def _caller(self, request):
        """(params, the token's user id as a string)."""
        metrics.HTTP_REQUESTS.labels("signal").inc()
        params = await read_params(request, self.max_body)
        token = token_from(request, params)
        user = await self.accounts.user_for_token(token) if token else None
        if user is None:
            raise NoToken()
        return params, str(user.id)

    @staticmethod
    def _group_id(params) -> str:
        gid = params.get("groupid", "").strip()
        if not gid:
            raise InvalidInput("missing parameter: groupid")
        if not gid.isascii() or not gid.isdigit() or len(gid) > 18:
            raise InvalidInput("groupid must be a number")
        return str(int(gid))

    @staticmethod
    def _members(params, required: bool) -> list[str]:
        ids = parse_ids(params.get("members", ""))
        if required and not ids:
            raise InvalidInput("missing parameter: members")
        return ids

    @staticmethod
    def _same_user(params, name: str, uid: str) -> None:
        claimed = params.get(name, "").strip()
        if claimed and claimed.lstrip("0") != uid:
            raise Forbidden(f"{name} must be the logged-in user")

    async def _member_views(self, groups) -> dict[str, dict]:
        ids = {int(u) for g in groups for u in g.members}
        users = await self.accounts.get_many(sorted(ids))
        views = {}
        for uid in ids:
            user = users.get(uid)
            views[str(uid)] = {"nickname": user.display_name if user else "",
                               "snap": user.avatar if user else "", "userid": str(uid)}
        return views

    @staticmethod
    def _group_view(group, views) -> dict:
        return {"groupid": group.id, "creator": group.creator, "name": group.name,
                "notice": group.notice, "snap": group.snap,
                "members": [views[u] for u in group.members if u in views]}

    # -- routes --------------------------------------------------------------------------

    @both(app, "/creategrp")
    async def creategrp(self, request):
        params, uid = await self._caller(request)
        self._same_user(params, "creator", uid)
        if not await self.limits.allow("signal-creategrp", uid, CREATES_PER_HOUR, 3600):
            raise RateLimited("too many groups created; try again later")
        group = await self.groups.create(uid, name=params.get("name", ""),
                                         members=self._members(params, required=False),
                                         notice=params.get("notice", ""))
        return self._ok(request, {"groupid": group.id, "creator": group.creator,
                                  "name": group.name, "notice": group.notice,
                                  "snap": group.snap, "members": group.members})

    @both(app, "/addmembers")
    async def addmembers(self, request):
        params, uid = await self._caller(request)
        await self.groups.add_members(uid, self._group_id(params),
                                      self._members(params, required=True))
        return self._ok(request)

    @both(app, "/delmembers")
    async def delmembers(self, request):
        params, uid = await self._caller(request)
        await self.groups.remove_members(uid, self._group_id(params),
                                         self._members(params, required=True))
        return self._ok(request)

    @both(app, "/editgrp")
    async def editgrp(self, request):
        params, uid = await self._caller(request)
        gid = self._group_id(params)
        name = params["name"] if "name" in params else None
        notice = params["notice"] if "notice" in params else None
        await self.groups.edit(uid, gid, name=name, notice=notice)
        return self._ok(request)

    @both(app, "/querymygrps")
    async def querymygrps(self, request):
        params, uid = await self._caller(request)
        self._same_user(params, "userid", uid)
        groups = await self.groups.groups_of(uid)
        views = await self._member_views(groups)
        return self._ok(request, [self._group_view(g, views) for g in groups])

    @both(app, "/grpinfo")
    async def grpinfo(self, request):
        params, uid = await self._caller(request)
        group = await self.groups.info(uid, self._group_id(params))
        views = await self._member_views([group])
        return self._ok(request, self._group_view(group, views))
