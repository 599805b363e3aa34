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

Every change is published on the bus topic ``room:<name>`` as one of

- ``room.member_joined`` ``{room, conn_id, member, dialect, created, first,
  population, rebind, previous}``
- ``room.member_left`` ``{room, conn_id, member, dialect, reason,
  population}`` (reason ``leave``, ``close``, ``logout`` or ``timeout``)
- ``room.message`` ``{room, id, ts, sender, text, dialect, conn_id, extra}``

with ``member``/``sender`` as :meth:`Member.to_dict`. Each dialect renders
these in its own wire format; ``dialect`` says where the change came from and
``extra`` carries dialect-specific fields.

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

from imserver.core.errors import Conflict, Forbidden, InvalidInput, NotFound
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


def topic(name: str) -> str:
    return f"room:{name}"


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

# KEYS: room, index, conns, occ, resv, conn_rooms.
# ARGV: name, conn_id, entry, occupant, create, capacity, creator, cover, now, ttl.
# -> {status, created, first, population}; status 0 ok, 1 this connection is
# already in, -1 no such room, -2 full.
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
return {0, created, first, redis.call('HLEN', KEYS[4])}
""")

# KEYS: conns, occ, resv, conn_rooms. ARGV: name, conn_id, now, ttl.
# -> {entry, population} or nil if the connection was not in the room.
LEAVE = Script("rooms_leave", _LUA_LIB + """
redis.call('SREM', KEYS[4], ARGV[1])
local entry = redis.call('HGET', KEYS[1], ARGV[2])
if not entry then return false end
redis.call('HDEL', KEYS[1], ARGV[2])
release(KEYS[2], KEYS[3], occupant_of(entry), ARGV[3], ARGV[4])
prune(KEYS[2], KEYS[3], ARGV[3])
return {entry, redis.call('HLEN', KEYS[2])}
""")

# KEYS: conns, occ, resv. ARGV: conn_id, new entry, new occupant, now, ttl.
# Replaces the member a connection is (000 login/logout on an open
# connection). A swap never raises the population, so no capacity check.
# -> {old entry, population} or nil.
REBIND = Script("rooms_rebind", _LUA_LIB + """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then return false end
local old = occupant_of(entry)
if old ~= ARGV[3] then
  hold(KEYS[2], KEYS[3], ARGV[3])
  release(KEYS[2], KEYS[3], old, ARGV[4], ARGV[5])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {entry, redis.call('HLEN', KEYS[2])}
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


def _entry(member: Member, conn_id: str, dialect: str, now: float) -> str:
    record = {"m": member.to_dict(), "d": dialect, "t": now}
    return member.occupant(conn_id) + "|" + json.dumps(record, ensure_ascii=False,
                                                      separators=(",", ":"))


def _parse_entry(entry) -> tuple[Member, str]:
    if isinstance(entry, bytes):
        entry = entry.decode("utf-8", "replace")
    record = json.loads(entry.split("|", 1)[1])
    return Member.from_dict(record.get("m") or {}), record.get("d", "")


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class Rooms:
    """The rooms service: membership, capacity, chat history and room events."""

    def __init__(self, store, bus, presence, clock, default_capacity: int = 10,
                 history_len: int = 500, reserve_ttl: float = 120.0):
        self.store = store
        self.bus = bus
        self.presence = presence
        self.clock = clock
        self.default_capacity = default_capacity
        self.history_len = history_len
        self.reserve_ttl = reserve_ttl
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
        status, created, first, population = await self.store.eval(
            JOIN, [k["room"], keys.room_index(), k["conns"], k["occ"], k["resv"],
                   keys.conn_rooms(conn_id)],
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
        room = await self.get(name)
        await self.bus.publish(topic(name), "room.member_joined", {
            "room": name, "conn_id": conn_id, "member": member.to_dict(),
            "dialect": dialect, "created": bool(created), "first": bool(first),
            "population": int(population), "rebind": False, "previous": None})
        return JoinResult(room=room, created=bool(created), population=int(population),
                          first=bool(first))

    async def leave(self, name: str, conn_id: str, reason: str = "leave") -> Member | None:
        """Take a connection out of a room; the member it was, or None if it was not in."""
        try:
            check_name(name)
        except InvalidInput:
            return None
        k = room_keys(name)
        reply = await self.store.eval(
            LEAVE, [k["conns"], k["occ"], k["resv"], keys.conn_rooms(conn_id)],
            [name, conn_id, repr(self.clock.seconds()), repr(self.reserve_ttl)])
        if not reply:
            return None
        entry, population = reply
        member, dialect = _parse_entry(entry)
        await self.bus.publish(topic(name), "room.member_left", {
            "room": name, "conn_id": conn_id, "member": member.to_dict(),
            "dialect": dialect, "reason": reason, "population": int(population)})
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
            REBIND, [k["conns"], k["occ"], k["resv"]],
            [conn_id, _entry(member, conn_id, dialect, now),
             member.occupant(conn_id), repr(now), repr(self.reserve_ttl)])
        if not reply:
            return None
        entry, population = reply
        old, _ = _parse_entry(entry)
        if not old.is_guest:
            await self.bus.publish(topic(name), "room.member_left", {
                "room": name, "conn_id": conn_id, "member": old.to_dict(),
                "dialect": dialect, "reason": reason, "population": int(population)})
        if not member.is_guest:
            await self.bus.publish(topic(name), "room.member_joined", {
                "room": name, "conn_id": conn_id, "member": member.to_dict(),
                "dialect": dialect, "created": False, "first": False,
                "population": int(population), "rebind": True, "previous": old.to_dict()})
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
        """Append a message to the room's log, then publish it."""
        check_name(name)
        ts = self.clock.seconds()
        extra = dict(extra or {})
        msg_id = await self.store.execute(
            "XADD", room_keys(name)["log"], "MAXLEN", str(self.history_len), "*",
            "s", json.dumps(sender.to_dict(), ensure_ascii=False), "t", text,
            "d", dialect, "ts", repr(ts), "c", conn_id or "",
            "x", json.dumps(extra, ensure_ascii=False))
        msg = RoomMessage(id=msg_id, ts=ts, room=name, sender=sender, text=text,
                          dialect=dialect, extra=extra, conn_id=conn_id)
        await self.bus.publish(topic(name), "room.message", msg.to_dict())
        return msg

    async def history(self, name: str, limit: int = 200) -> list[RoomMessage]:
        """The room's latest messages, newest first."""
        try:
            check_name(name)
        except InvalidInput:
            return []
        rows = await self.store.execute("XREVRANGE", room_keys(name)["log"], "+", "-",
                                        "COUNT", str(max(int(limit), 0) or 1)) or []
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
        return out[:limit] if limit > 0 else []

    # -- process death --------------------------------------------------------

    def _connection_died(self, record: dict):
        conn_id = record.get("conn_id")
        if not conn_id:
            return None
        return defer.ensureDeferred(self.leave_all(conn_id, reason="timeout"))
