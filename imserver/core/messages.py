"""
Messages: direct and group conversations, each an ordered log in Redis.

Every conversation is a capped Redis stream: a direct pair's
(``keys.direct_log(a, b)``) or a group's (``keys.group_log(gid)``). The
stream id (``"<ms>-<seq>"``, Redis' clock) is the message's server id and
its millisecond part its server time.

Sending is one Lua script (:data:`SEND_DIRECT`, :data:`SEND_GROUP`), so a
message is checked, stored and announced atomically and in one round trip:

1. count the sender's rate (per user, in Redis, so it holds across
   processes; the per-connection limit is the dialect's);
2. check the recipient exists (direct) or the sender is a member (group);
3. ``XADD`` to the conversation, trimmed to ``history_length`` entries and
   ``history_days`` of age;
4. ``PUBLISH`` the :data:`MESSAGE_EVENT` on the bus: ``group:<gid>`` for a
   group, ``user:<to>`` and ``user:<from>`` (the sender's other devices) for
   a direct message, excluding the sending connection.

Publishing from inside the script means the order subscribers see on a topic
is the order of the log, on every process: the bus (which sends every event
through Redis pub/sub anyway) would otherwise publish after a second round
trip, and two processes could interleave differently. The event is the bus's
own JSON (:meth:`imserver.bus.Event.to_json`) with the stream id spliced in.

Ids come from one clock for all conversations (``keys.message_clock``:
Redis time in ms plus a sequence within the ms, never going back), so they
also order messages of different conversations as they were stored.

The offline inbox is a position, not a copy: when a user's last connection
closes, :meth:`Messages.went_offline` records the Redis time in
``keys.user_offline_since``; the next login takes that mark
(:meth:`Messages.take_inbox`) and reads every conversation of the user from
it (:meth:`Messages.inbox`): the direct conversations active since then
(``keys.user_peers``, a zset of last-message times) and the user's groups,
each from the later of the mark and the user's join time. A fan-out to a
thousand members thus costs one stored message, not a thousand inbox writes.
While the user is online the mark reads ``on``, so one login (the first)
receives the inbox; a first login ever receives everything sent to the user
before it.

Events: :data:`MESSAGE_EVENT` ``{id, k, f, t, y, p, e}``: stream id, kind,
sender, recipient (user or group id), ``unicast``/``group``, payload,
extension.
"""

from __future__ import annotations

from dataclasses import dataclass

from imserver.bus import Event
from imserver.core.errors import Forbidden, InvalidInput, NotFound, RateLimited
from imserver.store import keys
from imserver.store.scripts import Script

MESSAGE_EVENT = "im.message"
UNICAST = "unicast"
GROUP = "group"
KINDS = frozenset({"text", "emotion", "picture", "audio", "video"})

ONLINE = "on"                           # the offline mark while the user is online
_MAX_SEQ = "18446744073709551615"
_ID_MARK = "\x01"                       # placeholder for the stream id in the event JSON
_ID_MARK_JSON = '"\\u0001"'


class NotMember(Forbidden):
    reason = "not a member of this group"


class UnknownGroup(NotFound):
    reason = "no such group"


class UnknownRecipient(NotFound):
    reason = "no such user"


class TooFast(RateLimited):
    reason = "too many messages; slow down"


_RATE = """
local limit = tonumber(ARGV[1])
if limit > 0 then
  local n = redis.call('INCR', KEYS[RATE])
  if n == 1 then redis.call('EXPIRE', KEYS[RATE], ARGV[2]) end
  if n > limit then return {0, 'toofast'} end
end
"""

# The next message id from the one clock of all conversations (KEYS[CLOCK]):
# Redis time in ms, and a sequence number within the millisecond, never
# going back. Sorting ids of different conversations thus gives the order
# they were stored in (the offline inbox merges conversations that way).
_NEXT_ID = """
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seq = 0
local last = redis.call('GET', KEYS[CLOCK])
if last then
  local lms, lseq = string.match(last, '^(%d+)-(%d+)$')
  lms, lseq = tonumber(lms), tonumber(lseq)
  if lms >= ms then ms, seq = lms, lseq + 1 end
end
local id = string.format('%.0f-%.0f', ms, seq)
redis.call('SET', KEYS[CLOCK], id)
"""

# KEYS: recipient's user record, the pair's log, sender's peers, recipient's
# peers, the sender's rate counter, the message clock. ARGV: rate limit (0: none), rate window,
# max length, max age (ms), from, to, kind, payload, ext, channel of the
# recipient, channel of the sender ('' when they are the same), event JSON
# before and after the id. Returns {1, id} or {0, error code}.
SEND_DIRECT = Script("signal_send_direct", _RATE.replace("RATE", "5") + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 'unknownuser'} end
""" + _NEXT_ID.replace("CLOCK", "6") + """
if type(redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], id, 'f', ARGV[5], 't', ARGV[6],
                   'k', ARGV[7], 'p', ARGV[8], 'e', ARGV[9])) ~= 'string' then
  -- the log is ahead of the clock (the clock key was lost): follow the log
  id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'f', ARGV[5], 't', ARGV[6],
                  'k', ARGV[7], 'p', ARGV[8], 'e', ARGV[9])
  redis.call('SET', KEYS[6], id)
  ms = tonumber(string.match(id, '^%d+'))
end
redis.call('XTRIM', KEYS[2], 'MINID', '~', string.format('%.0f', ms - tonumber(ARGV[4])))
redis.call('ZADD', KEYS[3], ms, ARGV[6])
redis.call('ZADD', KEYS[4], ms, ARGV[5])
local event = ARGV[12] .. id .. ARGV[13]
redis.call('PUBLISH', ARGV[10], event)
if ARGV[11] ~= '' then redis.call('PUBLISH', ARGV[11], event) end
return {1, id}
""")

# KEYS: group record, its members, its log, the sender's rate counter, the
# message clock. ARGV: rate limit, rate window, max length, max age (ms), from, kind,
# payload, ext, channel, event JSON before and after the id.
SEND_GROUP = Script("signal_send_group", _RATE.replace("RATE", "4") + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 'unknowngroup'} end
if not redis.call('ZSCORE', KEYS[2], ARGV[5]) then return {0, 'notmember'} end
""" + _NEXT_ID.replace("CLOCK", "5") + """
if type(redis.pcall('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], id, 'f', ARGV[5], 'k', ARGV[6],
                   'p', ARGV[7], 'e', ARGV[8])) ~= 'string' then
  id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'f', ARGV[5], 'k', ARGV[6],
                  'p', ARGV[7], 'e', ARGV[8])
  redis.call('SET', KEYS[5], id)
  ms = tonumber(string.match(id, '^%d+'))
end
redis.call('XTRIM', KEYS[3], 'MINID', '~', string.format('%.0f', ms - tonumber(ARGV[4])))
redis.call('PUBLISH', ARGV[9], ARGV[10] .. id .. ARGV[11])
return {1, id}
""")

# KEYS: the user's offline mark, the user's connections. ARGV: how far back
# (ms) to date the mark. Marks the user offline if no connection is left.
WENT_OFFLINE = Script("signal_went_offline", """
if redis.call('SCARD', KEYS[2]) > 0 then return 0 end
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.0f', ms))
return 1
""")

# KEYS: the user's offline mark. Marks the user online; returns the mark it
# replaced: a time (ms) to deliver the inbox from, nil for a first login
# ever, or 'on' when another connection already took the inbox.
TAKE_INBOX = Script("signal_take_inbox", """
local mark = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], 'on')
return mark
""")


@dataclass(slots=True)
class Message:
    id: str            # stream id "<ms>-<seq>"
    kind: str
    sender: str
    to: str            # user id (unicast) or group id (group)
    type: str          # "unicast" | "group"
    payload: str
    ext: str

    @property
    def ms(self) -> int:
        return int(self.id.partition("-")[0])

    def sort_key(self) -> tuple[int, int]:
        ms, _, seq = self.id.partition("-")
        return int(ms), int(seq)

    def to_event_data(self) -> dict:
        return {"id": self.id, "k": self.kind, "f": self.sender, "t": self.to,
                "y": self.type, "p": self.payload, "e": self.ext}

    @classmethod
    def from_entry(cls, entry, type_: str, group_id: str | None = None) -> "Message":
        mid, fields = entry
        it = iter(fields)
        f = dict(zip(it, it))
        to = group_id if type_ == GROUP else f.get("t", "")
        return cls(mid, f.get("k", "text"), f.get("f", ""), to, type_, _text(f.get("p", "")),
                   _text(f.get("e", "")))


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def _after(position: str) -> str:
    """An XRANGE start strictly after ``position`` (``"<ms>-<seq>"``)."""
    return "(" + position


def _from_ms(ms: int) -> str:
    """An XRANGE start at ``ms`` inclusive."""
    return f"{ms}-0"


def _later(position: str, joined_ms: int | None) -> str:
    """The XRANGE start: after ``position`` but not before ``joined_ms``."""
    if joined_ms is not None and int(position.partition("-")[0]) < joined_ms:
        return _from_ms(joined_ms)
    return _after(position)


class Messages:
    def __init__(self, store, bus, clock, *, history_length: int = 1000,
                 history_days: int = 30, user_rate: int = 40, rate_window: int = 1,
                 page: int = 100):
        self.store = store
        self.bus = bus
        self.clock = clock
        self.history_length = history_length
        self.max_age_ms = history_days * 86400 * 1000
        self.user_rate = user_rate
        self.rate_window = max(1, int(rate_window))
        self.page = page

    # -- sending ----------------------------------------------------------------

    def _event_json(self, data: dict, exclude: str | None) -> tuple[str, str]:
        text = Event("", MESSAGE_EVENT, data, exclude, origin=self.bus.process_id).to_json()
        head, sep, tail = text.partition(_ID_MARK_JSON)
        if not sep:  # pragma: no cover - Event.to_json changed shape
            raise RuntimeError("cannot place the message id in the event JSON")
        return head + '"', '"' + tail

    def _rate_key(self, sender: str) -> str:
        start = int(self.clock.seconds() // self.rate_window)
        return keys.rate("signal-send", sender, start)

    async def send(self, sender, kind: str, to, type_: str, payload: str, ext: str = "",
                   conn_id: str | None = None) -> str:
        """Store and announce one message; returns its id.

        Raises :class:`TooFast`, :class:`UnknownRecipient`, :class:`UnknownGroup`,
        :class:`NotMember` or :class:`InvalidInput`; nothing is stored then.
        """
        sender, to = str(sender), str(to)
        if kind not in KINDS:
            raise InvalidInput("unknown message kind")
        data = {"id": _ID_MARK, "k": kind, "f": sender, "t": to, "y": type_,
                "p": payload, "e": ext}
        head, tail = self._event_json(data, conn_id)
        common = [self.user_rate, self.rate_window + 1, self.history_length, self.max_age_ms]
        if type_ == UNICAST:
            ok, value = await self.store.eval(
                SEND_DIRECT,
                [keys.user(to), keys.direct_log(sender, to), keys.user_peers(sender),
                 keys.user_peers(to), self._rate_key(sender), keys.message_clock()],
                common + [sender, to, kind, payload, ext, keys.bus_channel("user:" + to),
                          "" if to == sender else keys.bus_channel("user:" + sender),
                          head, tail])
        elif type_ == GROUP:
            ok, value = await self.store.eval(
                SEND_GROUP,
                [keys.group(to), keys.group_members(to), keys.group_log(to),
                 self._rate_key(sender), keys.message_clock()],
                common + [sender, kind, payload, ext, keys.bus_channel("group:" + to),
                          head, tail])
        else:
            raise InvalidInput("type must be unicast or group")
        if int(ok):
            return value
        raise {"toofast": TooFast, "unknownuser": UnknownRecipient,
               "unknowngroup": UnknownGroup, "notmember": NotMember}[value]()

    # -- reading ----------------------------------------------------------------

    async def _joined_ms(self, group_id: str, user_id: str) -> int | None:
        score = await self.store.execute("ZSCORE", keys.group_members(group_id), user_id)
        return None if score is None else int(float(score)) // 1000

    async def history(self, viewer, target, type_: str | None, after: str,
                      limit: int | None = None) -> tuple[str, list[Message]]:
        """Messages of a conversation after ``after`` (a stream position), oldest first.

        ``target`` is a group (the viewer must be a member; history starts at
        the viewer's join) or a user (the pair's conversation). With
        ``type_`` ``None`` a group the viewer belongs to wins over a user of
        the same number. Returns the type found and at most ``limit`` messages.
        """
        viewer, target = str(viewer), str(target)
        limit = min(limit or self.page, self.page)
        if type_ in (None, GROUP):
            joined = await self._joined_ms(target, viewer)
            if joined is not None:
                entries = await self.store.execute(
                    "XRANGE", keys.group_log(target), _later(after, joined), "+",
                    "COUNT", limit)
                return GROUP, [Message.from_entry(e, GROUP, target) for e in entries or []]
            if type_ == GROUP:
                if await self.store.execute("EXISTS", keys.group(target)):
                    raise NotMember()
                raise UnknownGroup()
        if not await self.store.execute("EXISTS", keys.user(target)):
            raise UnknownRecipient()
        entries = await self.store.execute(
            "XRANGE", keys.direct_log(viewer, target), _after(after), "+", "COUNT", limit)
        return UNICAST, [Message.from_entry(e, UNICAST) for e in entries or []]

    # -- offline inbox ------------------------------------------------------------

    async def went_offline(self, user_id, backdate: float = 0.0) -> bool:
        """Mark the user offline if no connection of theirs is left.

        ``backdate`` (seconds) dates the mark earlier: a process that died
        stopped delivering some time before its connections were reaped.
        """
        return bool(await self.store.eval(
            WENT_OFFLINE, [keys.user_offline_since(user_id), keys.user_conns(user_id)],
            [int(backdate * 1000)]))

    async def take_inbox(self, user_id) -> int | None:
        """Mark the user online; the time (ms) their inbox starts at, or None.

        ``None`` means another connection of the user is (or was, without
        going offline since) online and has had the inbox already.
        """
        mark = await self.store.eval(TAKE_INBOX, [keys.user_offline_since(user_id)])
        if mark is None:
            return 0
        if mark == ONLINE:
            return None
        return int(mark)

    async def inbox(self, user_id, since_ms: int) -> list[Message]:
        """Every message to the user from ``since_ms`` on, in server order."""
        uid = str(user_id)
        groups = await self.store.execute("SMEMBERS", keys.user_groups(uid)) or []
        peers = await self.store.execute(
            "ZRANGEBYSCORE", keys.user_peers(uid), since_ms, "+inf") or []
        start = _from_ms(since_ms)
        out: list[Message] = []
        for gid in groups:
            joined = await self._joined_ms(gid, uid)
            if joined is None:
                continue
            entries = await self.store.execute(
                "XRANGE", keys.group_log(gid), _from_ms(max(since_ms, joined)), "+",
                "COUNT", self.history_length)
            out.extend(Message.from_entry(e, GROUP, gid) for e in entries or [])
        for peer in peers:
            entries = await self.store.execute(
                "XRANGE", keys.direct_log(uid, peer), start, "+", "COUNT", self.history_length)
            out.extend(Message.from_entry(e, UNICAST) for e in entries or [])
        out.sort(key=Message.sort_key)
        return out
