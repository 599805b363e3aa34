"""
Document 004's wire format: underscore-delimited text frames, both ways.

Pure functions and small request classes; no transport, no Redis. The
WebSocket session (:mod:`imserver.dialects.signal.ws`) feeds each text frame
to :func:`parse_frame` and writes what the ``*_frame`` functions return.

Client to server::

    login_<userid>_<token>          login_<userid> (only with --legacy-auth)
    logout_<userid>
    <kind>_<to>_<payload>_<unicast|group>_<extension>
    heartbeat_<anything>            (ignored: only proves the client is alive)
    members_<groupid>
    records_<groupid|userid>_<timet>[_<unicast|group>]

``kind`` is ``text``, ``emotion``, ``picture``, ``audio`` or ``video``. The
payload of a send may contain ``_``: the two fixed fields are taken from the
left and the two from the right, the middle is the payload. The extension
cannot contain ``_`` (real clients put Base64 JSON there) and is opaque.

Server to client, the document's receive format::

    <kind>_<fromuserid>_<payload>_<unicast|group>_<conversation>_<timet>_<extension>

where ``conversation`` is the group id for group messages and, for direct
messages, the other party seen from the receiver: the sender for a message
received (the document's ``fromgroupid = fromuserid``), the recipient for the
copy of one's own message synced to one's other devices.

Frames the document does not define (``docs/signal.rst``) all have fewer than
seven ``_``-separated parts, so the original clients, which ignore such frames,
are not disturbed by them::

    login_<userid>_ok
    logout_<userid>_ok
    members_<groupid>_<userid>,<userid>,...
    records_<target>_<count>_<cursor>       after the history frames
    heartbeat_<timet>
    error_<code>_<reason>
"""

from __future__ import annotations

import re

KINDS = frozenset({"text", "emotion", "picture", "audio", "video"})
UNICAST = "unicast"
GROUP = "group"
TYPES = frozenset({UNICAST, GROUP})

# error codes of the error frame
MALFORMED = "malformed"
UNKNOWN_COMMAND = "unknown"
TOO_LARGE = "toolarge"
TOO_FAST = "toofast"
NOT_MEMBER = "notmember"
UNKNOWN_USER = "unknownuser"
UNKNOWN_GROUP = "unknowngroup"
NOT_LOGGED_IN = "notloggedin"
UNAVAILABLE = "unavailable"

MAX_ID_DIGITS = 18            # fits an int64; ids are decimal numbers
_CURSOR = re.compile(r"\A(\d{1,18})-(\d{1,18})\Z")
_SECONDS = re.compile(r"\A\d{1,12}(\.\d{1,6})?\Z")


class FrameError(ValueError):
    """A frame that cannot be understood; ``code`` is the error frame's code."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Login:
    __slots__ = ("user_id", "token")

    def __init__(self, user_id: str, token: str | None):
        self.user_id = user_id
        self.token = token

    def __eq__(self, other):
        return (isinstance(other, Login) and other.user_id == self.user_id
                and other.token == self.token)

    def __repr__(self):
        return f"Login({self.user_id!r}, token={'…' if self.token else None})"


class Logout:
    __slots__ = ("user_id",)

    def __init__(self, user_id: str):
        self.user_id = user_id

    def __eq__(self, other):
        return isinstance(other, Logout) and other.user_id == self.user_id

    def __repr__(self):
        return f"Logout({self.user_id!r})"


class Send:
    __slots__ = ("kind", "to", "payload", "type", "ext")

    def __init__(self, kind: str, to: str, payload: str, type: str, ext: str):
        self.kind = kind
        self.to = to
        self.payload = payload
        self.type = type
        self.ext = ext

    def __eq__(self, other):
        return isinstance(other, Send) and all(
            getattr(self, a) == getattr(other, a) for a in self.__slots__)

    def __repr__(self):
        return (f"Send({self.kind!r}, to={self.to!r}, payload={self.payload!r}, "
                f"type={self.type!r}, ext={self.ext!r})")


class Heartbeat:
    __slots__ = ("argument",)

    def __init__(self, argument: str):
        self.argument = argument

    def __eq__(self, other):
        return isinstance(other, Heartbeat) and other.argument == self.argument


class Members:
    __slots__ = ("group_id",)

    def __init__(self, group_id: str):
        self.group_id = group_id

    def __eq__(self, other):
        return isinstance(other, Members) and other.group_id == self.group_id


class Records:
    """History of a conversation after a position.

    ``after`` is a stream position ``"<ms>-<seq>"`` (exclusive): a ``timet``
    in seconds (fractions allowed) becomes the position just past that
    instant's millisecond, and a cursor from a previous ``records_`` reply
    is used as is. ``type`` is ``None`` when the client did not say whether
    the target is a group or a user.
    """

    __slots__ = ("target", "after", "type")

    def __init__(self, target: str, after: str, type: str | None = None):
        self.target = target
        self.after = after
        self.type = type

    def __eq__(self, other):
        return isinstance(other, Records) and (
            other.target, other.after, other.type) == (self.target, self.after, self.type)

    def __repr__(self):
        return f"Records({self.target!r}, after={self.after!r}, type={self.type!r})"


def parse_id(text: str, what: str) -> str:
    """A user or group id: decimal digits, returned without leading zeros."""
    if not text or len(text) > MAX_ID_DIGITS or not text.isascii() or not text.isdigit():
        raise FrameError(MALFORMED, f"{what} must be a number")
    return str(int(text))


def parse_after(text: str) -> str:
    """A ``records_`` position: seconds since 1970 or a cursor; see :class:`Records`."""
    m = _CURSOR.match(text)
    if m:
        return f"{int(m.group(1))}-{int(m.group(2))}"
    if _SECONDS.match(text):
        whole, _, frac = text.partition(".")
        ms = int(whole) * 1000 + int((frac + "000")[:3])
        # everything after this millisecond: its last possible sequence number
        return f"{ms}-18446744073709551615"
    raise FrameError(MALFORMED, "timet must be seconds since 1970 or a records cursor")


def parse_frame(text: str):
    """One client frame -> a request object; raises :class:`FrameError`."""
    command, sep, rest = text.partition("_")
    if not sep:
        raise FrameError(UNKNOWN_COMMAND if command.isalpha() else MALFORMED,
                         "frames are <command>_<fields>")
    if command in KINDS:
        return _parse_send(command, rest)
    if command == "heartbeat":
        return Heartbeat(rest)
    if command == "login":
        user, _, token = rest.partition("_")
        return Login(parse_id(user, "userid"), token or None)
    if command == "logout":
        # the document's form; real clients send their own id, and nothing
        # else is read from it (the session says who logs out)
        user = rest.partition("_")[0]
        return Logout(parse_id(user, "userid") if user else "")
    if command == "members":
        return Members(parse_id(rest, "groupid"))
    if command == "records":
        parts = rest.split("_")
        if len(parts) not in (2, 3):
            raise FrameError(MALFORMED, "records_<groupid|userid>_<timet>[_<unicast|group>]")
        kind = parts[2] if len(parts) == 3 else None
        if kind is not None and kind not in TYPES:
            raise FrameError(MALFORMED, "type must be unicast or group")
        return Records(parse_id(parts[0], "target"), parse_after(parts[1]), kind)
    raise FrameError(UNKNOWN_COMMAND, "unknown command")


def _parse_send(kind: str, rest: str) -> Send:
    to, sep, rest = rest.partition("_")
    if not sep:
        raise FrameError(MALFORMED, f"{kind}_<to>_<payload>_<unicast|group>_<extension>")
    to = parse_id(to, "touserid")
    head, sep1, ext = rest.rpartition("_")
    payload, sep2, type_ = head.rpartition("_")
    if not (sep1 and sep2):
        raise FrameError(MALFORMED, f"{kind}_<to>_<payload>_<unicast|group>_<extension>")
    if type_ not in TYPES:
        raise FrameError(MALFORMED, "type must be unicast or group")
    if not payload:
        raise FrameError(MALFORMED, "empty payload")
    return Send(kind, to, payload, type_, ext)


# -- server frames ------------------------------------------------------------

def message_frame(kind: str, sender: str, payload: str, type_: str, conversation: str,
                  timet: int, ext: str) -> str:
    """The document's receive format."""
    return f"{kind}_{sender}_{payload}_{type_}_{conversation}_{timet}_{ext}"


def conversation_for(sender: str, to: str, type_: str, viewer: str) -> str:
    """The ``fromgroupid`` field as ``viewer`` sees a message (see module doc)."""
    if type_ == GROUP:
        return to
    return to if viewer == sender else sender


def timet_of(message_id: str) -> int:
    """Server time in seconds of a stream id ``"<ms>-<seq>"``."""
    return int(message_id.partition("-")[0]) // 1000


def login_ok_frame(user_id) -> str:
    return f"login_{user_id}_ok"


def logout_ok_frame(user_id) -> str:
    return f"logout_{user_id}_ok"


def members_frame(group_id, user_ids) -> str:
    return f"members_{group_id}_{','.join(str(u) for u in user_ids)}"


def records_end_frame(target, count: int, cursor: str) -> str:
    return f"records_{target}_{count}_{cursor}"


def heartbeat_frame(argument) -> str:
    return f"heartbeat_{argument}"


def error_frame(code: str, reason: str) -> str:
    # the reason is our own text; keep it one field whatever it says
    return f"error_{code}_{reason.replace('_', ' ')}"


# -- bus events -----------------------------------------------------------------

MESSAGE_EVENT = "im.message"        # imserver.core.messages: a stored direct or group message
GROUP_JOINED_EVENT = "group.joined"  # imserver.core.groups, on user:<id>
GROUP_LEFT_EVENT = "group.left"


class MembershipChange:
    """Not a frame: tells a session to follow (or stop following) a group."""

    __slots__ = ("group_id", "joined", "since")

    def __init__(self, group_id: str, joined: bool, since: str = ""):
        self.group_id = group_id
        self.joined = joined
        self.since = since

    def __eq__(self, other):
        return isinstance(other, MembershipChange) and (
            other.group_id, other.joined, other.since) == (self.group_id, self.joined, self.since)

    def __repr__(self):
        return f"MembershipChange({self.group_id!r}, joined={self.joined}, since={self.since!r})"


def message_event_frame(topic: str, data: dict) -> str:
    """The receive frame of a message event, as subscribers of ``topic`` see it.

    ``data`` is the messages core's ``{id, k, f, t, y, p, e}``. On the
    sender's own ``user:`` topic (the copy for its other devices) the
    conversation field names the recipient.
    """
    sender, to, type_ = data["f"], data["t"], data["y"]
    if type_ == GROUP:
        conversation = to
    elif topic == "user:" + sender:
        conversation = to
    else:
        conversation = sender
    return message_frame(data["k"], sender, data["p"], type_, conversation,
                         timet_of(data["id"]), data["e"])


def event_output(topic: str, kind: str, data: dict):
    """What a signal session does with a bus event: a frame (str), a
    :class:`MembershipChange`, or ``None`` (not shown in this dialect)."""
    if kind == MESSAGE_EVENT:
        return message_event_frame(topic, data)
    if kind == GROUP_JOINED_EVENT:
        return MembershipChange(str(data["group_id"]), True, data.get("since", ""))
    if kind == GROUP_LEFT_EVENT:
        return MembershipChange(str(data["group_id"]), False)
    return None
