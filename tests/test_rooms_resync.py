"""
Rooms after a lost bus link: Redis drops the process's pub/sub connection
(``CLIENT KILL TYPE pubsub``), messages and joins happen while it is down,
and once it is back every 000, 002 and 003 client in the room is shown what
it missed, in order and once, over real WebSockets.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.task import deferLater

from imserver.bus import Event
from imserver.core.rooms import Member, Resync, RoomFeed, Rooms, RosterChange, id_key
from imserver.store import keys

from conftest import until


async def wait_for(conn, pred, timeout=8.0):
    msg, skipped = await conn.recv_until(lambda raw: pred(json.loads(raw)), timeout)
    return json.loads(msg), [json.loads(s) for s in skipped]




async def collect(conn, n, within=8.0):
    """The next ``n`` messages, parsed."""
    return [json.loads(await conn.recv(within)) for _ in range(n)]


def texts_000(frames):
    return [f["data"]["message"] for f in frames if f["type"] == "send"]


def texts_003(frames):
    return [f["data"]["msg"] for f in frames if f["type"] == "msg"]


def is_ktv_chat(m):
    return m.get("type") == 2 and isinstance(m.get("body"), dict) and "content" in m["body"]


def is_ktv_status(m):
    return (m.get("type") == 1 and "caller_action" not in m and isinstance(m.get("body"), dict)
            and "songs" in m["body"])


async def stored(rooms, room, text):
    async def check():
        return any(m.text == text for m in await rooms.history(room, 20))
    await until(check)


class Room5:
    """A 000, a 002 and a 003 client of three users in room "5" of one server."""

    async def enter(self, server, ws_connect):
        accounts = server.core.accounts
        self.chat_user = await accounts.register(password="secret1", username="chatter",
                                                 phone="13600000001")
        self.ktv_user = await accounts.register(password="secret1", phone="13600000002")
        self.ktv_token = (await accounts.issue_token(self.ktv_user.id)).token
        room_user = await accounts.register(password="secret1", username="roomer",
                                            phone="13600000003")
        self.room_token = (await accounts.issue_token(room_user.id)).token
        newcomer = await accounts.register(password="secret1", username="newcomer",
                                           phone="13600000004")
        self.newcomer_token = (await accounts.issue_token(newcomer.id)).token
        leaver = await accounts.register(password="secret1", username="leaver",
                                         phone="13600000005")

        self.c = await ws_connect(server.ws_url + "/ws/chat")
        self.c.send({"type": "login", "data": {"username": "chatter", "password": "secret1"}})
        await wait_for(self.c, lambda m: m.get("type") == "login")
        self.c.send({"type": "changeroom", "data": {"room_id": 5}})
        await wait_for(self.c, lambda m: m.get("type") == "changeroom")

        self.k = await ws_connect(server.ws_url + "/ws/ktv")
        self.ktv("join")
        await wait_for(self.k, is_ktv_status)

        self.r = await ws_connect(server.ws_url + "/ws/chatroom")
        self.r.send({"type": "join", "data": {"room_name": "5", "token": self.room_token}})
        await wait_for(self.r, lambda m: m.get("type") == "user")
        await wait_for(self.c, lambda m: m.get("type") == "online"
                       and m["data"]["username"] == "roomer")

        self.leaver = await ws_connect(server.ws_url + "/ws/chatroom")
        self.leaver.send({"type": "join", "data": {
            "room_name": "5", "token": (await accounts.issue_token(leaver.id)).token}})
        await wait_for(self.leaver, lambda m: m.get("type") == "user")
        await wait_for(self.c, lambda m: m.get("type") == "online"
                       and m["data"]["username"] == "leaver")
        await wait_for(self.k, lambda m: is_ktv_status(m) and len(m["body"]["members"]) == 4)
        for conn in (self.c, self.k, self.r, self.leaver):
            while await _pending(conn):
                await conn.recv(1)

    def ktv(self, action, **kw):
        msg = {"action": action, "fullname": self.ktv_user.phone, "token": self.ktv_token,
               "room": "5"}
        msg.update(kw)
        self.k.send(msg)

    async def each_gets_once(self, text):
        got, _ = await wait_for(self.c, lambda m: m.get("type") == "send")
        assert got["data"]["message"] == text
        got, _ = await wait_for(self.r, lambda m: m.get("type") == "msg")
        assert got["data"]["msg"] == text
        got, _ = await wait_for(self.k, is_ktv_chat)
        assert got["body"]["content"] == text
        for conn in (self.c, self.k, self.r):
            assert await conn.no_message(0.3)


async def _pending(conn):
    await deferLater(reactor, 0.1, lambda: None)
    return bool(conn.queue.pending)


@pytest_twisted.ensureDeferred
async def test_missed_messages_and_members_arrive_once_in_order(server, ws_connect, cut_bus_link):
    """After the pub/sub link is back, each client gets the missed chat once, in order, and
    who left and joined meanwhile; a client that joined meanwhile gets no older chat."""
    core = server.core
    room = Room5()
    await room.enter(server, ws_connect)
    room.c.send({"type": "send", "data": {"message": "live"}})
    await room.each_gets_once("live")

    link = await cut_bus_link(server)

    room.c.send({"type": "send", "data": {"message": "missed 1"}})
    await stored(core.rooms, "5", "missed 1")
    room.r.send({"type": "msg", "data": {"room_name": "5", "msg": "missed 2"}})
    await stored(core.rooms, "5", "missed 2")
    room.ktv("chat", content="missed 3")
    await stored(core.rooms, "5", "missed 3")
    late = await ws_connect(server.ws_url + "/ws/chatroom")
    late.send({"type": "join", "data": {"room_name": "5", "token": room.newcomer_token}})
    joined, _ = await wait_for(late, lambda m: m.get("type") == "user")
    assert joined["data"]["msg"] == "join"
    await room.leaver.close()

    async def leaver_gone():
        return len(await core.rooms.members("5")) == 4
    await until(leaver_gone)
    # nobody was subscribed while all that was published
    assert await core.store.execute("PUBSUB", "NUMSUB", keys.bus_channel("room:5")) \
        in (["im:bus:room:5", 0], ["im:bus:room:5", "0"])
    await link.restore()

    frames = await collect(room.c, 5)
    assert texts_000(frames[:3]) == ["missed 1", "missed 2", "missed 3"]
    assert frames[0]["data"]["from"]["username"] == "chatter"
    assert [(f["type"], f["data"]["username"]) for f in frames[3:]] == [
        ("unonline", "leaver"), ("online", "newcomer")]

    frames = await collect(room.r, 5)
    assert texts_003(frames[:3]) == ["missed 1", "missed 2", "missed 3"]
    assert [(f["type"], f["data"]["user"]["user_name"], f["data"]["msg"])
            for f in frames[3:]] == [("user", "leaver", "leave"), ("user", "newcomer", "join")]
    assert frames[4]["data"] == {"user": {"user_name": "newcomer", "user_avatar": "default"},
                                 "room_name": "5", "msg": "join"}

    status, _ = await wait_for(room.k, is_ktv_status)
    assert sorted(m["fullname"] for m in status["body"]["members"]) == [
        "13600000001", "13600000002", "13600000003", "13600000004"]
    frames = await collect(room.k, 3)
    assert [f["body"]["content"] for f in frames] == ["missed 1", "missed 2", "missed 3"]

    # `late` joined while the link was down, after the chat: it saw the leaver (in the
    # room then) go, and gets no older chat
    frames = await collect(late, 1)
    assert [(f["data"]["user"]["user_name"], f["data"]["msg"]) for f in frames] == [
        ("leaver", "leave")]
    for conn in (room.c, room.k, room.r, late):
        assert await conn.no_message(0.5)   # nothing twice   # nothing twice, and no older chat for `late`
    # and the room goes on live, once
    room.c.send({"type": "send", "data": {"message": "after"}})
    await room.each_gets_once("after")
    got, _ = await wait_for(late, lambda m: m.get("type") == "msg")
    assert got["data"]["msg"] == "after"


# -- the rooms core's part, against a real Redis -------------------------------------


def user(uid):
    return Member(user_id=uid, name=f"u{uid}", username=f"u{uid}", level="user")


@pytest.fixture
def clock():
    c = task.Clock()
    c.advance(1_700_000_000)
    return c


@pytest.fixture
def rooms(store, bus, presence, clock):
    return Rooms(store, bus, presence, clock, history_len=50)


class Events:
    def __init__(self, bus, name):
        self.got = []
        self.sink = bus.listen(f"room:{name}", self.got.append)

    async def wait(self, n):
        async def enough():
            return len(self.got) >= n
        await until(enough, 3)
        return self.got


@pytest_twisted.ensureDeferred
async def test_join_gives_the_log_position_and_since_reads_after_it(rooms):
    """A join says where the room's log ends; since() returns what came after, oldest first."""
    first = await rooms.join("R", user(1), "c1", "chat")
    assert first.position == "0-0"
    await rooms.post("R", user(1), "one", dialect="chat")
    two = await rooms.post("R", user(1), "two", dialect="chat")
    second = await rooms.join("R", user(2), "c2", "chat")
    assert second.position == two.id and second.seq == first.seq + 1
    three = await rooms.post("R", user(2), "three", dialect="chatroom")
    assert [m.text for m in await rooms.since("R", first.position)] == ["one", "two", "three"]
    assert [m.text for m in await rooms.since("R", second.position)] == ["three"]
    assert await rooms.since("R", three.id) == []
    assert [m.text for m in await rooms.since("R", "0-0", limit=1)] == ["one"]


@pytest_twisted.ensureDeferred
async def test_member_events_number_every_change(rooms, bus):
    """join, rebind (two events, two numbers) and leave events carry a growing seq."""
    events = Events(bus, "R")
    await rooms.join("R", Member.guest(), "c1", "chat")
    await rooms.rebind("R", "c1", user(1), "chat", reason="login")
    await rooms.rebind("R", "c1", user(2), "chat", reason="login")
    await rooms.leave("R", "c1")
    got = await events.wait(5)
    assert [e.kind[5:] for e in got] == ["member_joined", "member_joined", "member_left",
                                        "member_joined", "member_left"]
    seqs = [e.data["seq"] for e in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5


@pytest_twisted.ensureDeferred
async def test_resync_turns_missed_membership_into_events_once(rooms, bus):
    """With the member events lost, resync gives the lefts and joins that bring the roster
    up to date, once; afterwards the roster follows the bus again."""
    await rooms.join("R", user(1), "c1", "chat")
    await rooms.join("R", user(2), "c2", "chatroom")
    await rooms.join("R", Member.guest(), "g1", "chat")
    rooms.track("R")
    roster = rooms._rosters["R"]

    async def loaded():
        return roster.loaded
    await until(loaded, 3)
    bus.unsubscribe("room:R", roster.sink)     # the roster hears nothing: the link is "down"
    await rooms.leave("R", "c2")
    await rooms.join("R", user(3), "c3", "chatroom")
    await rooms.rebind("R", "g1", user(4), "chat", reason="login")
    await rooms.rebind("R", "c1", Member.guest(), "chat", reason="logout")
    await bus.subscribe("room:R", roster.sink)

    found = await rooms.resync()
    change = found.changes["R"]
    assert sorted((e.kind[12:], e.data["conn_id"], e.data["member"]["user_id"],
                   e.data.get("reason")) for e in change.events) == [
        ("joined", "c3", 3, None), ("joined", "g1", 4, None),
        ("left", "c1", 1, "resync"), ("left", "c2", 2, "resync")]
    assert [e.kind for e in change.events][:2] == ["room.member_left"] * 2
    assert all(e.data["seq"] == change.seq and e.data["resync"] for e in change.events)
    again = await rooms.resync()
    assert again.changes["R"].events == []

    await rooms.join("R", user(5), "c5", "chat")

    async def follows():
        return "c5" in roster.conns
    await until(follows, 3)
    rooms.untrack("R")
    assert rooms.tracked() == []


class Labels:
    """A bus codec that renders an event as a short label."""

    def encode_event(self, event):
        if event.kind == "room.message":
            return "msg " + event.data["text"]
        return f"{event.kind[12:]} {event.data['conn_id']}"


@pytest_twisted.ensureDeferred
async def test_feed_catches_up_in_order_and_once(rooms, clock):
    """A held feed shows the missed messages, the membership change, then only the held
    events that neither covered; a late copy of a caught-up message is dropped."""
    joined = await rooms.join("R", user(1), "c1", "chat")
    feed = RoomFeed(rooms, clock, roster=False)
    feed.entered("R", joined)
    shown = []

    def show(event, wire):
        shown.append(wire)

    def live(msg):
        return Event("room:R", "room.message", msg.to_dict())

    def member(conn, seq):
        return Event("room:R", "room.member_joined", {"room": "R", "conn_id": conn, "seq": seq})

    zero = await rooms.post("R", user(1), "zero", dialect="chat")
    assert feed.admit(live(zero), "msg zero")
    show(live(zero), "msg zero")
    await rooms.post("R", user(1), "one", dialect="chat")     # their events were lost
    two = await rooms.post("R", user(1), "two", dialect="chat")
    feed.hold()
    three = await rooms.post("R", user(1), "three", dialect="chat")
    for event, wire in ((live(two), "msg two (copy)"), (live(three), "msg three"),
                        (member("old", 4), "joined old"), (member("new", 6), "joined new")):
        assert not feed.admit(event, wire)
    change = RosterChange("R", 5, [member("x", 5)])
    await feed.catch_up(defer.succeed(Resync(rooms, {"R": change})), Labels(), show)
    assert shown == ["msg zero", "msg one", "msg two", "msg three", "joined x", "joined new"]
    assert feed.positions["R"] == id_key(three.id)
    assert not feed.admit(live(two), "msg two (late copy)")
    four = await rooms.post("R", user(1), "four", dialect="chat")
    assert feed.admit(live(four), "msg four")
