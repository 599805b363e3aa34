"""The rooms core against a real Redis: membership, capacity, reservations, chat, events."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.task import deferLater

from imserver.core.presence import Presence
from imserver.core.rooms import (AlreadyJoined, Member, NotReserved, RoomFull, RoomNotFound,
                                 Rooms)
from imserver.core.errors import InvalidInput


def user(uid, name=None, level="user"):
    return Member(user_id=uid, name=name or f"u{uid}", avatar="a.png", phone=None,
                  username=name or f"u{uid}", level=level)


class Collector:
    def __init__(self, bus, name):
        self.events = []
        self.sink = bus.listen(f"room:{name}", self.events.append)

    async def wait(self, n, timeout=3.0):
        deadline = reactor.seconds() + timeout
        while len(self.events) < n:
            if reactor.seconds() > deadline:
                raise AssertionError(f"expected {n} events, got {self.events!r}")
            await deferLater(reactor, 0.01, lambda: None)
        return self.events

    def kinds(self):
        return [e.kind for e in self.events]


@pytest.fixture
def clock():
    c = task.Clock()
    c.advance(1_700_000_000)
    return c


@pytest.fixture
def rooms(store, bus, presence, clock):
    return Rooms(store, bus, presence, clock, default_capacity=10, history_len=5)


@pytest_twisted.ensureDeferred
async def test_create_get_list(rooms, clock):
    """create makes a room once; get and list return it with its fields."""
    room, created = await rooms.create("R1", creator_id=7, capacity=3, cover="c.png")
    assert created and room.name == "R1" and room.capacity == 3
    assert room.creator_id == 7 and room.cover == "c.png" and room.population == 0
    again, created = await rooms.create("R1", capacity=9)
    assert not created and again.capacity == 3
    await rooms.create("R2")
    assert [r.name for r in await rooms.list()] == ["R1", "R2"]
    assert (await rooms.get("R2")).capacity == 10
    assert await rooms.get("nope") is None


@pytest_twisted.ensureDeferred
async def test_names_do_not_collide(rooms):
    """A room named like another room's sub-key is a separate room."""
    await rooms.join("a", user(1), "c1", "chat")
    await rooms.join("a:conns", user(2), "c2", "chat")
    assert [c for c, _ in await rooms.members("a")] == ["c1"]
    assert [c for c, _ in await rooms.members("a:conns")] == ["c2"]


@pytest_twisted.ensureDeferred
async def test_bad_names_refused(rooms):
    """Empty, control-character and over-long names are invalid input."""
    for bad in ("", "a\nb", "x" * 101):
        with pytest.raises(InvalidInput):
            await rooms.join(bad, user(1), "c1", "chat")


@pytest_twisted.ensureDeferred
async def test_join_publishes_and_counts_users_once(rooms, bus):
    """A user with two connections is one occupant; guests count per connection."""
    events = Collector(bus, "R")
    r1 = await rooms.join("R", user(1), "c1", "chatroom")
    assert r1.created and r1.first and r1.population == 1
    r2 = await rooms.join("R", user(1), "c2", "chat")
    assert not r2.created and not r2.first and r2.population == 1
    await rooms.join("R", Member.guest(), "g1", "chat")
    r4 = await rooms.join("R", Member.guest(), "g2", "chat")
    assert r4.population == 3 and await rooms.population("R") == 3
    await events.wait(4)
    e = events.events[0]
    assert e.kind == "room.member_joined"
    assert e.data["room"] == "R" and e.data["conn_id"] == "c1" and e.data["created"] is True
    assert e.data["member"] == {"user_id": 1, "name": "u1", "avatar": "a.png", "phone": None,
                                "username": "u1", "level": "user"}
    assert e.data["dialect"] == "chatroom" and e.data["first"] is True
    assert [c for c, _ in await rooms.members("R")] == ["c1", "c2", "g1", "g2"]
    with pytest.raises(AlreadyJoined):
        await rooms.join("R", user(1), "c1", "chatroom")


@pytest_twisted.ensureDeferred
async def test_leave_publishes_reason(rooms, bus):
    """leave returns the member and publishes member_left with the reason; twice is a no-op."""
    await rooms.join("R", user(1), "c1", "chat")
    await rooms.join("R", user(1), "c2", "chat")
    events = Collector(bus, "R")
    member = await rooms.leave("R", "c1", reason="close")
    assert member.user_id == 1
    assert await rooms.population("R") == 1
    assert await rooms.leave("R", "c1") is None
    await rooms.leave("R", "c2", reason="timeout")
    assert await rooms.population("R") == 0
    await events.wait(2)
    assert [(e.kind, e.data["reason"], e.data["population"]) for e in events.events] == [
        ("room.member_left", "close", 1), ("room.member_left", "timeout", 0)]
    assert events.events[0].data["dialect"] == "chat"


@pytest_twisted.ensureDeferred
async def test_capacity_on_join(rooms):
    """A full room refuses a new occupant but admits another connection of a member."""
    await rooms.create("small", capacity=2)
    await rooms.join("small", user(1), "c1", "ktv")
    await rooms.join("small", user(2), "c2", "ktv")
    with pytest.raises(RoomFull):
        await rooms.join("small", user(3), "c3", "ktv")
    await rooms.join("small", user(2), "c2b", "chat")
    assert await rooms.population("small") == 2
    with pytest.raises(RoomNotFound):
        await rooms.join("absent", user(1), "c9", "ktv", create=False)


@pytest_twisted.ensureDeferred
async def test_unlimited_capacity(rooms):
    """Capacity 0 means no limit."""
    await rooms.create("hall", capacity=0)
    for i in range(25):
        await rooms.join("hall", Member.guest(), f"g{i}", "chat")
    assert await rooms.population("hall") == 25


@pytest_twisted.ensureDeferred
async def test_concurrent_reservations_admit_exactly_capacity(rooms):
    """20 concurrent reservations of a room of 10 admit exactly 10."""
    await rooms.create("TEST", capacity=10)

    async def attempt(uid):
        try:
            await rooms.reserve("TEST", uid)
            return True
        except RoomFull:
            return False

    results = await defer.gatherResults(
        [defer.ensureDeferred(attempt(uid)) for uid in range(100, 120)])
    assert results.count(True) == 10
    assert await rooms.population("TEST") == 10


@pytest_twisted.ensureDeferred
async def test_reservation_then_join_counts_once(rooms, clock):
    """reserve + join is one occupant; after leave the HTTP release still works."""
    await rooms.create("TEST")
    assert await rooms.reserve("TEST", 5) == 1
    assert await rooms.reserve("TEST", 5) == 1  # idempotent
    await rooms.join("TEST", user(5), "c1", "chatroom")
    assert await rooms.population("TEST") == 1
    clock.advance(10_000)  # connected: the reservation does not expire
    assert await rooms.population("TEST") == 1
    await rooms.leave("TEST", "c1")
    assert await rooms.population("TEST") == 1
    assert await rooms.release("TEST", 5) == 0
    with pytest.raises(NotReserved):
        await rooms.release("TEST", 5)
    with pytest.raises(RoomNotFound):
        await rooms.release("nope", 5)
    with pytest.raises(RoomNotFound):
        await rooms.reserve("nope", 5)


@pytest_twisted.ensureDeferred
async def test_abandoned_reservation_expires(rooms, clock):
    """A reservation never followed by a join frees its place after reserve_ttl."""
    await rooms.create("TEST", capacity=1)
    await rooms.reserve("TEST", 5)
    with pytest.raises(RoomFull):
        await rooms.reserve("TEST", 6)
    clock.advance(rooms.reserve_ttl + 1)
    assert await rooms.population("TEST") == 0
    await rooms.reserve("TEST", 6)
    with pytest.raises(NotReserved):
        await rooms.release("TEST", 5)


@pytest_twisted.ensureDeferred
async def test_rebind_login_and_logout(rooms, bus):
    """A guest logging in becomes the user (joined, rebind); logging out leaves as 'logout'."""
    await rooms.join("1", Member.guest(), "c1", "chat")
    events = Collector(bus, "1")
    old = await rooms.rebind("1", "c1", user(9), "chat", reason="login")
    assert old.is_guest and await rooms.population("1") == 1
    assert (await rooms.member("1", "c1")).user_id == 9
    old = await rooms.rebind("1", "c1", Member.guest(), "chat", reason="logout")
    assert old.user_id == 9
    await events.wait(2)
    joined, left = events.events
    assert joined.kind == "room.member_joined" and joined.data["rebind"] is True
    assert joined.data["member"]["user_id"] == 9 and joined.data["dialect"] == "chat"
    assert left.kind == "room.member_left" and left.data["reason"] == "logout"
    assert await rooms.rebind("1", "zz", user(1), "chat") is None


@pytest_twisted.ensureDeferred
async def test_post_stores_then_publishes(rooms, bus):
    """A message is in the history when its event arrives; history is newest first and capped."""
    await rooms.join("R", user(1), "c1", "chatroom")
    seen = []

    def on_event(event):
        if event.kind == "room.message":
            seen.append(defer.ensureDeferred(rooms.history("R", 1)))

    await bus.listen("room:R", on_event).ready
    msg = await rooms.post("R", user(1), "hello", dialect="chatroom", conn_id="c1",
                           extra={"k": "v"})
    deadline = reactor.seconds() + 3
    while not seen and reactor.seconds() < deadline:
        await deferLater(reactor, 0.01, lambda: None)
    (latest,) = await seen[0]
    assert latest.id == msg.id and latest.text == "hello" and latest.extra == {"k": "v"}
    for i in range(7):
        await rooms.post("R", user(1), f"m{i}", dialect="chat")
    history = await rooms.history("R", 200)
    assert [m.text for m in history] == ["m6", "m5", "m4", "m3", "m2"]
    assert history[0].sender.user_id == 1 and history[0].dialect == "chat"
    assert [m.text for m in await rooms.history("R", 2)] == ["m6", "m5"]


@pytest_twisted.ensureDeferred
async def test_message_event_carries_everything(rooms, bus):
    """room.message data has room, id, ts, sender, text, dialect, conn_id and extra."""
    events = Collector(bus, "R")
    msg = await rooms.post("R", user(3), "hi", dialect="ktv", conn_id="c3",
                           extra={"fullname": "138"})
    (e,) = await events.wait(1)
    assert e.kind == "room.message"
    assert e.data == {"room": "R", "id": msg.id, "ts": msg.ts, "sender": user(3).to_dict(),
                      "text": "hi", "dialect": "ktv", "conn_id": "c3",
                      "extra": {"fullname": "138"}}


@pytest_twisted.ensureDeferred
async def test_dead_process_members_removed(store, bus, presence, clock):
    """Connections of a process whose heartbeat expired leave their rooms ('timeout')."""
    rooms = Rooms(store, bus, presence, clock)
    other = Presence(store, reactor, "deadbeef0000", dead_after=0.05)
    conn = other.new_conn_id()
    await other.connect(conn, 4, "chatroom")
    await other._tick()
    await rooms.join("R", user(4), conn, "chatroom")
    await rooms.join("R", user(5), "alive1", "chat")
    events = Collector(bus, "R")
    await deferLater(reactor, 0.1, lambda: None)  # the other process's heartbeat expires
    assert await presence.reap() == 1
    await events.wait(1)
    assert events.events[0].data["reason"] == "timeout"
    assert [c for c, _ in await rooms.members("R")] == ["alive1"]
    assert await rooms.rooms_of(conn) == []
    assert await rooms.population("R") == 1


@pytest_twisted.ensureDeferred
async def test_leave_all(rooms):
    """leave_all removes a connection from every room it is in."""
    await rooms.join("A", user(1), "c1", "chatroom")
    await rooms.join("B", user(1), "c1", "chatroom")
    assert await rooms.rooms_of("c1") == ["A", "B"]
    left = await rooms.leave_all("c1")
    assert sorted(n for n, _ in left) == ["A", "B"]
    assert await rooms.population("A") == 0 and await rooms.rooms_of("c1") == []


@pytest_twisted.ensureDeferred
async def test_messages_reach_subscribers_in_log_order_from_two_processes(
        store, bus, presence, clock, redis_url):
    """Two processes posting at once: every subscriber sees the room's log order."""
    from imserver.bus import Bus
    from imserver.store.redis import Store, Subscription

    other_store = Store(reactor, redis_url)
    other_bus = Bus(other_store, lambda m, r: Subscription(reactor, redis_url, m, r))
    await other_bus.subscription.whenReady()
    try:
        here = Rooms(store, bus, presence, clock, history_len=500)
        there = Rooms(other_store, other_bus, presence, clock, history_len=500)
        await here.create("ORDER")
        seen = Collector(bus, "ORDER")
        await seen.sink.ready
        posts = [(here if i % 2 else there).post("ORDER", user(i % 2 + 1), f"m{i}",
                                                   dialect="chat")
                 for i in range(200)]
        await defer.gatherResults([defer.ensureDeferred(p) for p in posts])
        events = await seen.wait(200)
        logged = [m.id for m in reversed(await here.history("ORDER", 200))]
        assert [e.data["id"] for e in events] == logged
    finally:
        await other_bus.close()
        await other_store.close()
