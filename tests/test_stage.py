"""The KTV stage machine against a real Redis, its time driven by task.Clock."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.task import deferLater

from imserver.bus import Bus
from imserver.core import stage as st
from imserver.core.stage import Entry, StageMachine
from imserver.store.redis import Store, Subscription

ROOM = "R1"
ASK, REST = 5.0, 10.0
T0 = 1_700_000_000.0


class Collector:
    """Records the stage.changed events of one room as one bus sees them."""

    def __init__(self, bus, room=ROOM):
        self.events = []
        self.sink = bus.listen(f"room:{room}", self._got)

    def _got(self, event):
        if event.kind == "stage.changed":
            self.events.append(event)

    async def ready(self):
        await self.sink.ready
        return self

    async def wait(self, n, timeout=3.0):
        deadline = reactor.seconds() + timeout
        while len(self.events) < n:
            if reactor.seconds() > deadline:
                raise AssertionError(f"expected {n} events, got {self.states()!r}")
            await deferLater(reactor, 0.005, lambda: None)
        return self.events

    def states(self):
        return [(e.data["version"], e.data["status"],
                 (e.data.get("item") or {}).get("fullname", "")) for e in self.events]


@pytest.fixture
def clock():
    c = task.Clock()
    c.advance(T0)
    return c


def describe_with(members):
    async def describe(room):
        return {"members": list(members.get(room, []))}
    return describe


@pytest.fixture
def members():
    return {ROOM: [{"fullname": "13800000001", "nick": "a", "avatar": ""}]}


@pytest.fixture
def machine(store, bus, clock, members):
    m = StageMachine(store, bus, clock, describe_with(members), ask_timeout=ASK, rest=REST)
    yield m
    m.stop()
    assert clock.getDelayedCalls() == []


def song(who, sid="1", duration=3):
    return Entry(fullname=who, nick="nick-" + who, sid=sid, name="song" + sid,
                 author="someone", lrc="l.lrc", link="s.mp3", duration=duration)


async def advance(machine, clock, seconds):
    clock.advance(seconds)
    await machine.settle()


@pytest_twisted.ensureDeferred
async def test_new_room_is_idle(machine, clock):
    """A room never used is idle at version 0, for the idle duration, starting now."""
    snap = await machine.snapshot(ROOM)
    assert (snap.status, snap.version, snap.item) == (st.IDLE, 0, None)
    assert snap.start == T0 and snap.duration == 86400
    assert snap.songs == () and snap.members[0]["fullname"] == "13800000001"


@pytest_twisted.ensureDeferred
async def test_whole_cycle_with_clock(machine, clock, bus):
    """idle -> asking -> singing (song's duration) -> resting -> asking next -> ... -> idle."""
    seen = await Collector(bus).ready()
    await machine.watch_room(ROOM)
    out = await machine.sing(ROOM, song("A", "1", duration=3))
    assert out.changed and out.snapshot.status == st.ASKING
    assert out.snapshot.item.fullname == "A" and out.snapshot.duration == ASK
    await machine.sing(ROOM, song("B", "2", duration=4))
    out = await machine.ask(ROOM, "A", True)
    snap = out.snapshot
    assert (snap.status, snap.item.sid, snap.start, snap.duration) == (st.SINGING, "1", T0, 3)
    assert [e.fullname for e in snap.songs] == ["B"]
    await advance(machine, clock, 3)
    snap = await machine.snapshot(ROOM)
    assert (snap.status, snap.start, snap.duration, snap.item) == (st.RESTING, T0 + 3, REST, None)
    await advance(machine, clock, REST)
    snap = await machine.snapshot(ROOM)
    assert (snap.status, snap.item.fullname, snap.start) == (st.ASKING, "B", T0 + 3 + REST)
    assert snap.songs == ()
    await machine.ask(ROOM, "B", True)
    await advance(machine, clock, 4)
    await advance(machine, clock, REST)
    snap = await machine.snapshot(ROOM)
    assert (snap.status, snap.duration) == (st.IDLE, 86400)
    await seen.wait(8)
    statuses = [e.data["status"] for e in seen.events]
    assert statuses == [2, 2, 1, 3, 2, 1, 3, 4]
    versions = [e.data["version"] for e in seen.events]
    assert versions == list(range(versions[0], versions[0] + 8))
    assert clock.getDelayedCalls() == []   # idle has no deadline
    machine.unwatch_room(ROOM)


@pytest_twisted.ensureDeferred
async def test_ask_timeout_and_decline_go_to_next(machine, clock):
    """An unanswered ask and an ack 0 both ask the next in the queue; an empty queue is idle."""
    await machine.watch_room(ROOM)
    for who in ("A", "B", "C"):
        await machine.sing(ROOM, song(who))
    await advance(machine, clock, ASK)
    snap = await machine.snapshot(ROOM)
    assert (snap.status, snap.item.fullname, snap.start) == (st.ASKING, "B", T0 + ASK)
    out = await machine.ask(ROOM, "B", False)
    assert (out.snapshot.status, out.snapshot.item.fullname) == (st.ASKING, "C")
    await advance(machine, clock, ASK)
    assert (await machine.snapshot(ROOM)).status == st.IDLE
    machine.unwatch_room(ROOM)


@pytest_twisted.ensureDeferred
async def test_ask_refusals(machine):
    """ask needs an ask in progress, addressed to the caller."""
    with pytest.raises(st.NotAsking):
        await machine.ask(ROOM, "A", True)
    await machine.sing(ROOM, song("A"))
    with pytest.raises(st.NotYourTurn):
        await machine.ask(ROOM, "B", True)


@pytest_twisted.ensureDeferred
async def test_one_place_per_user(machine):
    """A user holds one place in the queue, being asked included; a singer may queue again."""
    await machine.sing(ROOM, song("A"))
    with pytest.raises(st.AlreadyQueued):
        await machine.sing(ROOM, song("A", "9"))
    await machine.sing(ROOM, song("B"))
    with pytest.raises(st.AlreadyQueued):
        await machine.sing(ROOM, song("B", "9"))
    await machine.ask(ROOM, "A", True)
    out = await machine.sing(ROOM, song("A", "7"))
    assert [e.fullname for e in out.snapshot.songs] == ["B", "A"]


@pytest_twisted.ensureDeferred
async def test_cut(machine, clock):
    """cut: only while singing, only the singer (or a manager); it goes to rest."""
    with pytest.raises(st.NotSinging):
        await machine.cut(ROOM, "A")
    await machine.sing(ROOM, song("A", duration=100))
    await machine.ask(ROOM, "A", True)
    with pytest.raises(st.NotSinger):
        await machine.cut(ROOM, "B")
    clock.advance(1)
    out = await machine.cut(ROOM, "A")
    assert (out.snapshot.status, out.snapshot.start, out.snapshot.duration) == \
        (st.RESTING, T0 + 1, REST)
    await machine.sing(ROOM, song("B", duration=100))
    await advance(machine, clock, REST)  # not watched: nothing moves on its own
    assert (await machine.snapshot(ROOM)).status == st.RESTING
    await machine.expire(ROOM, (await machine.snapshot(ROOM)).version)
    await machine.ask(ROOM, "B", True)
    out = await machine.cut(ROOM, "X", manager=True)
    assert out.snapshot.status == st.RESTING


@pytest_twisted.ensureDeferred
async def test_del(machine):
    """del leaves the queue; leaving while asked declines; nothing queued is refused."""
    with pytest.raises(st.NotQueued):
        await machine.delete(ROOM, "A")
    await machine.sing(ROOM, song("A"))
    await machine.sing(ROOM, song("B"))
    await machine.sing(ROOM, song("C"))
    out = await machine.delete(ROOM, "B")
    assert [e.fullname for e in out.snapshot.songs] == ["C"]
    out = await machine.delete(ROOM, "A")
    assert (out.snapshot.status, out.snapshot.item.fullname, out.snapshot.songs) == \
        (st.ASKING, "C", ())
    out = await machine.delete(ROOM, "C")
    assert out.snapshot.status == st.IDLE


@pytest_twisted.ensureDeferred
async def test_music(machine, clock):
    """listen plays on a free stage (5) for its duration, then the queue; cut_music by its requester."""
    await machine.watch_room(ROOM)
    out = await machine.listen(ROOM, song("A", "m1", duration=20))
    assert (out.snapshot.status, out.snapshot.item.sid, out.snapshot.duration) == \
        (st.MUSIC, "m1", 20)
    with pytest.raises(st.AlreadyQueued):
        await machine.listen(ROOM, song("B", "m2", duration=20)) and \
            await machine.listen(ROOM, song("B", "m3", duration=20))
    out = await machine.snapshot(ROOM)
    assert [e.sid for e in out.musics] == ["m2"]
    with pytest.raises(st.NoMusicQueued):
        await machine.delete_music(ROOM, "C")
    await machine.sing(ROOM, song("C", "s1"))   # queued behind the music
    assert (await machine.snapshot(ROOM)).status == st.MUSIC
    with pytest.raises(st.NotRequester):
        await machine.cut_music(ROOM, "B")
    out = await machine.cut_music(ROOM, "A")
    assert (out.snapshot.status, out.snapshot.item.fullname) == (st.ASKING, "C")
    await advance(machine, clock, ASK)
    snap = await machine.snapshot(ROOM)
    assert (snap.status, snap.item.sid) == (st.MUSIC, "m2")
    await advance(machine, clock, 20)
    assert (await machine.snapshot(ROOM)).status == st.IDLE
    with pytest.raises(st.NotPlaying):
        await machine.cut_music(ROOM, "A")
    await machine.listen(ROOM, song("A", "m1", duration=20))
    await machine.listen(ROOM, song("B", "m2", duration=20))
    out = await machine.delete_music(ROOM, "B")
    assert out.snapshot.musics == ()
    machine.unwatch_room(ROOM)


@pytest_twisted.ensureDeferred
async def test_video(machine, clock):
    """watch needs a free stage; cut_video by who started it; seeking moves the end."""
    video = Entry(fullname="A", nick="a", vid="7", name="clip", link="v.mp4", duration=100)
    with pytest.raises(st.NoVideo):
        await machine.seek(ROOM, "A", 10)
    await machine.watch_room(ROOM)
    out = await machine.watch(ROOM, video)
    assert (out.snapshot.status, out.snapshot.item.vid, out.snapshot.end) == \
        (st.VIDEO, "7", T0 + 100)
    with pytest.raises(st.StageBusy):
        await machine.watch(ROOM, video)
    with pytest.raises(st.NotWatcher):
        await machine.cut_video(ROOM, "B")
    await machine.sing(ROOM, song("B"))   # queues, the video plays on
    clock.advance(10)
    out = await machine.seek(ROOM, "B", 60)
    assert out.snapshot.end == T0 + 10 + 100 - 60
    assert out.snapshot.start == T0 + 10 - 60 and out.snapshot.status == st.VIDEO
    for bad in (-1, 101, float("nan")):
        with pytest.raises(st.BadSeek):
            await machine.seek(ROOM, "B", bad)
    await advance(machine, clock, 39)
    assert (await machine.snapshot(ROOM)).status == st.VIDEO
    await advance(machine, clock, 1)
    snap = await machine.snapshot(ROOM)
    assert (snap.status, snap.item.fullname) == (st.ASKING, "B")
    await machine.delete(ROOM, "B")
    await machine.watch(ROOM, video)
    out = await machine.seek(ROOM, "A", 100)   # played to the end: the stage is free
    assert out.snapshot.status == st.IDLE
    await machine.watch(ROOM, video)
    out = await machine.cut_video(ROOM, "A")
    assert out.snapshot.status == st.IDLE
    machine.unwatch_room(ROOM)


@pytest_twisted.ensureDeferred
async def test_member_gone(machine):
    """A member who leaves loses their places; their ask is declined, their song ends."""
    await machine.sing(ROOM, song("A"))
    await machine.sing(ROOM, song("B"))
    await machine.listen(ROOM, song("B", "m", duration=9))
    out = await machine.member_gone(ROOM, "B")
    assert out.changed and out.snapshot.songs == () and out.snapshot.musics == ()
    out = await machine.member_gone(ROOM, "Z")
    assert not out.changed
    await machine.sing(ROOM, song("C"))
    out = await machine.member_gone(ROOM, "A")
    assert (out.snapshot.status, out.snapshot.item.fullname) == (st.ASKING, "C")
    await machine.ask(ROOM, "C", True)
    out = await machine.member_gone(ROOM, "C")
    assert out.snapshot.status == st.RESTING


@pytest_twisted.ensureDeferred
async def test_expire_is_compare_and_set(machine, clock):
    """expire moves the stage only for the current version, once, and not before the deadline."""
    out = await machine.sing(ROOM, song("A"))
    v = out.snapshot.version
    assert not (await machine.expire(ROOM, v)).changed   # too early
    clock.advance(ASK)
    assert not (await machine.expire(ROOM, v - 1)).changed
    first = await machine.expire(ROOM, v)
    second = await machine.expire(ROOM, v)
    assert first.changed and first.snapshot.version == v + 1 and first.snapshot.status == st.IDLE
    assert not second.changed and second.snapshot.version == v + 1


@pytest_twisted.ensureDeferred
async def test_touch_once_per_marker(machine, bus):
    """touch folds a membership change into one new version per marker."""
    seen = await Collector(bus).ready()
    a = await machine.touch(ROOM, seen="room.member_joined:c1:1.5")
    b = await machine.touch(ROOM, seen="room.member_joined:c1:1.5")
    c = await machine.touch(ROOM)
    assert a.changed and not b.changed and b.snapshot is None
    assert c.snapshot.version == a.snapshot.version + 1
    await seen.wait(2)
    assert [e.data["reason"] for e in seen.events] == ["members", "members"]


@pytest_twisted.ensureDeferred
async def test_snapshot_carries_room_info(machine, members):
    """Every snapshot carries the room description read just before the change."""
    members[ROOM].append({"fullname": "13800000002", "nick": "b", "avatar": "x"})
    out = await machine.sing(ROOM, song("13800000002"))
    assert [m["fullname"] for m in out.snapshot.members] == ["13800000001", "13800000002"]


@pytest_twisted.ensureDeferred
async def test_bad_durations_refused(machine):
    """A song or video needs a positive, finite duration."""
    for bad in (0, -3, float("inf"), float("nan")):
        with pytest.raises(st.InvalidInput):
            await machine.sing(ROOM, song("A", duration=bad))


@pytest_twisted.ensureDeferred
async def test_room_names_are_quoted(machine):
    """Odd room names (colons, spaces, non-ASCII) are separate stages."""
    await machine.sing("a:b", song("A"))
    assert (await machine.snapshot("a")).status == st.IDLE
    assert (await machine.snapshot("a:b")).status == st.ASKING
    assert (await machine.snapshot("房间 1")).status == st.IDLE


# -- two processes ------------------------------------------------------------------

@pytest_twisted.async_yield_fixture
async def second(redis_url, clock, members):
    """A second process: its own store, bus and machine on the same Redis and clock."""
    store = Store(reactor, redis_url)
    bus = Bus(store, lambda on_msg, on_re: Subscription(reactor, redis_url, on_msg, on_re))
    await bus.subscription.whenReady()
    m = StageMachine(store, bus, clock, describe_with(members), ask_timeout=ASK, rest=REST)
    yield m
    m.stop()
    await bus.close()
    await store.close()


@pytest_twisted.ensureDeferred
async def test_two_processes_one_sequence(machine, second, clock, bus):
    """Both processes arm every deadline, one wins each; both see one identical sequence."""
    seen_a = await Collector(bus).ready()
    seen_b = await Collector(second.bus).ready()
    await machine.watch_room(ROOM)
    await second.watch_room(ROOM)
    await machine.sing(ROOM, song("A", duration=3))
    await second.sing(ROOM, song("B", duration=3))
    await machine.sing(ROOM, song("C", duration=3))
    await seen_a.wait(3)
    await seen_b.wait(3)
    await second.ask(ROOM, "A", True)
    await seen_a.wait(4)
    await seen_b.wait(4)
    n = 4
    for step in (3, REST, ASK, ASK):   # A sings; rest; B times out; C times out -> idle
        clock.advance(step)
        await machine.settle()
        await second.settle()
        n += 1
        await seen_a.wait(n)
        await seen_b.wait(n)
    assert (await machine.snapshot(ROOM)).status == st.IDLE
    await deferLater(reactor, 0.1, lambda: None)   # any duplicate would have arrived
    assert seen_a.states() == seen_b.states()
    assert [s[1] for s in seen_a.states()] == [2, 2, 2, 1, 3, 2, 2, 4]
    versions = [s[0] for s in seen_a.states()]
    assert versions == list(range(versions[0], versions[0] + len(versions)))
    machine.unwatch_room(ROOM)
    second.unwatch_room(ROOM)


@pytest_twisted.ensureDeferred
async def test_stage_moves_when_a_process_dies(machine, second, clock, bus):
    """When the process that made a transition is gone, another one still moves the stage."""
    seen = await Collector(bus).ready()
    await machine.watch_room(ROOM)
    await second.watch_room(ROOM)
    await second.sing(ROOM, song("A", duration=3))
    await second.ask(ROOM, "A", True)
    await seen.wait(2)
    second.stop()   # the process is gone: its timers with it
    await advance(machine, clock, 3)
    assert (await machine.snapshot(ROOM)).status == st.RESTING
    await advance(machine, clock, REST)
    assert (await machine.snapshot(ROOM)).status == st.IDLE
    machine.unwatch_room(ROOM)


@pytest_twisted.ensureDeferred
async def test_joining_process_catches_up(machine, clock):
    """A process that starts watching after a deadline passed moves the stage at once."""
    await machine.sing(ROOM, song("A"))
    clock.advance(ASK + 1)
    await machine.watch_room(ROOM)
    clock.advance(0)
    await machine.settle()
    assert (await machine.snapshot(ROOM)).status == st.IDLE
    machine.unwatch_room(ROOM)


@pytest_twisted.ensureDeferred
async def test_member_events_fold_into_one_version(machine, second, bus, store, clock):
    """A member event seen by two processes gives one new stage version."""
    from imserver.core.rooms import Member, Rooms
    seen = await Collector(bus).ready()
    await machine.watch_room(ROOM)
    await second.watch_room(ROOM)
    rooms = Rooms(store, bus, None, clock)
    await rooms.join(ROOM, Member(user_id=1, name="a"), "c1", "chatroom")
    await seen.wait(1)
    await deferLater(reactor, 0.1, lambda: None)
    await machine.settle()
    await second.settle()
    assert [e.data["reason"] for e in seen.events] == ["members"]
    machine.unwatch_room(ROOM)
    second.unwatch_room(ROOM)


@pytest_twisted.ensureDeferred
async def test_resync_after_a_lost_link(machine, second, bus, clock, members):
    """After the bus link comes back, every watched stage gets a new version with the members
    as they are, and the deadline another process set meanwhile is armed here."""
    await machine.watch_room(ROOM)
    await second.watch_room(ROOM)
    listener = machine._listeners[ROOM]
    bus.unsubscribe(f"room:{ROOM}", listener)      # this process hears nothing now
    before = await second.sing(ROOM, song("A", duration=3))
    second.stop()                                  # and the process that set the ask is gone
    members[ROOM].append({"fullname": "13800000002", "nick": "b", "avatar": ""})
    await bus.subscribe(f"room:{ROOM}", listener)
    found = await machine.resync()
    snap = found[ROOM]
    assert snap.version == before.snapshot.version + 1 and snap.status == st.ASKING
    assert [m["fullname"] for m in snap.members] == ["13800000001", "13800000002"]
    await advance(machine, clock, ASK)             # the ask times out here
    assert (await machine.snapshot(ROOM)).status == st.IDLE
    machine.unwatch_room(ROOM)
    assert await machine.resync() == {}            # nothing watched, nothing touched
