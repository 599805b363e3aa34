"""
Friends: friend requests, mutual friendship, and the friend list with the
friends who are live right now first.

Data flow. ``request(a, b)`` records that user ``a`` asked user ``b``; both
see the request in their message list (``messages``), ``b`` as a request to
answer, ``a`` as one waiting for an answer. ``accept`` makes them friends on
both sides at once; deleting a pending request (by either side) withdraws or
declines it; deleting an answered one only hides it from the deleter's list.
When ``b`` asks ``a`` while ``a``'s request to ``b`` is pending, the two
requests meet and they become friends. ``remove`` ends a friendship on both
sides. Every change is one Lua script, so two requests crossing each other,
or an accept racing a delete, never leave one side a friend and the other not.
Each change is also published on the bus (``user:<id>`` of each party):
``friend.request``, ``friend.added``, ``friend.declined``, ``friend.removed``.

State in Redis (:mod:`imserver.store.keys`, section "account"):

- ``friends(uid)``: zset of friend ids, scored by when the friendship began (ms);
- ``friend_request(a, b)``: hash ``ts`` (ms, the request's identity),
  ``state`` (``pending`` | ``accepted``), ``accepted`` (ms);
- ``friend_messages(uid)``: zset of ``"<a>:<b>"`` requests the user still
  sees, scored by ``ts``.

The friend list asks the live rooms (:class:`imserver.core.live.LiveRooms`)
who is live now, on every call, so a friend who just went live is first in
the very next list.
"""

from __future__ import annotations

from dataclasses import dataclass

from imserver.core.errors import Conflict, InvalidInput, NotFound
from imserver.store import keys
from imserver.store.scripts import Script

MAX_MESSAGES = 200


class AlreadyFriends(Conflict):
    reason = "already friends"


class NoSuchRequest(NotFound):
    reason = "no such friend request"


class NotFriends(NotFound):
    reason = "not friends"


# KEYS: friends(a), friend_request(a, b), friend_request(b, a),
# friend_messages(a), friend_messages(b), friends(b). ARGV: a, b, now (ms).
# Returns {'friends'}, {'pending', ts} (a's request is already waiting),
# {'accepted', ts} (b had asked a: now friends) or {'requested', ts}.
REQUEST = Script("friend_request", """
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return {'friends'} end
if redis.call('HGET', KEYS[3], 'state') == 'pending' then
  redis.call('HSET', KEYS[3], 'state', 'accepted', 'accepted', ARGV[3])
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  redis.call('ZADD', KEYS[6], ARGV[3], ARGV[1])
  return {'accepted', redis.call('HGET', KEYS[3], 'ts')}
end
if redis.call('HGET', KEYS[2], 'state') == 'pending' then
  return {'pending', redis.call('HGET', KEYS[2], 'ts')}
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'ts', ARGV[3], 'state', 'pending')
local member = ARGV[1] .. ':' .. ARGV[2]
redis.call('ZADD', KEYS[4], ARGV[3], member)
redis.call('ZADD', KEYS[5], ARGV[3], member)
return {'requested', ARGV[3]}
""")

# KEYS: friend_request(a, b), friends(a), friends(b), friend_messages(a),
# friend_messages(b). ARGV: a, b, ts ('' = whatever the request's is), now.
# b accepts a's pending request. Returns 'ok', 'already' or 'missing'.
ACCEPT = Script("friend_accept", """
local ts = redis.call('HGET', KEYS[1], 'ts')
if not ts or (ARGV[3] ~= '' and ts ~= ARGV[3]) then return 'missing' end
if redis.call('HGET', KEYS[1], 'state') == 'accepted' then return 'already' end
redis.call('HSET', KEYS[1], 'state', 'accepted', 'accepted', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
local member = ARGV[1] .. ':' .. ARGV[2]
redis.call('ZADD', KEYS[4], ts, member)
redis.call('ZADD', KEYS[5], ts, member)
return 'ok'
""")

# KEYS: friend_request(a, b), friend_messages(me), friend_messages(other).
# ARGV: "<a>:<b>", ts ('' = any). A pending request is withdrawn/declined for
# both; an answered one is hidden from me (and forgotten once both hid it).
# Returns 'cancelled', 'hidden' or 'missing'.
DELETE = Script("friend_delete_message", """
local ts = redis.call('HGET', KEYS[1], 'ts')
if not ts or (ARGV[2] ~= '' and ts ~= ARGV[2]) then return 'missing' end
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 'missing' end
if redis.call('HGET', KEYS[1], 'state') == 'pending' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  return 'cancelled'
end
redis.call('ZREM', KEYS[2], ARGV[1])
if not redis.call('ZSCORE', KEYS[3], ARGV[1]) then redis.call('DEL', KEYS[1]) end
return 'hidden'
""")

# KEYS: friends(a), friends(b). ARGV: a, b. Returns 1 if they were friends.
UNFRIEND = Script("friend_remove", """
local was = redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
return was
""")

# KEYS: friend_request keys. Returns, per key, {ts, state} ({'', ''} if gone).
READ_REQUESTS = Script("friend_read_requests", """
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 'ts', 'state')
  out[i] = {v[1] or '', v[2] or ''}
end
return out
""")


@dataclass(frozen=True)
class FriendRequest:
    """A request as one user sees it: ``requester`` asked ``requestee`` at
    ``ts`` (ms); ``mine`` says whether the viewer is the requester."""
    requester: int
    requestee: int
    ts: int
    accepted: bool
    mine: bool

    @property
    def other(self) -> int:
        return self.requestee if self.mine else self.requester

    @property
    def flag(self) -> int:
        """Document 001's flag: requestee 0 pending / 1 accepted; requester 2 waiting / 3 agreed."""
        return (2 if self.mine else 0) + (1 if self.accepted else 0)


@dataclass(frozen=True)
class Friend:
    user_id: int
    since: int          # ms
    live: bool
    play_url: str


class Friends:
    def __init__(self, store, bus, clock, live=None):
        """``live`` answers ``await live.live_users(ids) -> {id: play_url}``
        (:class:`imserver.core.live.LiveRooms`); without it nobody is live."""
        self.store = store
        self.bus = bus
        self.clock = clock
        self.live = live

    def _now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    async def relation(self, me: int, other: int) -> int:
        """1 friend, 0 stranger, -1 the same user (document 001's search flag)."""
        if int(me) == int(other):
            return -1
        return 1 if await self.store.execute("ZSCORE", keys.friends(me), int(other)) else 0

    async def are_friends(self, a: int, b: int) -> bool:
        return await self.relation(a, b) == 1

    async def request(self, me: int, target: int) -> str:
        """``me`` asks ``target``; returns ``requested``, ``pending`` (asked
        before, still waiting) or ``accepted`` (``target`` had asked ``me``)."""
        me, target = int(me), int(target)
        if me == target:
            raise InvalidInput("cannot befriend oneself")
        now = self._now_ms()
        result = await self.store.eval(
            REQUEST, keys=[keys.friends(me), keys.friend_request(me, target),
                           keys.friend_request(target, me), keys.friend_messages(me),
                           keys.friend_messages(target), keys.friends(target)],
            args=[me, target, now])
        outcome = result[0]
        if outcome == "friends":
            raise AlreadyFriends()
        if outcome == "requested":
            await self.bus.publish(f"user:{target}", "friend.request",
                                   {"from": me, "to": target, "ts": int(result[1])})
        elif outcome == "accepted":
            await self._added(target, me)
        return outcome

    async def accept(self, me: int, requester: int, ts: int | None = None) -> bool:
        """``me`` accepts ``requester``'s request (of time ``ts``, if given);
        False when it was accepted already."""
        me, requester = int(me), int(requester)
        result = await self.store.eval(
            ACCEPT, keys=[keys.friend_request(requester, me), keys.friends(requester),
                          keys.friends(me), keys.friend_messages(requester),
                          keys.friend_messages(me)],
            args=[requester, me, "" if ts is None else int(ts), self._now_ms()])
        if result == "missing":
            raise NoSuchRequest()
        if result == "ok":
            await self._added(requester, me)
            return True
        return False

    async def delete_message(self, me: int, requester: int, requestee: int,
                             ts: int | None = None) -> str:
        """Delete the request ``requester`` -> ``requestee`` from ``me``'s list
        (``me`` being one of them); returns ``cancelled`` or ``hidden``."""
        me, requester, requestee = int(me), int(requester), int(requestee)
        if me not in (requester, requestee):
            raise NoSuchRequest()
        other = requestee if me == requester else requester
        result = await self.store.eval(
            DELETE, keys=[keys.friend_request(requester, requestee),
                          keys.friend_messages(me), keys.friend_messages(other)],
            args=[f"{requester}:{requestee}", "" if ts is None else int(ts)])
        if result == "missing":
            raise NoSuchRequest()
        if result == "cancelled":
            await self.bus.publish(f"user:{other}", "friend.declined",
                                   {"from": requester, "to": requestee, "by": me})
        return result

    async def remove(self, me: int, other: int) -> None:
        me, other = int(me), int(other)
        was = await self.store.eval(UNFRIEND, keys=[keys.friends(me), keys.friends(other)],
                                    args=[me, other])
        if not int(was):
            raise NotFriends()
        data = {"users": [me, other], "by": me}
        await self.bus.publish(f"user:{me}", "friend.removed", data)
        await self.bus.publish(f"user:{other}", "friend.removed", data)

    async def messages(self, me: int, limit: int = MAX_MESSAGES) -> list[FriendRequest]:
        """The requests ``me`` sees, newest first."""
        me = int(me)
        members = await self.store.execute("ZREVRANGE", keys.friend_messages(me), 0,
                                           max(1, min(limit, MAX_MESSAGES)) - 1) or []
        pairs = []
        for member in members:
            a, _, b = member.partition(":")
            pairs.append((int(a), int(b)))
        if not pairs:
            return []
        rows = await self.store.eval(
            READ_REQUESTS, keys=[keys.friend_request(a, b) for a, b in pairs])
        found = []
        for (a, b), (ts, state) in zip(pairs, rows):
            if not ts:
                continue
            found.append(FriendRequest(a, b, int(ts), state == "accepted", a == me))
        return found

    async def friend_ids(self, me: int) -> list[tuple[int, int]]:
        """(friend id, since ms), most recent friendship first."""
        flat = await self.store.execute("ZREVRANGE", keys.friends(int(me)), 0, -1,
                                        "WITHSCORES") or []
        it = iter(flat)
        return [(int(uid), int(float(score))) for uid, score in zip(it, it)]

    async def friend_list(self, me: int) -> list[Friend]:
        """Friends who are live now first, then the others; each group most
        recent friendship first."""
        ids = await self.friend_ids(me)
        live = await self.live.live_users([uid for uid, _ in ids]) if self.live and ids else {}
        friends = [Friend(uid, since, uid in live, live.get(uid, "")) for uid, since in ids]
        friends.sort(key=lambda f: not f.live)  # stable: keeps recency within each group
        return friends

    async def _added(self, requester: int, requestee: int) -> None:
        data = {"users": [requester, requestee], "from": requester, "to": requestee}
        await self.bus.publish(f"user:{requester}", "friend.added", data)
        await self.bus.publish(f"user:{requestee}", "friend.added", data)


__all__ = ["Friends", "Friend", "FriendRequest", "AlreadyFriends", "NoSuchRequest",
           "NotFriends"]
