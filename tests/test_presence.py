"""Presence: connection ids, who is online, and cleaning up after a dead process."""

import re

import pytest_twisted
from twisted.internet.task import Clock

from imserver.core.presence import Presence
from imserver.store import keys


def test_conn_ids_are_20_hex_and_unique():
    """Connection ids have GatewayWorker's 20-hex-digit form and differ per process."""
    a, b = Presence(None, Clock(), "a1b2c3d4e5f6"), Presence(None, Clock(), "0123456789ab")
    ids = {a.new_conn_id() for _ in range(1000)} | {b.new_conn_id() for _ in range(1000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"[0-9a-f]{20}", i) for i in ids)


@pytest_twisted.ensureDeferred
async def test_online_across_connections(store):
    """A user is online while any of their connections is open, on any process."""
    p1, p2 = Presence(store, Clock(), "aaaaaaaaaaaa"), Presence(store, Clock(), "bbbbbbbbbbbb")
    c1, c2, guest = p1.new_conn_id(), p2.new_conn_id(), p1.new_conn_id()
    await p1.connect(c1, 7, "signal")
    await p2.connect(c2, 7, "chat")
    await p1.connect(guest, None, "chat")
    assert await p1.is_online(7) and sorted(await p2.connections_of(7)) == sorted([c1, c2])
    assert (await p1.record(c1))["user_id"] == "7"
    await p1.disconnect(c1)
    assert await p1.is_online(7)
    # every trace of the connection goes in the one step
    assert await p1.record(c1) == {}
    assert await store.execute("SMEMBERS", keys.process_conns("aaaaaaaaaaaa")) == [guest]
    await p2.disconnect(c2)
    assert not await p1.is_online(7)
    await p1.bind_user(guest, 8)
    assert await p2.connections_of(8) == [guest]


@pytest_twisted.ensureDeferred
async def test_dead_process_connections_reaped_once(store):
    """When a process stops its heartbeat, another removes its connections and says so once."""
    dead_clock, live_clock = Clock(), Clock()
    dead = Presence(store, dead_clock, "deaddeaddead", heartbeat=1, dead_after=3)
    live1 = Presence(store, live_clock, "111111111111", heartbeat=1, dead_after=3)
    live2 = Presence(store, live_clock, "222222222222", heartbeat=1, dead_after=3)
    seen = []
    live1.on_dead(lambda rec: seen.append(("live1", rec["conn_id"], rec.get("user_id"))))
    live2.on_dead(lambda rec: seen.append(("live2", rec["conn_id"], rec.get("user_id"))))
    await dead._tick()
    conn = dead.new_conn_id()
    await dead.connect(conn, 42, "ktv", {"room": "R1"})
    assert await live1.reap() == 0  # still alive
    await store.execute("DEL", "im:proc:deaddeaddead:alive")  # its heartbeat expired
    removed = await live1.reap() + await live2.reap()
    assert removed == 1
    assert [s[1:] for s in seen] == [(conn, "42")]
    assert not await live1.is_online(42)
