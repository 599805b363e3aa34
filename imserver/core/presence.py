"""
Presence: which connections are open, on which process, for which user.

Every connection gets an id of 20 hex digits (the form 000's ``client_id``
has): 12 digits of the process id and an 8-digit counter, unique across the
processes of a deployment. A record per connection and a set per user live in
Redis, so any process can ask whether a user is online anywhere.

Each process refreshes a heartbeat key with a short expiry. A reaper on every
process looks for processes whose heartbeat has expired; the first to claim a
dead process (atomically, in Lua) removes its connections and tells the
``on_dead`` callbacks (rooms, the KTV stage) about each one, so members of a
crashed process leave their rooms within the heartbeat timeout.
"""

from __future__ import annotations

import json

from twisted.internet import defer, task
from twisted.logger import Logger

from imserver.store import keys
from imserver.store.scripts import Script

log = Logger()

# KEYS: procs hash, alive key, conns set of the process. ARGV: pid.
# Claims a dead process for reaping: only one reaper gets 1.
CLAIM_DEAD = Script("claim_dead_process", """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
local conns = redis.call('SMEMBERS', KEYS[3])
redis.call('DEL', KEYS[3])
return conns
""")


# KEYS: the connection's hash, the process's connections, the user's
# connections (absent for a connection without a user). ARGV: the connection
# id, then the hash's field/value pairs. Registers a connection in one step.
CONNECT = Script("presence_connect", """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SADD', KEYS[2], ARGV[1])
if KEYS[3] then redis.call('SADD', KEYS[3], ARGV[1]) end
return 1
""")

# KEYS: the connection's hash, the process's connections. ARGV: the
# connection id, and the user's connections key before and after the user
# id (the hash names the user). Forgets a connection in one step.
DISCONNECT = Script("presence_disconnect", """
local uid = redis.call('HGET', KEYS[1], 'user_id')
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
if uid then redis.call('SREM', ARGV[2] .. uid .. ARGV[3], ARGV[1]) end
return uid
""")

_UID = "\x00"
_USER_CONNS = tuple(keys.user_conns(_UID).split(_UID))   # the key around a user id


def conn_prefix(process_id: str) -> str:
    """The first 12 characters of every connection id of a process."""
    return f"{process_id[:12]:0>12}"


class Presence:
    def __init__(self, store, clock, process_id: str, heartbeat: float = 5.0,
                 dead_after: float = 15.0):
        self.store = store
        self.clock = clock
        self.process_id = process_id
        self.heartbeat = heartbeat
        self.dead_after = dead_after
        self._counter = 0
        self._dead_callbacks = []
        self._loop: task.LoopingCall | None = None

    def new_conn_id(self) -> str:
        self._counter = (self._counter + 1) % (1 << 32)
        return f"{conn_prefix(self.process_id)}{self._counter:08x}"

    def on_dead(self, callback) -> None:
        """``callback(record)`` (may return a Deferred) for each connection of a dead process."""
        self._dead_callbacks.append(callback)

    async def connect(self, conn_id: str, user_id, dialect: str, info: dict | None = None):
        fields = ["process", self.process_id, "dialect", dialect,
                  "since", repr(self.clock.seconds()), "info", json.dumps(info or {})]
        where = [keys.conn(conn_id), keys.process_conns(self.process_id)]
        if user_id is not None:
            fields += ["user_id", user_id]
            where.append(keys.user_conns(user_id))
        await self.store.eval(CONNECT, where, [conn_id, *fields])

    async def bind_user(self, conn_id: str, user_id) -> None:
        old = await self.store.execute("HGET", keys.conn(conn_id), "user_id")
        if old and str(old) != str(user_id):
            await self.store.execute("SREM", keys.user_conns(old), conn_id)
        if user_id is None:
            await self.store.execute("HDEL", keys.conn(conn_id), "user_id")
            return
        await self.store.execute("HSET", keys.conn(conn_id), "user_id", user_id)
        await self.store.execute("SADD", keys.user_conns(user_id), conn_id)

    async def disconnect(self, conn_id: str) -> None:
        await self.store.eval(DISCONNECT, [keys.conn(conn_id), keys.process_conns(self.process_id)],
                              [conn_id, *_USER_CONNS])

    async def record(self, conn_id: str) -> dict:
        h = await self.store.hgetall(keys.conn(conn_id))
        if h:
            h["conn_id"] = conn_id
            h["info"] = json.loads(h.get("info") or "{}")
        return h

    async def connections_of(self, user_id) -> list[str]:
        return sorted(await self.store.execute("SMEMBERS", keys.user_conns(user_id)) or [])

    async def is_online(self, user_id) -> bool:
        return bool(await self.store.execute("SCARD", keys.user_conns(user_id)))

    # -- process liveness ----------------------------------------------------

    def start(self) -> defer.Deferred:
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.clock
        d = self._loop.start(self.heartbeat, now=True)
        d.addErrback(lambda f: log.failure("presence loop stopped", f))
        return d

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    async def shutdown(self) -> None:
        """Clean exit: drop this process's connections now rather than after expiry."""
        self.stop()
        conns = await self.store.execute("SMEMBERS", keys.process_conns(self.process_id)) or []
        for conn_id in conns:
            await self.disconnect(conn_id)
        await self.store.execute("HDEL", keys.processes(), self.process_id)
        await self.store.execute("DEL", keys.process_alive(self.process_id),
                                 keys.process_conns(self.process_id))

    def tick(self) -> defer.Deferred:
        return defer.ensureDeferred(self._tick()).addErrback(
            lambda f: log.warn("presence heartbeat failed: {e}", e=f.getErrorMessage()))

    async def _tick(self) -> None:
        await self.store.execute("SET", keys.process_alive(self.process_id), "1",
                                 "PX", int(self.dead_after * 1000))
        await self.store.execute("HSET", keys.processes(), self.process_id,
                                 repr(self.clock.seconds()))
        await self.reap()

    async def reap(self) -> int:
        """Remove the connections of dead processes; returns how many were removed."""
        removed = 0
        for pid in await self.store.execute("HKEYS", keys.processes()) or []:
            if pid == self.process_id:
                continue
            conns = await self.store.eval(
                CLAIM_DEAD, [keys.processes(), keys.process_alive(pid), keys.process_conns(pid)],
                [pid])
            if not conns or conns == 0:
                continue
            log.warn("process {pid} stopped answering; removing its {n} connections",
                     pid=pid, n=len(conns))
            for conn_id in conns:
                rec = await self.record(conn_id)
                rec.setdefault("conn_id", conn_id)
                await self.store.execute("DEL", keys.conn(conn_id))
                if rec.get("user_id"):
                    await self.store.execute("SREM", keys.user_conns(rec["user_id"]), conn_id)
                for cb in self._dead_callbacks:
                    try:
                        await defer.maybeDeferred(cb, rec)
                    except Exception:
                        log.failure("dead-connection callback failed")
                removed += 1
        return removed
