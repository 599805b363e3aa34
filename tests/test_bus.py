"""The bus: in-process sinks, cross-process delivery through Redis, encode once."""

import pytest_twisted
from twisted.internet import defer, reactor

from imserver.bus import Bus
from imserver.store.redis import Store, Subscription


class CountingCodec:
    def __init__(self, name):
        self.name = name
        self.encoded = 0

    def encode_event(self, event):
        self.encoded += 1
        return f"{self.name}:{event.kind}:{event.data['n']}"


class Sink:
    def __init__(self, codec, conn_id):
        self.codec = codec
        self.conn_id = conn_id
        self.got = []
        self.waiting = None

    def deliver(self, event, wire):
        self.got.append(wire if wire is not None else event.data)
        if self.waiting and not self.waiting.called:
            self.waiting.callback(None)

    async def wait(self, n, timeout=5):
        while len(self.got) < n:
            self.waiting = defer.Deferred()
            self.waiting.addTimeout(timeout, reactor)
            await self.waiting


async def make_bus(redis_url):
    store = Store(reactor, redis_url)
    bus = Bus(store, lambda m, r: Subscription(reactor, redis_url, m, r))
    await bus.subscription.whenReady()
    return store, bus


@pytest_twisted.ensureDeferred
async def test_encode_once_per_codec(bus):
    """Three sinks of one codec and one of another: two encodings, four deliveries."""
    a, b = CountingCodec("a"), CountingCodec("b")
    sinks = [Sink(a, "c1"), Sink(a, "c2"), Sink(a, "c3"), Sink(b, "c4")]
    for s in sinks:
        await bus.subscribe("room:R1", s)
    await bus.publish("room:R1", "room.message", {"n": 1})
    for s in sinks:
        await s.wait(1)
    assert (a.encoded, b.encoded) == (1, 1)
    assert sinks[0].got == ["a:room.message:1"] and sinks[3].got == ["b:room.message:1"]


@pytest_twisted.ensureDeferred
async def test_exclude_and_unsubscribe(bus):
    """The excluded connection gets nothing; an unsubscribed sink stops receiving."""
    codec = CountingCodec("a")
    s1, s2 = Sink(codec, "c1"), Sink(codec, "c2")
    await bus.subscribe("user:1", s1)
    await bus.subscribe("user:1", s2)
    await bus.publish("user:1", "x", {"n": 1}, exclude="c1")
    await s2.wait(1)
    bus.unsubscribe("user:1", s2)
    listener_got = []
    await bus.listen("user:1", lambda e: listener_got.append(e.data["n"])).ready
    await bus.publish("user:1", "x", {"n": 2})
    await s1.wait(1)
    await _sleep(0)  # the listener is called right after s1, in the same dispatch
    assert s1.got == ["a:x:2"] and s2.got == ["a:x:1"] and listener_got == [2]


@pytest_twisted.ensureDeferred
async def test_crosses_processes(redis_url):
    """An event published by one process reaches a sink in another, in publish order."""
    store1, bus1 = await make_bus(redis_url)
    store2, bus2 = await make_bus(redis_url)
    try:
        sink = Sink(None, None)
        await bus2.subscribe("group:7", sink)
        for n in range(20):
            await bus1.publish("group:7", "group.message", {"n": n})
        await sink.wait(20)
        assert [d["n"] for d in sink.got] == list(range(20))
    finally:
        for b, s in ((bus1, store1), (bus2, store2)):
            await b.close()
            await s.close()


@pytest_twisted.ensureDeferred
async def test_two_servers_share_events(start_server):
    """Two imserver processes on one Redis: an event from one reaches a subscriber of the other."""
    one = await start_server()
    two = await start_server()
    sink = Sink(None, None)
    await two.core.bus.subscribe("room:shared", sink)
    await one.core.bus.publish("room:shared", "room.message", {"text": "hello"})
    await sink.wait(1)
    assert sink.got == [{"text": "hello"}]


@pytest_twisted.ensureDeferred
async def test_resubscribes_after_link_loss(bus, store):
    """When Redis drops the pub/sub connection, subscriptions come back by themselves, and
    the resync hooks run once Redis has confirmed them all (a log read then misses
    nothing); meanwhile the channels count as not confirmed."""
    resynced = []
    bus.on_resync(lambda: resynced.append(dict(bus.subscription.channels)))
    sink = Sink(None, None)
    await bus.subscribe("room:R2", sink)
    await bus.subscribe("room:R3", Sink(None, None))
    await bus.publish("room:R2", "x", {"n": 1})
    await sink.wait(1)
    await store.execute("CLIENT", "KILL", "TYPE", "pubsub")
    pending = None
    for _ in range(100):
        if pending is None and bus.subscription.protocol is None:
            # the link is down: a subscription asked for now waits for the new link
            pending = bus.subscribe("room:R2", Sink(None, None))
            assert not pending.called
        if resynced:
            break
        await defer.ensureDeferred(_sleep(0.01))
    assert resynced == [{"im:bus:room:R2": None, "im:bus:room:R3": None}]
    assert pending is None or pending.called
    await bus.publish("room:R2", "x", {"n": 2})
    await sink.wait(2)
    assert [d["n"] for d in sink.got] == [1, 2]


async def _sleep(seconds):
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)
