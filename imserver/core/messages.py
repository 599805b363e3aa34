"""
Messages: direct and group conversations, each an ordered log in Redis.

Every conversation is a capped Redis stream: a direct pair's
(``keys.direct_log(a, b)``) or a group's (``keys.group_log(gid)``). The
stream id (``"<ms>-<seq>"``, Redis' clock) is the message's server id and
its millisecond part its server time.

Sending is one Lua script (:data:`SEND_BATCH`), so a message is checked,
stored and announced atomically; the messages sent during one turn of the
reactor share one call (one round trip however many senders). Per message:

1. count the sender's rate (per user, in Redis, so it holds across
   processes; the per-connection limit is the dialect's);
2. check the recipient exists (direct) or the sender is a member (group);
3. ``XADD`` to the conversation, trimmed to ``history_length`` entries and
   ``history_days`` of age;
4. announce the :data:`MESSAGE_EVENT`: for a group, ``PUBLISH`` it on
   ``group:<gid>``; for a direct message, see below. The sending connection
   is excluded.

Publishing from inside the script means the order subscribers see on a topic
is the order of the log, on every process: the bus (which sends every event
through Redis pub/sub anyway) would otherwise publish after a second round
trip, and two processes could interleave differently. The script writes the
event in the bus's JSON form (:meth:`imserver.bus.Event.to_json`), and only
when it publishes.

Direct messages, the 1:1 hot path, are delivered by the sending process
itself: when the script's reply comes back, :meth:`Messages._deliver_here`
hands the event to this process's sinks of ``user:<to>`` and ``user:<from>``
(the sender's other devices) through :meth:`imserver.bus.Bus.dispatch_here`,
batch after batch in the order they were sent. The script publishes on
``user:<to>`` (``user:<from>``) only if the recipient (the sender) has a
connection on another process, which it tells from the connection ids'
process prefix (:func:`imserver.core.presence.conn_prefix`); the copy Redis
then also sends to the sending process is dropped there by the bus. This
saves the pub/sub round trip (Redis writing the event, the process reading
and parsing it again) for every message between users of one process. The
price: a recipient with devices on two processes may see two senders'
concurrent messages in different orders on the two (each sender's own
messages stay in order); history and the inbox are in log order anyway.
Only the signal dialect shows ``im.message`` events, and its sessions
register their connection (:meth:`Presence.connect`) before they follow
``user:<id>``, so no process that wants the event is skipped. The stored
entry keeps the sending process's prefix (field ``o``): after a lost
pub/sub link the dialect's repair re-sends what the link missed but not
what was delivered here.

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

import json
from collections import deque
from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger

from imserver.bus import ID_MARK, Event
from imserver.core.errors import Forbidden, InvalidInput, NotFound, RateLimited
from imserver.core.presence import conn_prefix
from imserver.store import keys
from imserver.store.scripts import Script

log = Logger()

MESSAGE_EVENT = "im.message"
MARK_EVENT = "im.mark"                  # {id}: the message clock, through pub/sub
UNICAST = "unicast"
GROUP = "group"
KINDS = frozenset({"text", "emotion", "picture", "audio", "video"})

ONLINE = "on"                           # the offline mark while the user is online
_PAIR_KEYS_KEPT = 4096                  # sender/recipient pairs whose keys are kept (~850 B each)


class NotMember(Forbidden):
    reason = "not a member of this group"


class UnknownGroup(NotFound):
    reason = "no such group"


class UnknownRecipient(NotFound):
    reason = "no such user"


class TooFast(RateLimited):
    reason = "too many messages; slow down"


# Every message sent during one turn of the reactor is stored by one call of
# this script (one round trip, however many senders).
#
# KEYS[1] is the message clock: the last id given out ("<ms>-<seq>"). Ids
# are Redis time in ms and a sequence within the ms, never going back, for
# all conversations, so sorting ids of different conversations gives the
# order they were stored in (the offline inbox merges conversations so).
# ARGV: rate limit per window (0: none), rate window (s), max length, max
# age (ms), then the batch as one JSON array (one argument instead of a
# dozen per message: the client library encodes arguments one by one, and
# that cost more than everything else). Each message is
#   [kind of conversation ('u'|'g'), from, to, kind, payload, ext, sending
#    connection ('' if none), recipient's user record | group record, log,
#    sender's peers | group members, recipient's peers, sender's rate
#    counter, sender's connections, recipient's | group's channel, sender's
#    channel ('' when it is the recipient), recipient's connections]
# so the keys of a message are in its entry rather than in KEYS (we run on
# one Redis, not a cluster). ARGV[6] is the event JSON up to the id, ARGV[7]
# the sending process's connection id prefix, ARGV[8] its process id as a
# JSON string. A direct message is published to a user's channel only if
# the user has a connection whose id does not start with the prefix (the
# sending process delivers to its own itself, from the reply), and its event
# is marked "h":1 so that process drops the copy. The script writes the
# event JSON only when it publishes: in the bus's form (Event.to_json's
# fields and order; a test reads them back).
# Returns, per message, 1 and its id, or 0 and an error code.
SEND_BATCH = Script("signal_send_batch", """
local limit, window, maxlen = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local maxage = tonumber(ARGV[4])
local batch = cjson.decode(ARGV[5])
local head, here, origin = ARGV[6], ARGV[7], ARGV[8]
local q = cjson.encode
local function elsewhere(conns)
  for _, c in ipairs(redis.call('SMEMBERS', conns)) do
    if string.sub(c, 1, 12) ~= here then return true end
  end
  return false
end
local function event(id, m, ms, unicast)
  return head .. id .. '","k":' .. q(m[4]) .. ',"f":' .. q(m[2]) .. ',"t":' .. q(m[3])
    .. (unicast and ',"y":"unicast"' or ',"y":"group"') .. ',"p":' .. q(m[5])
    .. ',"e":' .. q(m[6]) .. '},"x":' .. (m[7] == '' and 'null' or q(m[7]))
    .. ',"t":' .. string.format('%.3f', ms / 1000) .. ',"o":' .. origin
    .. (unicast and ',"h":1}' or '}')
end
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seq = -1
local last = redis.call('GET', KEYS[1])
if last then
  local lms, lseq = string.match(last, '^(%d+)-(%d+)$')
  lms, lseq = tonumber(lms), tonumber(lseq)
  if lms >= ms then ms, seq = lms, lseq end
end
local out = {}
local stored = false
for _, m in ipairs(batch) do
  local unicast = m[1] == 'u'
  local from = m[2]
  local err = nil
  if limit > 0 then
    local n = redis.call('INCR', m[12])
    if n == 1 then redis.call('EXPIRE', m[12], window) end
    if n > limit then err = 'toofast' end
  end
  if err then
  elseif redis.call('EXISTS', m[8]) == 0 then
    err = unicast and 'unknownuser' or 'unknowngroup'
  elseif not unicast and not redis.call('ZSCORE', m[10], from) then
    err = 'notmember'
  end
  if err then
    out[#out + 1] = 0
    out[#out + 1] = err
  else
    local log = m[9]
    seq = seq + 1
    local id = string.format('%.0f-%.0f', ms, seq)
    local fields = {'f', from, 'k', m[4], 'p', m[5], 'e', m[6]}
    if unicast then
      fields[#fields + 1] = 't'; fields[#fields + 1] = m[3]
      fields[#fields + 1] = 'o'; fields[#fields + 1] = here
    end
    if type(redis.pcall('XADD', log, 'MAXLEN', '~', maxlen, id, unpack(fields))) ~= 'string' then
      -- the log is ahead of the clock (the clock key was lost): follow the log
      id = redis.call('XADD', log, 'MAXLEN', '~', maxlen, '*', unpack(fields))
      local lms, lseq = string.match(id, '^(%d+)-(%d+)$')
      ms, seq = tonumber(lms), tonumber(lseq)
    end
    stored = true
    -- by age now and then (reads leave older entries out anyway): a sixteenth
    -- of the time under load, every time when it is quiet (seq 0 each ms)
    if seq % 16 == 0 then
      redis.call('XTRIM', log, 'MINID', '~', string.format('%.0f', ms - maxage))
    end
    if unicast then
      -- connections of this process get it from the reply
      local text = nil
      if elsewhere(m[16]) then
        text = event(id, m, ms, true)
        redis.call('PUBLISH', m[14], text)
      end
      -- the sender's other devices, if it has any elsewhere
      if m[15] ~= '' and elsewhere(m[13]) then
        redis.call('PUBLISH', m[15], text or event(id, m, ms, true))
      end
      redis.call('ZADD', m[10], ms, m[3])
      redis.call('ZADD', m[11], ms, from)
    else
      redis.call('PUBLISH', m[14], event(id, m, ms, false))
    end
    out[#out + 1] = 1
    out[#out + 1] = id
  end
end
if stored then redis.call('SET', KEYS[1], string.format('%.0f-%.0f', ms, seq)) end
return out
""")

# KEYS: the message clock, a bus channel. ARGV: the event JSON before and
# after the id. Publishes the last id given out: a process receiving this
# event has received every message event published before it (Redis sends a
# subscriber its messages in publish order), so nothing up to that id can
# have been lost on its pub/sub link.
MARK = Script("signal_mark", """
local id = redis.call('GET', KEYS[1]) or '0-0'
redis.call('PUBLISH', KEYS[2], ARGV[1] .. id .. ARGV[2])
return id
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
    origin: str = ""   # direct messages: the connection id prefix of the sending process

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
                   _text(f.get("e", "")), f.get("o", ""))


_ERRORS = {"toofast": TooFast, "unknownuser": UnknownRecipient, "unknowngroup": UnknownGroup,
           "notmember": NotMember}


def _outcome(result) -> str:
    ok, value = result
    if ok:
        return value
    raise _ERRORS[value]()


def _refused(on_error, exc: Exception) -> None:
    if on_error.__class__ is defer.Deferred:
        on_error.errback(exc)
        return
    try:
        on_error(exc)
    except Exception:
        # one sender's handler must not keep the others of its batch from theirs
        log.failure("messages: an on_error handler failed")


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def _after(position: str) -> str:
    """An XRANGE start strictly after ``position`` (``"<ms>-<seq>"``)."""
    return "(" + position


def _from_ms(ms: int) -> str:
    """An XRANGE start at ``ms`` inclusive."""
    return f"{ms}-0"


def _later(position: str, floor_ms: int | None) -> str:
    """The XRANGE start: after ``position`` but not before ``floor_ms``."""
    if floor_ms is not None and int(position.partition("-")[0]) < floor_ms:
        return _from_ms(floor_ms)
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
        self._batch: list | None = None   # sends waiting for this turn's script call
        self._pair_keys: dict = {}        # (sender, to) -> keys of their entries
        self.here = conn_prefix(bus.process_id)   # this process's connection ids start so
        self._head = '{"k":' + json.dumps(MESSAGE_EVENT) + ',"d":{"id":"'
        self._origin = json.dumps(bus.process_id)
        # script calls in the order they were made: [batch, reply, failure, done]
        self._in_flight: deque = deque()

    # -- sending ----------------------------------------------------------------

    def _rate_key(self, sender: str) -> str:
        start = int(self.clock.seconds() // self.rate_window)
        return keys.rate("signal-send", sender, start)

    async def send(self, sender, kind: str, to, type_: str, payload: str, ext: str = "",
                   conn_id: str | None = None) -> str:
        """Store and announce one message; returns its id.

        Raises :class:`TooFast`, :class:`UnknownRecipient`, :class:`UnknownGroup`,
        :class:`NotMember` or :class:`InvalidInput`; nothing is stored then.
        Messages sent in the same turn of the reactor share one script call.
        """
        return await self.submit(sender, kind, to, type_, payload, ext, conn_id)

    def submit(self, sender, kind: str, to, type_: str, payload: str, ext: str = "",
               conn_id: str | None = None) -> defer.Deferred:
        """:meth:`send` without a coroutine: a Deferred firing with the id.

        Messages submitted one after the other are stored in that order.
        """
        d = defer.Deferred()
        self.post(sender, kind, to, type_, payload, ext, conn_id, d)
        return d.addCallback(_outcome)

    def post(self, sender, kind: str, to, type_: str, payload: str, ext: str,
             conn_id: str | None, on_error) -> None:
        """:meth:`submit` for the hot path: no Deferred per message.

        ``on_error`` is called with the exception if the message is refused
        or cannot be stored (nothing happens when it is stored). It may also
        be a Deferred, which then fires with ``(1, id)`` or ``(0, code)``, or
        fails.
        """
        sender, to = str(sender), str(to)
        if kind not in KINDS:
            _refused(on_error, InvalidInput("unknown message kind"))
            return
        rate = self._rate_key(sender)
        conn = conn_id or ""
        if type_ == UNICAST:
            pair = self._pair_keys.get((sender, to))
            if pair is None:
                pair = self._keys_of_pair(sender, to)
            entry = ("u", sender, to, kind, payload, ext, conn, *pair[:4], rate, *pair[4:])
        elif type_ == GROUP:
            entry = ("g", sender, to, kind, payload, ext, conn, keys.group(to),
                     keys.group_log(to), keys.group_members(to), "", rate, "",
                     keys.bus_channel("group:" + to), "", "")
        else:
            _refused(on_error, InvalidInput("type must be unicast or group"))
            return
        if self._batch is None:
            self._batch = []
            self.clock.callLater(0, self._flush)
        self._batch.append((entry, on_error, conn_id))

    def _keys_of_pair(self, sender: str, to: str) -> tuple:
        """The keys of a direct message's entry but the rate counter (kept for the next)."""
        if len(self._pair_keys) >= _PAIR_KEYS_KEPT:
            self._pair_keys.clear()
        pair = self._pair_keys[sender, to] = (
            keys.user(to), keys.direct_log(sender, to), keys.user_peers(sender),
            keys.user_peers(to), keys.user_conns(sender), keys.bus_channel("user:" + to),
            "" if to == sender else keys.bus_channel("user:" + sender), keys.user_conns(to))
        return pair

    def _flush(self) -> None:
        if self._batch:
            self._flush_now()

    def _flush_now(self) -> None:
        batch, self._batch = self._batch, None
        if not batch:
            return
        args = [self.user_rate, self.rate_window + 1, self.history_length, self.max_age_ms,
                json.dumps([b[0] for b in batch], ensure_ascii=False), self._head, self.here,
                self._origin]
        # the pool may answer calls out of order: results are handed out in
        # the order of the calls, so each sender's messages arrive in order
        call = [batch, None, None, False]
        self._in_flight.append(call)

        def landed(reply, failure=None):
            call[1], call[2], call[3] = reply, failure, True
            in_flight = self._in_flight
            while in_flight and in_flight[0][3]:
                self._settle(*in_flight.popleft()[:3])

        defer.ensureDeferred(self.store.eval(SEND_BATCH, [keys.message_clock()], args)
                             ).addCallbacks(landed, lambda f: landed(None, f))

    def _settle(self, batch, reply, failure) -> None:
        """One script call's outcome: deliver here, and tell the senders."""
        if failure is not None:
            for _, d, _ in batch:
                if d.__class__ is defer.Deferred:
                    d.errback(failure)
                else:
                    _refused(d, failure.value)
            return
        for i, (entry, d, conn_id) in enumerate(batch):
            ok, value = int(reply[2 * i]), reply[2 * i + 1]
            if ok and entry[0] == "u":
                self._deliver_here(entry, value, conn_id)
            if d.__class__ is defer.Deferred:
                d.callback((ok, value))
            elif not ok:
                _refused(d, _ERRORS[value]())

    def _deliver_here(self, entry, message_id: str, conn_id: str | None) -> None:
        """A stored direct message to this process's sinks of both users."""
        bus = self.bus
        sender, to = entry[1], entry[2]
        data = None
        for topic in ("user:" + to, "user:" + sender) if to != sender else ("user:" + to,):
            if bus.has_local(topic):
                if data is None:
                    data = {"id": message_id, "k": entry[3], "f": sender, "t": to,
                            "y": UNICAST, "p": entry[4], "e": entry[5]}
                # (the bus isolates each sink's failure)
                bus.dispatch_here(Event(topic, MESSAGE_EVENT, data, conn_id,
                                        origin=bus.process_id))

    def publish_mark(self, topic: str) -> defer.Deferred:
        """Publish :data:`MARK_EVENT` with the last message id on ``topic``; fires with it."""
        channel, head, tail = self.bus.published_by_script(topic, MARK_EVENT, {"id": ID_MARK})
        return defer.ensureDeferred(
            self.store.eval(MARK, [keys.message_clock(), channel], [head, tail]))

    # -- reading ----------------------------------------------------------------

    def _oldest_ms(self) -> int:
        """Messages older than this (ms) are past ``history_days``: never read.

        The send script trims logs by age only now and then, so reads apply
        the age limit themselves.
        """
        return int(self.clock.seconds() * 1000) - self.max_age_ms

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
                    "XRANGE", keys.group_log(target),
                    _later(after, max(joined, self._oldest_ms())), "+", "COUNT", limit)
                return GROUP, [Message.from_entry(e, GROUP, target) for e in entries or []]
            if type_ == GROUP:
                if await self.store.execute("EXISTS", keys.group(target)):
                    raise NotMember()
                raise UnknownGroup()
        if not await self.store.execute("EXISTS", keys.user(target)):
            raise UnknownRecipient()
        entries = await self.store.execute(
            "XRANGE", keys.direct_log(viewer, target), _later(after, self._oldest_ms()), "+",
            "COUNT", limit)
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
        since_ms = max(since_ms, self._oldest_ms())
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
