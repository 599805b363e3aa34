"""
Document 003's room endpoints: ``/chatroom/list``, ``/chatroom/create``,
``/chatroom/room``. GET with query parameters and POST with any body work
alike (the original clients used GET); replies are ``{"res": …}``.

- ``/chatroom/list``: every room with its live population, under both
  ``room_list`` (the document's table) and ``rooms`` (its example), each
  entry with ``name`` and ``room_name``.
- ``/chatroom/create`` (``room_name``): ``chatroom create successfully`` or
  ``chatroom already exist``; the room holds ``capacity`` members.
- ``/chatroom/room`` (``room_name``, ``status`` 1/0): enter (a reservation
  in the rooms core, capacity checked atomically: ``join chatroom`` or
  ``full room``) or exit (``leave chatroom``; ``user not exist`` when the
  user had not entered). ``invalid room``, ``invalid status``.

``create`` and ``room`` need a token (``token``/``access_token``/Bearer,
from any login) and act as its user; ``user_name`` is then optional. With
``--legacy-auth`` a request without a token names its user by
``user_name`` as the document shows. A missing parameter gives
``missing parameters``; a bad token ``invalid token``.
"""

from __future__ import annotations

from klein import Klein

from imserver import metrics
from imserver.core.errors import InvalidInput
from imserver.core.rooms import NotReserved, RoomFull, RoomNotFound, check_name
from imserver.web.http import json_body, read_params, token_from

MISSING = "missing parameters"
INVALID_TOKEN = "invalid token"


class ChatroomApi:
    app = Klein()

    def __init__(self, accounts, rooms, max_body: int, *, legacy_auth: bool = False,
                 capacity: int = 10):
        self.accounts = accounts
        self.rooms = rooms
        self.max_body = max_body
        self.legacy_auth = legacy_auth
        self.capacity = capacity

    def _reply(self, request, obj):
        metrics.HTTP_REQUESTS.labels("chatroom").inc()
        return json_body(request, obj)

    async def _user(self, request, params):
        """The caller: the token's user; with --legacy-auth the named one. None if neither."""
        token = token_from(request, params)
        if token:
            return await self.accounts.user_for_token(token)
        if self.legacy_auth:
            name = params.get("user_name", "").strip()
            if name:
                return await self.accounts.get_by_username(name)
        return None

    @app.route("/chatroom/list", methods=["GET", "POST"])
    async def list_rooms(self, request):
        rooms = [{"name": r.name, "room_name": r.name, "population": r.population}
                 for r in await self.rooms.list()]
        return self._reply(request, {"room_list": rooms, "rooms": rooms})

    @app.route("/chatroom/create", methods=["GET", "POST"])
    async def create(self, request):
        try:
            params = await read_params(request, self.max_body)
        except InvalidInput as e:
            return self._reply(request, {"res": e.reason})
        name = params.get("room_name", "")
        if not name.strip():
            return self._reply(request, {"res": MISSING})
        user = await self._user(request, params)
        if user is None:
            return self._reply(request, {"res": INVALID_TOKEN})
        try:
            check_name(name)
        except InvalidInput:
            return self._reply(request, {"res": "invalid room name"})
        _, created = await self.rooms.create(name, creator_id=user.id, capacity=self.capacity)
        return self._reply(request, {"res": "chatroom create successfully" if created
                                     else "chatroom already exist"})

    @app.route("/chatroom/room", methods=["GET", "POST"])
    async def enter_or_leave(self, request):
        try:
            params = await read_params(request, self.max_body)
        except InvalidInput as e:
            return self._reply(request, {"res": e.reason})
        name, status = params.get("room_name", ""), params.get("status", "").strip()
        has_token = bool(token_from(request, params))
        if not name.strip() or not status or (not has_token
                                               and not params.get("user_name", "").strip()):
            return self._reply(request, {"res": MISSING})
        user = await self._user(request, params)
        if user is None:
            if has_token or not self.legacy_auth:
                return self._reply(request, {"res": INVALID_TOKEN})
            return self._reply(request, {"res": "user not exist"})
        if status not in ("0", "1"):
            return self._reply(request, {"res": "invalid status"})
        try:
            if status == "1":
                await self.rooms.reserve(name, user.id)
                res = "join chatroom"
            else:
                await self.rooms.release(name, user.id)
                res = "leave chatroom"
        except (RoomNotFound, InvalidInput):
            res = "invalid room"
        except RoomFull:
            res = "full room"
        except NotReserved:
            res = "user not exist"
        return self._reply(request, {"res": res})
