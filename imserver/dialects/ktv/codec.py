"""
Document 002's wire format, and nothing else: text in, requests out; replies
and bus events out as text. No I/O, so tests drive it with strings.

Requests are JSON objects ``{"action", "fullname", "token", "room", …}``
(:func:`decode` checks each action's parameters and their types, accepting
numbers where the document says string and back). Everything the server
writes is the original server's envelope::

    {"status": 0|-1, "type": 1|2, "body": …, "message": "success",
     "timestamp": "1528381016.1"}

plus ``caller_action``/``caller_fullname`` on direct replies (and on chat and
device pushes, as the original sent them). ``type`` 1 is the room status or
an ack, 2 chat, device and history. The room status body has the document's
field names and types: ``count`` and ``current_time`` are numbers,
``status``, ``start_time``, ``end_time``, ``duration`` and ``sid`` strings.
Beyond the document it carries ``lrc``/``link``/``vid`` of what is on the
stage, the music queue ``musics`` and the stage ``version``.

:class:`KtvCodec` renders bus events (``stage.changed``, ``room.message``
from any dialect, ``ktv.device``) once per event for every KTV session.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from imserver.core import stage as st
from imserver.core.rooms import MAX_NAME as MAX_ROOM
from imserver.core.stage import Snapshot

SUCCESS, FAILURE = 0, -1
TYPE_STATUS, TYPE_CHAT = 1, 2

MAX_CONTENT = 4000       # characters of a chat message, unless told otherwise (--chat-max-message)
MAX_FIELD = 256

# Messages (the document's and the original server's where they have one).
NOT_JOINED = "请先进入房间"
ALREADY_IN = "你已在房间中"
ROOM_FULL = "房间人数已满"
AUTH_FAILED = "身份验证失败"
BAD_FRAME = "消息格式错误"
UNKNOWN_ACTION = "未知的操作"
NO_SUCH_VIDEO = "视频不存在"
BAD_ROOM = "房间名称错误"
TOO_FAST = "操作太频繁，请稍后再试"
CHAT_TOO_FAST = "发言太频繁，请稍后再试"
BUSY = "服务器繁忙，请稍后再试"
DELETED = "取消排麦成功"
SUCCESS_TEXT = "success"

STAGE_MESSAGES = {
    "queued": "不能重复排麦",
    "not_queued": "未找到麦序",
    "no_music": "未找到歌曲",
    "not_asking": "当前状态不能上麦/不能重复上麦",
    "not_yours": "不能演唱不是自己点的歌~",
    "not_singing": "当前不可切歌",
    "not_singer": "只有演唱者才能切歌",
    "not_playing": "当前没有播放歌曲",
    "not_requester": "只有点歌者才能切歌",
    "busy": "视频已经在播放中啦",
    "no_video": "当前没有播放视频",
    "not_watcher": "只有点播者才能切视频",
    "bad_seek": "进度调整错误",
}

IDLE_SID = "0"

# action -> (room required, extra parameters and their parsers)
_ROOM_OPTIONAL = {"heart", "close", "reconnect"}


class BadRequest(Exception):
    """A frame the server cannot act on; ``message`` is what the client is told."""

    def __init__(self, message: str, action: str | None = None, fullname: str | None = None):
        super().__init__(message)
        self.message = message
        self.action = action
        self.fullname = fullname


@dataclass(frozen=True)
class Request:
    action: str
    fullname: str
    token: str
    room: str
    args: dict = field(default_factory=dict)


# -- parameter parsers: raw JSON value -> value, raising ValueError ----------------

def _text(value, limit: int = MAX_FIELD) -> str:
    if isinstance(value, bool) or value is None:
        raise ValueError
    if isinstance(value, int):
        value = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError
        value = str(int(value)) if value.is_integer() else repr(value)
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError
    return value


def _name(value, limit: int = MAX_FIELD) -> str:
    value = _text(value, limit).strip()
    if not value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError
    return value


def _number(value) -> float:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, str):
        value = float(value.strip())
    if not isinstance(value, (int, float)):
        raise ValueError
    value = float(value)
    if not math.isfinite(value):
        raise ValueError
    return value


def _duration(value) -> float:
    value = _number(value)
    if value <= 0 or value > 7 * 86400:
        raise ValueError
    return value


def _ack(value) -> bool:
    if value in (1, "1", True, "true"):
        return True
    if value in (0, "0", False, "false"):
        return False
    raise ValueError


def _content(value) -> str:
    value = _text(value, 1 << 30)   # decode() checks the length against its max_content
    if not value.strip():
        raise ValueError
    return value


def _device_value(value):
    """The document shows ``value`` as a number: "0"/"1" become 0/1."""
    value = _text(value, 32)
    try:
        return int(value)
    except ValueError:
        return value


_PARAMS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "join": {}, "status": {}, "cut": {}, "boardcast": {}, "del": {}, "heart": {},
    "history": {}, "del_music": {}, "cut_music": {}, "cut_video": {},
    "close": {}, "reconnect": {},
    "ask": {"ack": _ack},
    "sing": {"sid": _name, "duration": _duration},
    "listen": {"sid": _name, "duration": _duration},
    "chat": {"content": _content},
    "device": {"device": _name, "value": _device_value},
    "watch": {"vid": _name},
    "set_duration": {"current": _number},
}
# optional parameters (superset of the document)
_OPTIONAL: dict[str, dict[str, Callable[[Any], Any]]] = {
    "watch": {"duration": _duration},
}
ACTIONS = frozenset(_PARAMS)


def decode(text, max_content: int = MAX_CONTENT) -> Request:
    """
    One client frame as a :class:`Request`; raises :class:`BadRequest`. A
    ``chat`` ``content`` may have up to ``max_content`` characters.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(BAD_FRAME) from None
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        raise BadRequest(BAD_FRAME) from None
    if not isinstance(raw, dict):
        raise BadRequest(BAD_FRAME)
    action = raw.get("action")
    fullname = raw.get("fullname")
    try:
        fullname = _name(fullname)
    except ValueError:
        fullname = None
    if not isinstance(action, str) or action not in ACTIONS:
        shown = action if isinstance(action, str) and len(action) <= MAX_FIELD else None
        raise BadRequest(UNKNOWN_ACTION, shown, fullname)
    if fullname is None:
        raise BadRequest(_missing_or_bad(raw, "fullname"), action, None)
    token = raw.get("token", "")
    try:
        token = _text(token) if token is not None else ""
    except ValueError:
        raise BadRequest("参数错误: token", action, fullname) from None
    room = raw.get("room")
    if room is None or room == "":
        if action not in _ROOM_OPTIONAL:
            raise BadRequest("缺少参数: room", action, fullname)
        room = ""
    else:
        try:
            room = _name(room, MAX_ROOM)
        except ValueError:
            raise BadRequest(BAD_ROOM, action, fullname) from None
    args = {}
    for name, parse in _PARAMS[action].items():
        if raw.get(name) is None or raw.get(name) == "":
            raise BadRequest(f"缺少参数: {name}", action, fullname)
        try:
            args[name] = parse(raw[name])
        except (ValueError, TypeError, OverflowError):
            raise BadRequest(f"参数错误: {name}", action, fullname) from None
    if action == "chat" and len(args["content"]) > max_content:
        raise BadRequest("参数错误: content", action, fullname)
    for name, parse in _OPTIONAL.get(action, {}).items():
        if raw.get(name) not in (None, ""):
            try:
                args[name] = parse(raw[name])
            except (ValueError, TypeError, OverflowError):
                raise BadRequest(f"参数错误: {name}", action, fullname) from None
    return Request(action=action, fullname=fullname, token=token, room=room, args=args)


def _missing_or_bad(raw: dict, name: str) -> str:
    return f"缺少参数: {name}" if raw.get(name) in (None, "") else f"参数错误: {name}"


# -- writing ----------------------------------------------------------------------

def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def timestamp_text(ts: float) -> str:
    """Seconds as a string, to the millisecond: ``"1528381016.1"``."""
    return repr(round(float(ts), 3))


def num_text(x: float) -> str:
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(round(x, 3))


def envelope(body, ts: float, *, status: int = SUCCESS, message: str = SUCCESS_TEXT,
             type_: int = TYPE_STATUS, action: str | None = None,
             fullname: str | None = None) -> dict:
    out = {"status": status, "type": type_, "body": body, "message": message,
           "timestamp": timestamp_text(ts)}
    if action is not None:
        out["caller_action"] = action
        out["caller_fullname"] = fullname if fullname is not None else ""
    return out


def reply(req: Request, body, ts: float, *, message: str = SUCCESS_TEXT,
          type_: int = TYPE_STATUS) -> str:
    """A direct success reply to ``req``."""
    return dumps(envelope(body, ts, message=message, type_=type_, action=req.action,
                          fullname=req.fullname))


def failure(message: str, ts: float, action: str | None = None,
            fullname: str | None = None) -> str:
    """A direct error reply: status -1, empty body."""
    return dumps(envelope({}, ts, status=FAILURE, message=message, action=action,
                          fullname=fullname))


def stage_message(error: st.StageError) -> str:
    return STAGE_MESSAGES.get(error.code, error.reason)


def _entry(e: st.Entry) -> dict:
    return {"nick": e.nick, "fullname": e.fullname, "author": e.author, "name": e.name,
            "sid": e.sid, "lrc": e.lrc, "link": e.link, "duration": num_text(e.duration)}


def status_body(snap: Snapshot, now: float) -> dict:
    """The room status, as ``join``/``status`` replies and every stage push show it."""
    item = snap.item
    start = math.floor(snap.start)
    members = [{"nick": str(m.get("nick", "")), "fullname": str(m.get("fullname", "")),
                "avatar": str(m.get("avatar", ""))} for m in snap.members if isinstance(m, dict)]
    return {
        "count": len(members),
        "status": str(snap.status),
        "room": snap.room,
        "cover": str(snap.info.get("cover") or ""),
        "room_name": str(snap.info.get("room_name") or snap.room),
        "current_time": int(math.floor(now)),
        "start_time": num_text(start),
        "author": item.author if item else "",
        "name": item.name if item else "",
        "nick": item.nick if item else "",
        "end_time": num_text(start + snap.duration),
        "members": members,
        "sid": (item.sid or IDLE_SID) if item else IDLE_SID,
        "duration": num_text(snap.duration),
        "fullname": item.fullname if item else "",
        "songs": [_entry(e) for e in snap.songs],
        "lrc": item.lrc if item else "",
        "link": item.link if item else "",
        "vid": item.vid if item else "",
        "musics": [_entry(e) for e in snap.musics],
        "version": snap.version,
    }


def status_push(snap: Snapshot, ts: float) -> str:
    return dumps(envelope(status_body(snap, ts), ts))


# -- chat ---------------------------------------------------------------------------

def _sender_fullname(sender: dict, extra: dict) -> str:
    return str(extra.get("fullname") or sender.get("phone") or sender.get("name")
               or sender.get("username") or "")


def _sender_nick(sender: dict, extra: dict) -> str:
    return str(extra.get("nick") or sender.get("name") or sender.get("phone") or "")


def chat_body(msg: dict) -> dict:
    """A room message (from any dialect) as a KTV chat body."""
    sender = msg.get("sender") if isinstance(msg.get("sender"), dict) else {}
    extra = msg.get("extra") if isinstance(msg.get("extra"), dict) else {}
    return {"content": str(msg.get("text", "")), "nick": _sender_nick(sender, extra),
            "fullname": _sender_fullname(sender, extra), "action": "chat",
            "room": str(msg.get("room", ""))}


def history_entry(msg: dict) -> dict:
    body = chat_body(msg)
    return {"content": body["content"], "nick": body["nick"], "room": body["room"],
            "action": "chat", "timestamp": float(msg.get("ts") or 0),
            "fullname": body["fullname"]}


def chat_push(msg: dict, ts: float) -> str:
    body = chat_body(msg)
    return dumps(envelope(body, ts, type_=TYPE_CHAT, action="chat", fullname=body["fullname"]))


def device_body(room: str, fullname: str, device: str, value) -> dict:
    return {"device": device, "fullname": fullname, "room": room, "value": value}


def device_push(data: dict, ts: float) -> str:
    body = device_body(str(data.get("room", "")), str(data.get("fullname", "")),
                       str(data.get("device", "")), data.get("value"))
    return dumps(envelope(body, ts, type_=TYPE_CHAT, action="device",
                          fullname=body["fullname"]))


# -- bus events -----------------------------------------------------------------------

class Control:
    """Not for the client: an event the session itself acts on (``ktv.replaced``)."""

    def __repr__(self):
        return "<ktv control>"


CONTROL = Control()
CONTROL_KINDS = frozenset({"ktv.replaced"})


class KtvCodec:
    """
    Encodes bus events for KTV sessions. ``prepare(text)`` turns the text
    into what sessions write (Autobahn's ``prepareMessage``); identity in tests.
    """

    def __init__(self, prepare: Callable[[str], Any] = lambda text: text):
        self.prepare = prepare

    def encode_text(self, event) -> str | None:
        data = event.data if isinstance(event.data, dict) else {}
        if event.kind == "stage.changed":
            return status_push(Snapshot.from_data(data), event.ts)
        if event.kind == "room.message":
            return chat_push(data, event.ts)
        if event.kind == "ktv.device":
            return device_push(data, event.ts)
        return None

    def encode_event(self, event):
        if event.kind in CONTROL_KINDS:
            return CONTROL
        text = self.encode_text(event)
        return None if text is None else self.prepare(text)


# -- catalogue text -------------------------------------------------------------------

_UNITS = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "秒": 1,
          "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60, "分": 60, "分钟": 60,
          "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600, "小时": 3600}


def video_seconds(text) -> float | None:
    """
    A catalogue video's ``duration`` in seconds: ``"13 min"`` (000's
    ``video.php`` form), ``"1:02:03"``/``"02:03"``, or plain seconds.
    None when it says nothing usable.
    """
    text = str(text or "").strip().lower()
    if not text:
        return None
    try:
        if ":" in text:
            total = 0.0
            for part in text.split(":"):
                total = total * 60 + float(part)
            return total if math.isfinite(total) and total > 0 else None
        number, unit = text, ""
        for i, c in enumerate(text):
            if not (c.isdigit() or c == "."):
                number, unit = text[:i], text[i:].strip()
                break
        value = float(number) * _UNITS[unit] if unit else float(number)
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None
