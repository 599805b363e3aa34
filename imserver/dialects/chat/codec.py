"""
Document 000's wire format, pure: text in, request out; events and replies
in, text out. No transport, no Redis: tests drive it with strings.

Every frame the server writes has the envelope ``{"type", "errCode", "info",
"data"}`` (``errCode``, never the document's ``errorCode`` typo). A request
is ``{"type": ..., "data": ...}``; ``data`` is usually an object but real
clients also send a string (``onlineaccount``) or nothing at all (the
``ping`` answer), so it is kept as given and read through :func:`field`.

Sessions, as 000 shows them (``ORIGINALS.md``): a guest is
``{"room_id": 1, "level": "guest"}``, a logged-in user adds ``username`` and
``user_id``; ``room_id`` is a number when the room's name is one.

Room events from the bus (``imserver.core.rooms``) render as:

- ``room.member_joined`` -> ``online`` (logged-in members only; the session
  skips its own join: the newcomer is not told about itself);
- ``room.member_left`` -> ``unonline`` for a logout or a leave, ``close``
  for a disconnect (a guest's ``close`` carries only ``room_id``);
- ``room.message`` -> ``send`` with ``from``;
- ``chat.private`` (topic ``user:<id>``) -> ``send`` with ``user_id`` set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from imserver.core.rooms import Member

# infos the original server wrote (clients show them)
BAD_PARAMS = "参数错误！"
NOT_LOGGED_IN = "登录后才能聊天"
TARGET_OFFLINE = "对方已下线"
UNKNOWN_TYPE = "未知的请求类型"
BAD_FRAME = "数据格式错误"
TOO_FAST = "发送太频繁，请稍后再试"
ROOM_FULL = "房间人数已满"
PLEASE_LOGIN = "请先登录"
TOKEN_INVALID = "登录已失效，请重新登录"

PRIVATE = "chat.private"


class DecodeError(Exception):
    def __init__(self, info: str = BAD_FRAME):
        super().__init__(info)
        self.info = info


@dataclass
class Request:
    type: str
    data: Any  # dict, list, str or None, as the client sent it

    def field(self, name: str, default: str = "") -> str:
        return field(self.data, name, default)

    def has(self, name: str) -> bool:
        return isinstance(self.data, dict) and name in self.data


def field(data, name: str, default: str = "") -> str:
    """A request field as text: numbers become their decimal text, missing -> default."""
    if not isinstance(data, dict):
        return default
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, str):
        return value
    return default


def decode(payload) -> Request:
    """One client frame -> Request, or DecodeError for anything not a typed JSON object."""
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError() from None
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        raise DecodeError() from None
    if not isinstance(obj, dict):
        raise DecodeError()
    kind = obj.get("type")
    if not isinstance(kind, str) or not kind or len(kind) > 64:
        raise DecodeError()
    return Request(kind, obj.get("data"))


def frame(type_: str, err: int = 0, info: str = "", data: Any = None) -> str:
    """The envelope every reply and push uses."""
    return json.dumps({"type": type_, "errCode": err, "info": info,
                       "data": [] if data is None else data},
                      ensure_ascii=False, separators=(",", ":"))


def ping() -> str:
    return json.dumps({"type": "ping", "errCode": 0}, separators=(",", ":"))


def bad_params(type_: str, pairs: list[tuple[str, str]]) -> str:
    """errCode 1 ``参数错误！`` with ``[[field, reason], …]``."""
    return frame(type_, 1, BAD_PARAMS, [list(p) for p in pairs])


def room_id(name: str):
    """The 000 ``room_id`` of a room: an int for "1", the name otherwise."""
    if name.isdigit() and str(int(name)) == name and len(name) < 16:
        return int(name)
    return name


def session(member: Member | None, room: str, *, guest_level: bool = True) -> dict:
    """A connection's session as 000 shows it."""
    if member is None or member.is_guest:
        s = {"room_id": room_id(room)}
        if guest_level:
            s["level"] = "guest"
        return s
    return {"username": member.name, "user_id": member.user_id, "room_id": room_id(room),
            "level": member.level}


def sender(member: Member, room: str) -> dict:
    """``from`` of a message: the sender's session (``userid`` too, as the document spells it)."""
    s = session(member, room)
    if "user_id" in s:
        s["userid"] = s["user_id"]
    return s


def login_data(user_id: int, username: str, token: str, level: str, room: str) -> dict:
    return {"user_id": user_id, "username": username, "token": token, "level": level,
            "room_id": room_id(room)}


def render_event(kind: str, data: dict) -> str | None:
    """A bus event as the 000 frame every member of the room sees, or None."""
    if kind == "room.member_joined":
        member = Member.from_dict(data.get("member") or {})
        if member.is_guest:
            return None
        return frame("online", data=session(member, data["room"]))
    if kind == "room.member_left":
        member = Member.from_dict(data.get("member") or {})
        reason = data.get("reason")
        if reason in ("close", "timeout"):
            return frame("close", data=session(member, data["room"], guest_level=False))
        if member.is_guest:
            return None
        return frame("unonline", data=session(member, data["room"]))
    if kind == "room.message":
        member = Member.from_dict(data.get("sender") or {})
        room = data["room"]
        return frame("send", data={"room_id": room_id(room), "user_id": "",
                                   "message": data.get("text", ""),
                                   "from": sender(member, room)})
    if kind == PRIVATE:
        return frame("send", data=private_data(data))
    return None


def private_data(data: dict) -> dict:
    """The ``send`` data of a private message (also the sender's echo)."""
    member = Member.from_dict(data.get("sender") or {})
    return {"room_id": room_id(data["room"]), "user_id": data["to"],
            "message": data.get("text", ""), "from": sender(member, data["room"])}


class ChatCodec:
    """The bus codec of ``/ws/chat``: encodes an event once for all 000 sessions."""

    def __init__(self, prepare=None):
        self.prepare = prepare  # factory.prepareMessage, or None for plain text

    def encode_event(self, event):
        text = render_event(event.kind, event.data)
        if text is None:
            return None
        payload = text.encode("utf-8")
        return self.prepare(payload) if self.prepare is not None else payload
