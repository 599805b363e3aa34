"""
Rooms: the one room namespace every room dialect (000 chat, 002 ktv, 003
chatroom) shares.

A room is keyed by its name (000's numeric ``room_id`` N is the room ``"N"``).
It has a capacity (0: unlimited), a creator, a cover and a creation time, and
three kinds of state in Redis, all changed by Lua scripts so that concurrent
joins on several processes stay consistent:

- **connections**: which connection (by presence conn id) sits in the room,
  as which :class:`Member`, from which dialect;
- **occupants**: who counts towards the population and the capacity. A user
  is one occupant however many connections (on whichever processes) they
  have in the room; a guest counts per connection;
- **reservations**: 003's HTTP "enter" (``reserve``) holds a place for a
  user before their WebSocket ``join``, so that capacity is enforced at the
  HTTP call, atomically. A reservation lasts while the user has a
  connection in the room, and ``reserve_ttl`` seconds otherwise (so the
  documented "leave over WebSocket, then exit over HTTP" works, and an
  abandoned one does not hold a place for ever).

Room chat is a capped Redis stream per room: ``post`` appends a message (the
stream assigns its id) *before* publishing it, so history and delivery agree.
With ``limits``, a sender may post ``post_rate`` messages a second, counted
in Redis: a user over all their connections, dialects and processes, a
guest per connection.

Every change is published on the bus topic ``room:<name>`` as one of

- ``room.member_joined`` ``{room, conn_id, member, dialect, created, first,
  population, rebind, previous, seq}``
- ``room.member_left`` ``{room, conn_id, member, dialect, reason,
  population, seq}`` (reason ``leave``, ``close``, ``logout`` or
  ``timeout``; ``rebind`` true when the connection stays, as someone else)
- ``room.message`` ``{room, id, ts, sender, text, dialect, conn_id, extra}``

with ``member``/``sender`` as :meth:`Member.to_dict`. Each dialect renders
these in its own wire format; ``dialect`` says where the change came from and
``extra`` carries dialect-specific fields. Member events also carry ``seq``,
the room's membership sequence number (it grows with every change).

Catching up after a lost bus link. Redis pub/sub drops what is published
while a process's link is down, so each session keeps a :class:`RoomFeed`:
per room, the id of the newest message it was shown (the log's end when it
joined). After the link comes back, :meth:`Rooms.resync` reads, once per
process, what changed: the membership of every room its sessions are in
(compared with this process's :class:`Roster` of it, kept from the member
events it received, which yields ``member_left`` (reason ``resync``) and
``member_joined`` events for what was missed) and, on demand, the messages
after a position. Each feed shows its session those, in log order, then the
events that arrived meanwhile, without the ones already shown.

Connections of a process that died are removed (reason ``timeout``) through
:meth:`Presence.on_dead`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from imserver.bus import ID_MARK, Event
from imserver.core.errors import Conflict, Forbidden, InvalidInput, NotFound, RateLimited
from imserver.store import keys
from imserver.store.scripts import Script

log = Logger()

MAX_NAME = 100
LEVELS = ("guest", "user", "admin")


class RoomFull(Forbidden):
    reason = "room is full"


class RoomNotFound(NotFound):
    reason = "room not exist"


class AlreadyJoined(Conflict):
    reason = "already in the room"


class NotReserved(NotFound):
    reason = "user not exist"


class TooFast(RateLimited):
    reason = "too many messages"


@dataclass
class Member:
    """Who a connection is in a room, with what every dialect shows of them."""

    user_id: int | None
    name: str
    avatar: str = ""
    phone: str | None = None
    username: str | None = None
    level: str = "guest"

    @classmethod
    def guest(cls, name: str = "", avatar: str = "") -> "Member":
        return cls(user_id=None, name=name, avatar=avatar, level="guest")

    @classmethod
    def from_user(cls, user) -> "Member":
        """A member for an :class:`imserver.core.accounts.User`."""
        name = user.username or user.phone or user.nickname or str(user.id)
        return cls(user_id=int(user.id), name=name, avatar=user.avatar or "",
                   phone=user.phone, username=user.username,
                   level=user.level if user.level in LEVELS else "user")

    @property
    def is_guest(self) -> bool:
        return self.level == "guest"

    def occupant(self, conn_id: str) -> str:
        """The key the population counts: a user once, a guest per connection."""
        return f"u:{self.user_id}" if self.user_id is not None else f"g:{conn_id}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Member":
        uid = d.get("user_id")
        return cls(user_id=int(uid) if uid not in (None, "") else None,
                   name=str(d.get("name") or ""), avatar=str(d.get("avatar") or ""),
                   phone=d.get("phone"), username=d.get("username"),
                   level=d.get("level") if d.get("level") in LEVELS else "guest")


@dataclass
class Room:
    name: str
    capacity: int          # 0: unlimited
    creator_id: int | None
    cover: str
    created: float
    population: int


@dataclass
class JoinResult:
    room: Room
    created: bool          # the room did not exist before this join
    population: int        # after the join
    first: bool = False    # no other connection was in the room
    position: str = "0-0"  # the id of the log's newest message at the join
    seq: int = 0           # the room's membership sequence number after the join


@dataclass
class RoomMessage:
    id: str                # the stream id, e.g. "1700000000000-0"
    ts: float
    room: str
    sender: Member
    text: str
    dialect: str
    extra: dict = field(default_factory=dict)
    conn_id: str | None = None

    def to_dict(self) -> dict:
        return {"room": self.room, "id": self.id, "ts": self.ts,
                "sender": self.sender.to_dict(), "text": self.text,
                "dialect": self.dialect, "conn_id": self.conn_id, "extra": self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> "RoomMessage":
        return cls(id=d["id"], ts=float(d["ts"]), room=d["room"],
                   sender=Member.from_dict(d.get("sender") or {}), text=d.get("text", ""),
                   dialect=d.get("dialect", ""), extra=d.get("extra") or {},
                   conn_id=d.get("conn_id"))


MESSAGE = "room.message"
JOINED = "room.member_joined"
LEFT = "room.member_left"


def topic(name: str) -> str:
    return f"room:{name}"


def id_key(message_id: str) -> tuple[int, int]:
    """A stream id as a tuple that orders like the stream: "17-3" -> (17, 3)."""
    ms, _, seq = str(message_id).partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (0, 0)


def _after(key: tuple[int, int]) -> str:
    """The smallest stream id greater than ``key`` (an exclusive XRANGE start on Redis 5)."""
    return f"{key[0]}-{key[1] + 1}"


def check_name(name) -> str:
    if (not isinstance(name, str) or not name or len(name) > MAX_NAME
            or any(ord(c) < 32 or ord(c) == 127 for c in name)):
        raise InvalidInput("invalid room name")
    return name


# -- keys (room names are quoted so that "a:conns" cannot collide with a's) --

def _q(name: str) -> str:
    return quote(name, safe="")


def room_keys(name: str) -> dict[str, str]:
    q = _q(name)
    return {
        "room": keys.room(q),
        "conns": keys.room_conns(q),
        "occ": keys.room_occupants(q),
        "resv": keys.room_reservations(q),
        "log": keys.room_log(q),
    }


# -- Lua ------------------------------------------------------------------

# Shared helpers. occ: hash occupant -> reference count (connections, plus 1
# for a reservation); resv: zset user id -> expiry (+inf while connected).
_LUA_LIB = """
local function prune(occ, resv, now)
  local expired = redis.call('ZRANGEBYSCORE', resv, '-inf', now)
  for _, uid in ipairs(expired) do
    redis.call('ZREM', resv, uid)
    if redis.call('HINCRBY', occ, 'u:' .. uid, -1) <= 0 then
      redis.call('HDEL', occ, 'u:' .. uid)
    end
  end
end
local function hold(occ, resv, occupant)
  redis.call('HINCRBY', occ, occupant, 1)
  if string.sub(occupant, 1, 2) == 'u:' then
    local uid = string.sub(occupant, 3)
    if redis.call('ZSCORE', resv, uid) then redis.call('ZADD', resv, '+inf', uid) end
  end
end
local function release(occ, resv, occupant, now, ttl)
  local n = redis.call('HINCRBY', occ, occupant, -1)
  if n <= 0 then
    redis.call('HDEL', occ, occupant)
  elseif n == 1 and string.sub(occupant, 1, 2) == 'u:' then
    -- only the reservation is left: it now expires
    local uid = string.sub(occupant, 3)
    if redis.call('ZSCORE', resv, uid) then
      redis.call('ZADD', resv, tonumber(now) + tonumber(ttl), uid)
    end
  end
end
local function occupant_of(entry)
  return string.sub(entry, 1, string.find(entry, '|', 1, true) - 1)
end
"""

# KEYS: room, index. ARGV: name, capacity, creator, cover, now. 1 if created.
CREATE = Script("rooms_create", """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'capacity', ARGV[2], 'creator_id', ARGV[3],
           'cover', ARGV[4], 'created', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
return 1
""")

# KEYS: room, index, conns, occ, resv, conn_rooms, log.
# ARGV: name, conn_id, entry, occupant, create, capacity, creator, cover, now, ttl.
# -> {status, created, first, population, seq, position}; status 0 ok, 1 this
# connection is already in, -1 no such room, -2 full. ``position`` is the id
# of the log's newest message: what the joiner is shown starts after it.
JOIN = Script("rooms_join", _LUA_LIB + """
local created = 0
if redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[5] ~= '1' then return {-1, 0, 0, 0} end
  redis.call('HSET', KEYS[1], 'name', ARGV[1], 'capacity', ARGV[6], 'creator_id', ARGV[7],
             'cover', ARGV[8], 'created', ARGV[9])
  redis.call('ZADD', KEYS[2], ARGV[9], ARGV[1])
  created = 1
end
prune(KEYS[4], KEYS[5], ARGV[9])
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then
  return {1, created, 0, redis.call('HLEN', KEYS[4])}
end
local cap = tonumber(redis.call('HGET', KEYS[1], 'capacity') or '0') or 0
if cap > 0 and redis.call('HEXISTS', KEYS[4], ARGV[4]) == 0
    and redis.call('HLEN', KEYS[4]) >= cap then
  return {-2, created, 0, redis.call('HLEN', KEYS[4])}
end
local first = 0
if redis.call('HLEN', KEYS[3]) == 0 then first = 1 end
hold(KEYS[4], KEYS[5], ARGV[4])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[6], ARGV[1])
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local newest = redis.call('XREVRANGE', KEYS[7], '+', '-', 'COUNT', 1)
local position = '0-0'
if newest[1] then position = newest[1][1] end
return {0, created, first, redis.call('HLEN', KEYS[4]), seq, position}
""")

# KEYS: conns, occ, resv, conn_rooms, room. ARGV: name, conn_id, now, ttl.
# -> {entry, population, seq} or nil if the connection was not in the room.
LEAVE = Script("rooms_leave", _LUA_LIB + """
redis.call('SREM', KEYS[4], ARGV[1])
local entry = redis.call('HGET', KEYS[1], ARGV[2])
if not entry then return false end
redis.call('HDEL', KEYS[1], ARGV[2])
release(KEYS[2], KEYS[3], occupant_of(entry), ARGV[3], ARGV[4])
prune(KEYS[2], KEYS[3], ARGV[3])
local seq = 0
if redis.call('EXISTS', KEYS[5]) == 1 then seq = redis.call('HINCRBY', KEYS[5], 'seq', 1) end
return {entry, redis.call('HLEN', KEYS[2]), seq}
""")

# KEYS: conns, occ, resv, room. ARGV: conn_id, new entry, new occupant, now, ttl.
# Replaces the member a connection is (000 login/logout on an open
# connection). A swap never raises the population, so no capacity check.
# -> {old entry, population, seq} or nil. It may publish two events (the old
# member left, the new one joined): they get seq - 1 and seq.
REBIND = Script("rooms_rebind", _LUA_LIB + """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then return false end
local old = occupant_of(entry)
if old ~= ARGV[3] then
  hold(KEYS[2], KEYS[3], ARGV[3])
  release(KEYS[2], KEYS[3], old, ARGV[4], ARGV[5])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local seq = 0
if redis.call('EXISTS', KEYS[4]) == 1 then seq = redis.call('HINCRBY', KEYS[4], 'seq', 2) end
return {entry, redis.call('HLEN', KEYS[2]), seq}
""")

# KEYS: room, occ, resv. ARGV: user id, now, ttl.
# -> {status, population}; status 0 reserved, 1 already in, -1 no room, -2 full.
RESERVE = Script("rooms_reserve", _LUA_LIB + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
prune(KEYS[2], KEYS[3], ARGV[2])
local occupant = 'u:' .. ARGV[1]
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  if tonumber(redis.call('HGET', KEYS[2], occupant) or '0') <= 1 then
    redis.call('ZADD', KEYS[3], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
  end
  return {1, redis.call('HLEN', KEYS[2])}
end
local cap = tonumber(redis.call('HGET', KEYS[1], 'capacity') or '0') or 0
if cap > 0 and redis.call('HEXISTS', KEYS[2], occupant) == 0
    and redis.call('HLEN', KEYS[2]) >= cap then
  return {-2, redis.call('HLEN', KEYS[2])}
end
if redis.call('HINCRBY', KEYS[2], occupant, 1) > 1 then
  redis.call('ZADD', KEYS[3], '+inf', ARGV[1])
else
  redis.call('ZADD', KEYS[3], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
end
return {0, redis.call('HLEN', KEYS[2])}
""")

# KEYS: room, occ, resv. ARGV: user id, now.
# -> {status, population}; status 0 released, -1 no room, -3 no reservation.
RELEASE = Script("rooms_release", _LUA_LIB + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
prune(KEYS[2], KEYS[3], ARGV[2])
if not redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  return {-3, redis.call('HLEN', KEYS[2])}
end
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('HINCRBY', KEYS[2], 'u:' .. ARGV[1], -1) <= 0 then
  redis.call('HDEL', KEYS[2], 'u:' .. ARGV[1])
end
return {0, redis.call('HLEN', KEYS[2])}
""")

# KEYS: occ, resv. ARGV: now. -> population.
POPULATION = Script("rooms_population", _LUA_LIB + """
prune(KEYS[1], KEYS[2], ARGV[1])
return redis.call('HLEN', KEYS[1])
""")

# KEYS: room, conns, occ. -> {seq, population, {conn_id, entry, ...}}: the
# membership and its sequence number, read together.
# KEYS: the room's log. ARGV: max length, then the entry's fields (sender
# JSON, text, dialect, ts, connection, extra JSON), then the bus channel and
# the event JSON before and after the id. Returns the id.
POST = Script("rooms_post", """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 's', ARGV[2], 't', ARGV[3],
                      'd', ARGV[4], 'ts', ARGV[5], 'c', ARGV[6], 'x', ARGV[7])
redis.call('PUBLISH', ARGV[8], ARGV[9] .. id .. ARGV[10])
return id
""")

ROSTER = Script("rooms_roster", """
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') or 0
return {seq, redis.call('HLEN', KEYS[3]), redis.call('HGETALL', KEYS[2])}
""")


def _entry(member: Member, conn_id: str, dialect: str, now: float) -> str:
    record = {"m": member.to_dict(), "d": dialect, "t": now}
    return member.occupant(conn_id) + "|" + json.dumps(record, ensure_ascii=False,
                                                      separators=(",", ":"))


def _parse_entry(entry) -> tuple[Member, str]:
    member, dialect, _ = _parse_record(entry)
    return member, dialect


def _parse_record(entry) -> tuple[Member, str, float]:
    if isinstance(entry, bytes):
        entry = entry.decode("utf-8", "replace")
    record = json.loads(entry.split("|", 1)[1])
    return Member.from_dict(record.get("m") or {}), record.get("d", ""), record.get("t", 0)


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class Rooms:
    """The rooms service: membership, capacity, chat history and room events."""

    def __init__(self, store, bus, presence, clock, default_capacity: int = 10,
                 history_len: int = 500, reserve_ttl: float = 120.0, *,
                 limits=None, post_rate: int = 0):
        self.store = store
        self.bus = bus
        self.presence = presence
        self.clock = clock
        self.default_capacity = default_capacity
        self.history_len = history_len
        self.reserve_ttl = reserve_ttl
        self.limits = limits
        self.post_rate = post_rate   # messages a second per sender (0: no limit)
        self._rosters: dict[str, Roster] = {}
        self._resyncing: Shared | None = None
        if presence is not None:
            presence.on_dead(self._connection_died)

    # -- rooms --------------------------------------------------------------

    async def create(self, name: str, *, creator_id: int | None = None,
                     capacity: int | None = None, cover: str = "") -> tuple[Room, bool]:
        """Create a room unless it exists; returns it and whether it is new."""
        check_name(name)
        cap = self.default_capacity if capacity is None else max(int(capacity), 0)
        k = room_keys(name)
        created = await self.store.eval(
            CREATE, [k["room"], keys.room_index()],
            [name, str(cap), "" if creator_id is None else str(creator_id), cover or "",
             repr(self.clock.seconds())])
        room = await self.get(name)
        return room, bool(created)

    async def get(self, name: str) -> Room | None:
        try:
            check_name(name)
        except InvalidInput:
            return None
        k = room_keys(name)
        h = await self.store.hgetall(k["room"])
        if not h:
            return None
        return Room(name=name, capacity=_int_or_none(h.get("capacity")) or 0,
                    creator_id=_int_or_none(h.get("creator_id")), cover=h.get("cover", ""),
                    created=float(h.get("created") or 0), population=await self.population(name))

    async def list(self) -> list[Room]:
        """Every room, oldest first."""
        names = await self.store.execute("ZRANGE", keys.room_index(), 0, -1) or []
        rooms = await defer.gatherResults(
            [defer.ensureDeferred(self.get(n)) for n in names], consumeErrors=True)
        return [r for r in rooms if r is not None]

    async def population(self, name: str) -> int:
        k = room_keys(name)
        return int(await self.store.eval(POPULATION, [k["occ"], k["resv"]],
                                         [repr(self.clock.seconds())]))

    async def set_cover(self, name: str, cover: str) -> None:
        k = room_keys(name)
        if not await self.store.execute("EXISTS", k["room"]):
            raise RoomNotFound()
        await self.store.execute("HSET", k["room"], "cover", cover)

    # -- reservations (003 HTTP enter/exit) -----------------------------------

    async def reserve(self, name: str, user_id: int) -> int:
        """Hold a place for a user; returns the population. RoomFull, RoomNotFound."""
        check_name(name)
        k = room_keys(name)
        status, population = await self.store.eval(
            RESERVE, [k["room"], k["occ"], k["resv"]],
            [str(user_id), repr(self.clock.seconds()), repr(self.reserve_ttl)])
        if status == -1:
            raise RoomNotFound()
        if status == -2:
            raise RoomFull()
        return int(population)

    async def release(self, name: str, user_id: int) -> int:
        """Give a reserved place back; returns the population. NotReserved, RoomNotFound."""
        check_name(name)
        k = room_keys(name)
        status, population = await self.store.eval(
            RELEASE, [k["room"], k["occ"], k["resv"]],
            [str(user_id), repr(self.clock.seconds())])
        if status == -1:
            raise RoomNotFound()
        if status == -3:
            raise NotReserved()
        return int(population)

    # -- membership -----------------------------------------------------------

    async def join(self, name: str, member: Member, conn_id: str, dialect: str, *,
                   capacity: int | None = None, create: bool = True,
                   cover: str = "") -> JoinResult:
        """
        Put a connection in a room (creating the room with ``capacity`` if
        ``create``). Raises RoomFull, RoomNotFound, AlreadyJoined.
        """
        check_name(name)
        cap = self.default_capacity if capacity is None else max(int(capacity), 0)
        now = self.clock.seconds()
        k = room_keys(name)
        status, created, first, population, *rest = await self.store.eval(
            JOIN, [k["room"], keys.room_index(), k["conns"], k["occ"], k["resv"],
                   keys.conn_rooms(conn_id), k["log"]],
            [name, conn_id, _entry(member, conn_id, dialect, now), member.occupant(conn_id),
             "1" if create else "0", str(cap),
             "" if member.user_id is None else str(member.user_id), cover or "", repr(now),
             repr(self.reserve_ttl)])
        if status == -1:
            raise RoomNotFound()
        if status == -2:
            raise RoomFull()
        if status == 1:
            raise AlreadyJoined()
        seq, position = int(rest[0]), str(rest[1])
        room = await self.get(name)
        await self.bus.publish(topic(name), JOINED, {
            "room": name, "conn_id": conn_id, "member": member.to_dict(),
            "dialect": dialect, "created": bool(created), "first": bool(first),
            "population": int(population), "rebind": False, "previous": None, "seq": seq})
        return JoinResult(room=room, created=bool(created), population=int(population),
                          first=bool(first), position=position, seq=seq)

    async def leave(self, name: str, conn_id: str, reason: str = "leave") -> Member | None:
        """Take a connection out of a room; the member it was, or None if it was not in."""
        try:
            check_name(name)
        except InvalidInput:
            return None
        k = room_keys(name)
        reply = await self.store.eval(
            LEAVE, [k["conns"], k["occ"], k["resv"], keys.conn_rooms(conn_id), k["room"]],
            [name, conn_id, repr(self.clock.seconds()), repr(self.reserve_ttl)])
        if not reply:
            return None
        entry, population, seq = reply
        member, dialect = _parse_entry(entry)
        await self.bus.publish(topic(name), LEFT, {
            "room": name, "conn_id": conn_id, "member": member.to_dict(),
            "dialect": dialect, "reason": reason, "population": int(population),
            "seq": int(seq)})
        return member

    async def leave_all(self, conn_id: str, reason: str = "close") -> list[tuple[str, Member]]:
        """Take a connection out of every room it is in (disconnect, process death)."""
        left = []
        for name in await self.rooms_of(conn_id):
            member = await self.leave(name, conn_id, reason)
            if member is not None:
                left.append((name, member))
        await self.store.execute("DEL", keys.conn_rooms(conn_id))
        return left

    async def rebind(self, name: str, conn_id: str, member: Member, dialect: str, *,
                     reason: str = "logout") -> Member | None:
        """
        Change who a connection is in a room (a 000 login or logout on an open
        connection). Publishes ``room.member_left`` (``reason``) for the old
        member unless it was a guest, then ``room.member_joined`` (``rebind``
        true) for the new one unless it is a guest. Returns the old member,
        or None if the connection is not in the room.
        """
        check_name(name)
        k = room_keys(name)
        now = self.clock.seconds()
        reply = await self.store.eval(
            REBIND, [k["conns"], k["occ"], k["resv"], k["room"]],
            [conn_id, _entry(member, conn_id, dialect, now),
             member.occupant(conn_id), repr(now), repr(self.reserve_ttl)])
        if not reply:
            return None
        entry, population, seq = reply
        seq = int(seq)
        old, _ = _parse_entry(entry)
        if not old.is_guest:
            # "rebind": the connection stays in the room (as a guest if no join follows)
            await self.bus.publish(topic(name), LEFT, {
                "room": name, "conn_id": conn_id, "member": old.to_dict(),
                "dialect": dialect, "reason": reason, "population": int(population),
                "rebind": True, "seq": seq - 1})
        if not member.is_guest:
            await self.bus.publish(topic(name), JOINED, {
                "room": name, "conn_id": conn_id, "member": member.to_dict(),
                "dialect": dialect, "created": False, "first": False,
                "population": int(population), "rebind": True, "previous": old.to_dict(),
                "seq": seq})
        return old

    async def members(self, name: str) -> list[tuple[str, Member]]:
        """(conn_id, member) of every connection in the room, in join order."""
        k = room_keys(name)
        h = await self.store.hgetall(k["conns"])
        rows = []
        for conn_id, entry in h.items():
            record = json.loads(entry.split("|", 1)[1])
            rows.append((record.get("t", 0), conn_id, Member.from_dict(record.get("m") or {})))
        rows.sort(key=lambda r: (r[0], r[1]))
        return [(conn_id, member) for _, conn_id, member in rows]

    async def member(self, name: str, conn_id: str) -> Member | None:
        entry = await self.store.execute("HGET", room_keys(name)["conns"], conn_id)
        return _parse_entry(entry)[0] if entry else None

    async def rooms_of(self, conn_id: str) -> list[str]:
        return sorted(await self.store.execute("SMEMBERS", keys.conn_rooms(conn_id)) or [])

    # -- chat -----------------------------------------------------------------

    async def post(self, name: str, sender: Member, text: str, *, dialect: str,
                   conn_id: str | None = None, extra: dict | None = None) -> RoomMessage:
        """Append a message to the room's log, then publish it. TooFast past ``post_rate``."""
        check_name(name)
        if self.limits is not None and self.post_rate > 0:
            who = (f"u{sender.user_id}" if sender.user_id is not None
                   else f"c{conn_id or sender.name}")
            if not await self.limits.allow("room-post", who, self.post_rate, 1):
                raise TooFast()
        ts = self.clock.seconds()
        extra = dict(extra or {})
        msg = RoomMessage(id=ID_MARK, ts=ts, room=name, sender=sender, text=text,
                          dialect=dialect, extra=extra, conn_id=conn_id)
        # stored and published by one script: every process sees a room's
        # messages in the order of its log
        channel, head, tail = self.bus.published_by_script(topic(name), MESSAGE, msg.to_dict())
        msg.id = await self.store.eval(POST, [room_keys(name)["log"]], [
            str(self.history_len), json.dumps(sender.to_dict(), ensure_ascii=False), text,
            dialect, repr(ts), conn_id or "", json.dumps(extra, ensure_ascii=False),
            channel, head, tail])
        return msg

    async def history(self, name: str, limit: int = 200) -> list[RoomMessage]:
        """The room's latest messages, newest first."""
        try:
            check_name(name)
        except InvalidInput:
            return []
        rows = await self.store.execute("XREVRANGE", room_keys(name)["log"], "+", "-",
                                        "COUNT", str(max(int(limit), 0) or 1)) or []
        out = _messages(name, rows)
        return out[:limit] if limit > 0 else []

    async def since(self, name: str, after: str | tuple[int, int],
                    limit: int | None = None) -> list[RoomMessage]:
        """The room's messages after the id ``after``, oldest first (at most ``limit``)."""
        try:
            check_name(name)
        except InvalidInput:
            return []
        key = after if isinstance(after, tuple) else id_key(after)
        rows = await self.store.execute("XRANGE", room_keys(name)["log"], _after(key), "+",
                                        "COUNT", str(limit or self.history_len)) or []
        return _messages(name, rows)

    # -- catching up after a lost bus link --------------------------------------

    def track(self, name: str) -> None:
        """A session of this process is in ``name``: keep a roster of it (nests)."""
        roster = self._rosters.get(name)
        if roster is None:
            roster = self._rosters[name] = Roster(name)
            roster.sink = self.bus.listen(topic(name), roster.apply)
            d = defer.ensureDeferred(self._load(roster, roster.sink.ready))
            d.addErrback(lambda f: log.failure("roster of {room} not loaded", f, room=name))
        roster.users += 1

    def untrack(self, name: str) -> None:
        roster = self._rosters.get(name)
        if roster is None:
            return
        roster.users -= 1
        if roster.users <= 0:
            del self._rosters[name]
            self.bus.unsubscribe(topic(name), roster.sink)

    def tracked(self) -> list[str]:
        return sorted(self._rosters)

    async def _read_roster(self, name: str) -> tuple[int, int, dict]:
        k = room_keys(name)
        seq, population, flat = await self.store.eval(ROSTER, [k["room"], k["conns"], k["occ"]])
        conns = {}
        for conn_id, entry in zip(flat[::2], flat[1::2]):
            try:
                member, dialect, t = _parse_record(entry)
            except (ValueError, IndexError):
                continue
            conns[conn_id] = (member.to_dict(), dialect, t)
        return int(seq), int(population), conns

    async def _load(self, roster: "Roster", subscribed) -> None:
        await subscribed  # events from now on reach the roster: none is missed
        await self._reload(roster)

    async def _reload(self, roster: "Roster") -> tuple[int, int, dict]:
        """Read the room's membership into its roster; returns what was read."""
        try:
            seq, population, conns = await self._read_roster(roster.room)
        except Exception:
            roster.failed()
            raise
        roster.load(seq, conns)
        return seq, population, conns

    def resync(self) -> defer.Deferred:
        """
        After the bus link came back: compare each tracked room's membership
        with its roster. Fires with a :class:`Resync`; calls while one is
        under way share it, so a process reads each room once.
        """
        if self._resyncing is None:
            d = defer.ensureDeferred(self._resync())
            if d.called:
                return Shared(d).get()

            def done(result):
                # before the waiters hear of it: one of them may start the next resync
                self._resyncing = None
                return result

            d.addBoth(done)
            self._resyncing = Shared(d)
        return self._resyncing.get()

    async def _resync(self) -> "Resync":
        rosters = [r for r in self._rosters.values()]
        results = await defer.DeferredList(
            [defer.ensureDeferred(self._resync_room(r)) for r in rosters], consumeErrors=True)
        changes = {}
        for roster, (ok, change) in zip(rosters, results):
            if ok and change is not None:
                changes[roster.room] = change
            elif not ok:
                log.warn("resync of room {room} failed: {e}", room=roster.room,
                         e=change.getErrorMessage())
        return Resync(self, changes)

    async def _resync_room(self, roster: "Roster") -> "RosterChange | None":
        before = roster.begin()
        seq, population, conns = await self._reload(roster)
        if before is None:
            return None  # never loaded: nothing to compare with
        return RosterChange(roster.room, seq,
                            _differences(roster.room, before, conns, seq, population,
                                         self.clock.seconds()))

    # -- process death --------------------------------------------------------

    def _connection_died(self, record: dict):
        conn_id = record.get("conn_id")
        if not conn_id:
            return None
        return defer.ensureDeferred(self.leave_all(conn_id, reason="timeout"))


def _messages(name: str, rows) -> list[RoomMessage]:
    """Stream rows ``[[id, [field, value, …]], …]`` as messages (unreadable ones left out)."""
    out = []
    for msg_id, flat in rows:
        f = dict(zip(flat[::2], flat[1::2]))
        try:
            sender = Member.from_dict(json.loads(f.get("s") or "{}"))
            extra = json.loads(f.get("x") or "{}")
        except ValueError:
            continue
        out.append(RoomMessage(id=msg_id, ts=float(f.get("ts") or 0), room=name,
                               sender=sender, text=f.get("t", ""), dialect=f.get("d", ""),
                               extra=extra, conn_id=f.get("c") or None))
    return out


# -- catching up after a lost bus link ------------------------------------------

class Shared:
    """One result awaited by many: each :meth:`get` is a new Deferred for it."""

    _PENDING = object()

    def __init__(self, d: defer.Deferred):
        self._result = self._PENDING
        self._waiters: list[defer.Deferred] = []
        d.addBoth(self._fired)

    def _fired(self, result):
        self._result = result
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            self._give(w)
        return None

    def _give(self, w: defer.Deferred) -> None:
        if isinstance(self._result, Failure):
            w.errback(self._result)
        else:
            w.callback(self._result)

    def get(self) -> defer.Deferred:
        w = defer.Deferred()
        if self._result is self._PENDING:
            self._waiters.append(w)
        else:
            self._give(w)
        return w


class Roster:
    """
    This process's picture of who is in a room: each connection's member, as
    the member events this process received say, and the sequence number of
    the last one. It is what the sessions here were shown, so after a lost
    bus link its difference from Redis is what they missed.
    """

    def __init__(self, room: str):
        self.room = room
        self.users = 0          # sessions of this process that track the room
        self.sink = None        # the bus listener feeding it
        self.seq = -1
        self.conns: dict[str, tuple[dict, str, float]] = {}  # conn -> member, dialect, since
        self.loaded = False
        self._pending: list | None = []  # events that came while Redis was being read

    def apply(self, event) -> None:
        if event.kind != JOINED and event.kind != LEFT:
            return
        if self._pending is not None:
            self._pending.append(event)
        elif self.loaded:
            self._apply(event)

    def _apply(self, event) -> None:
        data = event.data
        try:
            seq = int(data["seq"])
        except (KeyError, TypeError, ValueError):
            seq = None
        if seq is not None:
            if seq <= self.seq:
                return  # already in the picture (read from Redis after it happened)
            self.seq = seq
        conn = data.get("conn_id")
        if not conn:
            return
        member = Member.from_dict(data.get("member") or {}).to_dict()
        dialect = data.get("dialect", "")
        if event.kind == JOINED:
            since = self.conns.get(conn, (None, None, event.ts))[2]
            self.conns[conn] = (member, dialect, since)
        elif data.get("rebind"):
            # the connection stays, as a guest unless a join of the new member follows
            since = self.conns.get(conn, (None, None, event.ts))[2]
            self.conns[conn] = (Member.guest().to_dict(), dialect, since)
        else:
            self.conns.pop(conn, None)

    def begin(self) -> dict | None:
        """A re-read starts: the picture so far (None if there is none yet); events wait."""
        before = dict(self.conns) if self.loaded else None
        if self._pending is None:
            self._pending = []
        return before

    def load(self, seq: int, conns: dict) -> None:
        """What Redis says at ``seq``; then the events that came meanwhile, if newer."""
        if not self.loaded or seq >= self.seq:
            self.conns, self.seq, self.loaded = dict(conns), seq, True
        pending, self._pending = self._pending or [], None
        for event in pending:
            self._apply(event)

    def failed(self) -> None:
        """A read failed: go on from the picture so far (an unloaded roster stays so)."""
        pending, self._pending = self._pending or [], None
        if self.loaded:
            for event in pending:
                self._apply(event)


def _differences(room: str, before: dict, after: dict, seq: int, population: int,
                 now: float) -> list[Event]:
    """Member events that take a picture ``before`` to ``after`` (lefts first, then joins)."""
    events = []
    for _, conn, member, dialect in sorted(
            (since, conn, member, dialect) for conn, (member, dialect, since) in before.items()):
        current = after.get(conn)
        if current is None or (current[0] != member and not Member.from_dict(member).is_guest):
            events.append(Event(topic(room), LEFT, {
                "room": room, "conn_id": conn, "member": member, "dialect": dialect,
                "reason": "resync", "population": population, "seq": seq, "resync": True},
                ts=now))
    for since, conn, member, dialect in sorted(
            (since, conn, member, dialect) for conn, (member, dialect, since) in after.items()):
        old = before.get(conn)
        if old is None or (old[0] != member and not Member.from_dict(member).is_guest):
            events.append(Event(topic(room), JOINED, {
                "room": room, "conn_id": conn, "member": member, "dialect": dialect,
                "created": False, "first": False, "population": population,
                "rebind": old is not None, "previous": old[0] if old is not None else None,
                "seq": seq, "resync": True}, ts=now))
    return events


@dataclass
class RosterChange:
    room: str
    seq: int                 # the membership sequence number the change brings a session to
    events: list             # bus Events (member left/joined) that bring a picture up to date


class Resync:
    """What :meth:`Rooms.resync` found, shared by every session of the process."""

    def __init__(self, rooms: Rooms, changes: dict[str, RosterChange]):
        self.rooms = rooms
        self.changes = changes
        self._reads: dict[tuple, Shared] = {}

    def missed(self, name: str, after: tuple[int, int]) -> defer.Deferred:
        """The room's messages after ``after`` as bus Events; read once per position."""
        shared = self._reads.get((name, after))
        if shared is None:
            shared = self._reads[(name, after)] = Shared(
                defer.ensureDeferred(self._read(name, after)))
        return shared.get()

    async def _read(self, name: str, after: tuple[int, int]) -> list[Event]:
        return [Event(topic(name), MESSAGE, m.to_dict(), ts=m.ts)
                for m in await self.rooms.since(name, after)]


class RoomFeed:
    """
    What one session was shown of its rooms, and its catch-up after a lost
    bus link.

    The session tells it which rooms it :meth:`entered` (with the join's
    :class:`JoinResult`) and :meth:`left`, and passes every bus event through
    :meth:`admit` before showing it. When the link comes back the dialect
    calls :meth:`hold` at once (events from then on wait) and queues
    :meth:`catch_up`, which shows, per room, the messages after the newest
    one the session was shown, the membership changes it missed, and then the
    held events, leaving out those already shown. Messages shown by a
    catch-up are remembered for ``CAUGHT_FOR`` seconds, in case a late copy
    still comes over the bus.
    """

    CAUGHT_FOR = 60.0

    def __init__(self, rooms: Rooms, clock, *, roster: bool = True):
        self.rooms = rooms
        self.clock = clock
        self.roster = roster     # track room rosters (dialects that show membership)
        self.positions: dict[str, tuple[int, int] | None] = {}
        self._held: list | None = None
        self._holds = 0
        self._caught: set[str] = set()
        self._caught_until = 0.0
        self._seqs: dict[str, int] = {}

    def entered(self, name: str, result: JoinResult | None = None) -> None:
        if name not in self.positions and self.roster:
            self.rooms.track(name)
        pos = id_key(result.position) if result is not None else None
        old = self.positions.get(name)
        self.positions[name] = max(old, pos) if old is not None and pos is not None \
            else (pos if pos is not None else old)

    def left(self, name: str) -> None:
        if name in self.positions:
            del self.positions[name]
            if self.roster:
                self.rooms.untrack(name)

    def close(self) -> None:
        for name in list(self.positions):
            self.left(name)
        self._held = None

    def admit(self, event, wire) -> bool:
        """Whether the session should show this bus event now (it may be held, or a copy)."""
        if self._held is not None:
            self._held.append((event, wire))
            return False
        if event.kind == MESSAGE:
            return self._fresh(event.data)
        return True

    def _fresh(self, data: dict) -> bool:
        msg_id = data.get("id")
        if self._caught:
            if self.clock.seconds() > self._caught_until:
                self._caught.clear()
            elif msg_id in self._caught:
                return False
        name = data.get("room")
        if msg_id and name in self.positions:
            key, pos = id_key(msg_id), self.positions[name]
            if pos is None or key > pos:
                self.positions[name] = key
        return True

    def hold(self) -> None:
        self._holds += 1
        if self._held is None:
            self._held = []

    async def catch_up(self, resync: defer.Deferred, codec, show) -> None:
        """
        Show what the bus dropped, then what was held. ``resync`` is a
        Deferred from :meth:`Rooms.resync`; ``show(event, wire)`` is the
        session's own delivery, ``codec`` its bus codec.
        """
        try:
            found = await resync
            for name in list(self.positions):
                pos = self.positions.get(name)
                if pos is not None:
                    for event in await found.missed(name, pos):
                        if name not in self.positions:
                            break
                        msg_id = event.data["id"]
                        self._caught.add(msg_id)
                        key = id_key(msg_id)
                        if self.positions[name] is None or key > self.positions[name]:
                            self.positions[name] = key
                        _show(codec, show, event)
                change = found.changes.get(name)
                if change is not None and name in self.positions:
                    self._seqs[name] = change.seq
                    for event in change.events:
                        _show(codec, show, event)
        except Exception:
            log.failure("catching up after the bus link came back failed")
        finally:
            self._release(show)

    def _release(self, show) -> None:
        self._holds = max(self._holds - 1, 0)
        if self._holds > 0 or self._held is None:
            return
        held, self._held = self._held, None
        self._caught_until = self.clock.seconds() + self.CAUGHT_FOR
        seqs, self._seqs = self._seqs, {}
        for event, wire in held:
            if event.kind == JOINED or event.kind == LEFT:
                seen = seqs.get(event.data.get("room"))
                seq = event.data.get("seq")
                if seen is not None and isinstance(seq, int) and seq <= seen:
                    continue  # the membership read already covered it
            if self.admit(event, wire):
                show(event, wire)


def _show(codec, show, event) -> None:
    wire = event.wire(codec)
    if wire is not None:
        show(event, wire)
