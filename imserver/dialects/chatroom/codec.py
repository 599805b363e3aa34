"""
Document 003's WebSocket packets, pure: text in, packet out; events in, text out.

Every packet is ``{"type", "data": {"user": {"user_name", "user_avatar"},
"room_name", "msg"}}``. Clients send ``join``, ``leave`` and ``msg``; the
server sends ``user`` (``msg`` is ``create``, ``join`` or ``leave``, or
``user not exist`` / ``room not exist`` for a failed leave), ``msg`` and
``error`` (``msg`` names the problem).

Validation, in the order the errors are checked:

- not a JSON object, or no ``type`` or ``data``: ``invalid message``;
- a ``type`` other than ``join``, ``leave``, ``msg``: ``illegal type``;
- ``data`` not an object, without ``room_name``, or a ``user`` that is not
  an object: ``invalid data``;
- an empty ``room_name`` (or, where the client names itself, an empty
  ``user_name``): ``illegal data``;
- ``msg`` not text or too long: ``invalid msg``; empty on a ``msg``
  packet: ``null message``.

The sender shown in ``user`` is always the session's member, never the
``user`` the client wrote. Room events from the bus render as ``user``
(joins and leaves of logged-in members, from any dialect) and ``msg``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from imserver.core.rooms import Member

INVALID_MESSAGE = "invalid message"
INVALID_DATA = "invalid data"
ILLEGAL_DATA = "illegal data"
NULL_MESSAGE = "null message"
ILLEGAL_TYPE = "illegal type"
INVALID_MSG = "invalid msg"
INVALID_TOKEN = "invalid token"
FULL_ROOM = "full room"
USER_NOT_EXIST = "user not exist"
ROOM_NOT_EXIST = "room not exist"
TOO_MANY = "too many messages"

CLIENT_TYPES = ("join", "leave", "msg")
MAX_MSG = 4000         # characters, unless told otherwise (--chat-max-message)
DEFAULT_AVATAR = "default"


class PacketError(Exception):
    def __init__(self, msg: str, room_name: str = "", user: dict | None = None):
        super().__init__(msg)
        self.msg = msg
        self.room_name = room_name
        self.user = user or {}


@dataclass
class Packet:
    type: str
    room_name: str
    user_name: str      # as the client claimed it (used only with --legacy-auth)
    user_avatar: str
    msg: str
    token: str

    @property
    def user(self) -> dict:
        return {"user_name": self.user_name, "user_avatar": self.user_avatar}


def _text(value) -> str | None:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def decode(payload, max_msg: int = MAX_MSG) -> Packet:
    """One client frame -> Packet, or PacketError carrying the 003 error text."""
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise PacketError(INVALID_MESSAGE) from None
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        raise PacketError(INVALID_MESSAGE) from None
    if not isinstance(obj, dict) or "type" not in obj or "data" not in obj:
        raise PacketError(INVALID_MESSAGE)
    kind, data = obj["type"], obj["data"]
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:
        raise PacketError(ILLEGAL_TYPE)
    if not isinstance(data, dict) or "room_name" not in data:
        raise PacketError(INVALID_DATA)
    user = data.get("user", {})
    if user is None:
        user = {}
    if not isinstance(user, dict):
        raise PacketError(INVALID_DATA)
    room_name, user_name = _text(data.get("room_name")), _text(user.get("user_name"))
    avatar, token = _text(user.get("user_avatar")), _text(data.get("token", obj.get("token")))
    if room_name is None or user_name is None or avatar is None or token is None:
        raise PacketError(INVALID_DATA)
    echo = {"user_name": user_name, "user_avatar": avatar}
    if not room_name.strip():
        raise PacketError(ILLEGAL_DATA, room_name, echo)
    msg = _text(data.get("msg"))
    if msg is None or len(msg) > max_msg:
        raise PacketError(INVALID_MSG, room_name, echo)
    if kind == "msg" and not msg.strip():
        raise PacketError(NULL_MESSAGE, room_name, echo)
    return Packet(kind, room_name, user_name, avatar, msg, token)


def encode(type_: str, user: dict, room_name: str, msg: str) -> str:
    return json.dumps({"type": type_, "data": {"user": user, "room_name": room_name,
                                              "msg": msg}},
                      ensure_ascii=False, separators=(",", ":"))


def user_of(member: Member) -> dict:
    return {"user_name": member.name, "user_avatar": member.avatar or DEFAULT_AVATAR}


def error(msg: str, room_name: str = "", user: dict | None = None) -> str:
    return encode("error", user or {"user_name": "", "user_avatar": ""}, room_name, msg)


def user_packet(member: Member, room_name: str, what: str) -> str:
    return encode("user", user_of(member), room_name, what)


def render_event(kind: str, data: dict) -> str | None:
    if kind == "room.member_joined":
        member = Member.from_dict(data.get("member") or {})
        if member.is_guest:
            return None
        return user_packet(member, data["room"], "create" if data.get("first") else "join")
    if kind == "room.member_left":
        member = Member.from_dict(data.get("member") or {})
        if member.is_guest:
            return None
        return user_packet(member, data["room"], "leave")
    if kind == "room.message":
        member = Member.from_dict(data.get("sender") or {})
        return encode("msg", user_of(member), data["room"], data.get("text", ""))
    return None


class ChatroomCodec:
    """The bus codec of ``/ws/chatroom``: one encoding per event for all 003 sessions."""

    def __init__(self, prepare=None):
        self.prepare = prepare

    def encode_event(self, event):
        text = render_event(event.kind, event.data)
        if text is None:
            return None
        payload = text.encode("utf-8")
        return self.prepare(payload) if self.prepare is not None else payload
