"""/ws/ktv end to end: real servers on a real Redis, real WebSocket clients."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

ASK, REST = 1.0, 1.0
FAST = dict(ktv_ask_timeout=ASK, ktv_rest=REST)


async def user(srv, phone, nickname=""):
    accounts = srv.core.accounts
    u = await accounts.register(password="secret1", phone=phone, nickname=nickname)
    tok = await accounts.issue_token(u.id)
    return phone, tok.token


class Ktv:
    """A KTV client: sends actions as one user, buffers what it has not looked at yet."""

    def __init__(self, conn, fullname, token, room):
        self.conn, self.fullname, self.token, self.room = conn, fullname, token, room
        self.buffer = []
        self.statuses = []   # every status push, in order
        self.version = -1    # of the last status push looked at

    def send(self, action, **kw):
        msg = {"action": action, "fullname": self.fullname, "token": self.token,
               "room": self.room}
        msg.update(kw)
        self.conn.send(msg)

    def _note(self, m):
        if is_status_push(m):
            self.statuses.append(m["body"])

    async def expect(self, pred, timeout=5.0):
        for i, m in enumerate(self.buffer):
            if pred(m):
                return self.buffer.pop(i)
        deadline = reactor.seconds() + timeout
        while True:
            left = deadline - reactor.seconds()
            if left <= 0:
                raise AssertionError(f"{self.fullname}: nothing matched; buffered {self.buffer!r}")
            m = json.loads(await self.conn.recv(left))
            self._note(m)
            if pred(m):
                return m
            self.buffer.append(m)

    async def reply(self, action, timeout=5.0):
        return await self.expect(lambda m: m.get("caller_action") == action
                                 and m.get("type") in (1, 2), timeout)

    async def status(self, pred=lambda b: True, timeout=5.0):
        """The next status push (newer than the last looked at) whose body satisfies ``pred``."""
        m = await self.expect(lambda m: is_status_push(m) and m["body"]["version"] > self.version
                              and pred(m["body"]), timeout)
        self.version = m["body"]["version"]
        self.buffer = [x for x in self.buffer
                       if not (is_status_push(x) and x["body"]["version"] <= self.version)]
        return m["body"]

    async def drain(self, within=0.3):
        await deferLater(reactor, within, lambda: None)
        while self.conn.queue.pending:
            m = json.loads(await self.conn.recv(1))
            self._note(m)
            self.buffer.append(m)


def is_status_push(m):
    return (m.get("type") == 1 and "caller_action" not in m and isinstance(m.get("body"), dict)
            and "songs" in m["body"])


async def joined(ws_connect, srv, phone, room="R1", url=None, nickname=""):
    fullname, token = await user(srv, phone, nickname)
    conn = await ws_connect(url or srv.ws_url + "/ws/ktv")
    k = Ktv(conn, fullname, token, room)
    k.send("join")
    await k.status(lambda b: fullname in [m["fullname"] for m in b["members"]])
    return k


def check_times(body, now=None):
    """end_time - start_time is the duration; current_time is a number."""
    assert isinstance(body["current_time"], int)
    for f in ("start_time", "end_time", "duration", "status", "sid"):
        assert isinstance(body[f], str), f
    assert float(body["end_time"]) - float(body["start_time"]) == float(body["duration"])
    if now is not None:
        assert abs(int(body["start_time"]) - now) <= 1


@pytest_twisted.ensureDeferred
async def test_join_pushes_status_to_every_member(start_server, ws_connect):
    """join has no reply of its own: the status goes to every member, the joiner included."""
    srv = await start_server(**FAST)
    a = await joined(ws_connect, srv, "13800000001", nickname="皮皮")
    body = a.statuses[-1]
    assert body["status"] == "4" and body["count"] == 1 and body["duration"] == "86400"
    assert body["members"] == [{"nick": "皮皮", "fullname": "13800000001", "avatar": ""}]
    check_times(body, int(reactor.seconds()))
    b = await joined(ws_connect, srv, "13800000002")
    seen = await a.status(lambda b: b["count"] == 2)
    assert [m["fullname"] for m in seen["members"]] == ["13800000001", "13800000002"]
    assert [m["nick"] for m in seen["members"]] == ["皮皮", "13800000002"]
    a.send("join")
    err = await a.reply("join")
    assert (err["status"], err["message"]) == (-1, "你已在房间中")
    await b.conn.close()
    gone = await a.status(lambda b: b["count"] == 1)
    assert gone["members"][0]["fullname"] == "13800000001"


@pytest_twisted.ensureDeferred
async def test_before_join_and_bad_auth(server, ws_connect):
    """Actions before join say 请先进入房间; a token must belong to its fullname."""
    phone, token = await user(server, "13800000001")
    other, _ = await user(server, "13800000002")
    conn = await ws_connect(server.ws_url + "/ws/ktv")
    k = Ktv(conn, phone, token, "R1")
    for action in ("status", "heart", "chat", "sing", "cut"):
        k.send(action, content="x", sid="1", duration=3)
        err = await k.reply(action)
        assert (err["status"], err["message"], err["caller_fullname"]) == \
            (-1, "请先进入房间", phone)
    conn.send({"action": "join", "fullname": other, "token": token, "room": "R1"})
    err = await k.reply("join")
    assert (err["status"], err["message"]) == (-1, "身份验证失败")
    conn.send({"action": "join", "fullname": phone, "room": "R1"})
    err = await k.reply("join")
    assert err["message"] == "身份验证失败"
    conn.send("{broken")
    err = await k.expect(lambda m: m.get("status") == -1)
    assert err["message"] == "消息格式错误"
    k.send("join")
    await k.status()
    k.send("status", room="R2")
    assert (await k.reply("status"))["message"] == "请先进入房间"


@pytest_twisted.ensureDeferred
async def test_whole_cycle(start_server, ws_connect):
    """idle -> asking -> singing -> resting -> asking -> idle, with correct times in each push."""
    srv = await start_server(**FAST)
    a = await joined(ws_connect, srv, "13800000001")
    b = await joined(ws_connect, srv, "13800000002")
    a.send("sing", sid="1", duration="2")
    ok = await a.reply("sing")
    assert (ok["status"], ok["body"], ok["message"]) == (0, {}, "success")
    asking = await a.status(lambda b: b["status"] == "2")
    assert (asking["fullname"], asking["sid"], asking["duration"]) == ("13800000001", "1", "1")
    assert asking["name"] == "Twinkle, Twinkle, Little Star"   # the sample catalogue's sid 1
    check_times(asking, int(reactor.seconds()))
    b.send("sing", sid="unknown-sid", duration=3)
    await b.reply("sing")
    queued = await b.status(lambda x: len(x["songs"]) == 1)
    assert queued["songs"][0]["sid"] == "unknown-sid" and queued["songs"][0]["name"] == ""
    a.send("ask", ack=1)
    singing = await b.status(lambda x: x["status"] == "1")
    t_sing = reactor.seconds()
    assert (singing["fullname"], singing["duration"], singing["sid"]) == \
        ("13800000001", "2", "1")
    assert singing["lrc"].endswith(".lrc") and singing["link"]
    check_times(singing, int(t_sing))
    resting = await b.status(lambda x: x["status"] == "3", timeout=4)
    assert reactor.seconds() - t_sing >= 1.8
    assert (resting["duration"], resting["fullname"], resting["sid"]) == ("1", "", "0")
    check_times(resting, int(reactor.seconds()))
    asking = await b.status(lambda x: x["status"] == "2", timeout=3)
    assert asking["fullname"] == "13800000002" and asking["songs"] == []
    check_times(asking)
    idle = await b.status(lambda x: x["status"] == "4", timeout=3)   # B never answers
    assert idle["duration"] == "86400"
    check_times(idle)
    await a.drain()
    assert [s["status"] for s in a.statuses] == \
        ["4", "4", "2", "2", "1", "3", "2", "4"]
    versions = [s["version"] for s in a.statuses]
    assert versions == sorted(set(versions))


@pytest_twisted.ensureDeferred
async def test_cut_del_decline(start_server, ws_connect):
    """cut goes to rest, del leaves the queue, ack 0 asks the next, each as documented."""
    srv = await start_server(ktv_ask_timeout=5.0, ktv_rest=5.0)
    a = await joined(ws_connect, srv, "13800000001")
    b = await joined(ws_connect, srv, "13800000002")
    c = await joined(ws_connect, srv, "13800000003")
    a.send("sing", sid="1", duration=60)
    await a.reply("sing")
    b.send("sing", sid="2", duration=60)
    await b.reply("sing")
    b.send("sing", sid="3", duration=60)
    err = await b.reply("sing")
    assert (err["status"], err["message"]) == (-1, "不能重复排麦")
    c.send("sing", sid="3", duration=60)
    await c.reply("sing")
    await a.status(lambda x: len(x["songs"]) == 2)
    b.send("del")
    ok = await b.reply("del")
    assert (ok["status"], ok["message"]) == (0, "取消排麦成功")
    await a.status(lambda x: [s["fullname"] for s in x["songs"]] == ["13800000003"])
    b.send("del")
    assert (await b.reply("del"))["message"] == "未找到麦序"
    b.send("ask", ack=1)
    assert (await b.reply("ask"))["message"] == "不能演唱不是自己点的歌~"
    a.send("ask", ack=0)   # declines: C is asked at once, no rest
    asked = await a.status(lambda x: x["status"] == "2" and x["fullname"] == "13800000003")
    assert asked["songs"] == []
    c.send("cut")
    assert (await c.reply("cut"))["message"] == "当前不可切歌"
    c.send("ask", ack=1)
    await a.status(lambda x: x["status"] == "1")
    b.send("cut")
    assert (await b.reply("cut"))["message"] == "只有演唱者才能切歌"
    c.send("cut")
    rest = await a.status(lambda x: x["status"] == "3")
    assert rest["duration"] == "5" and rest["fullname"] == ""


@pytest_twisted.ensureDeferred
async def test_music_and_video(start_server, ws_connect):
    """listen plays music (status 5); watch needs a free stage; seek and cut_video."""
    srv = await start_server(**FAST)
    a = await joined(ws_connect, srv, "13800000001")
    b = await joined(ws_connect, srv, "13800000002")
    a.send("watch", vid="999")
    assert (await a.reply("watch"))["message"] == "视频不存在"
    a.send("listen", sid="2", duration=30)
    assert (await a.reply("listen"))["status"] == 0
    music = await b.status(lambda x: x["status"] == "5")
    assert (music["sid"], music["duration"], music["fullname"]) == ("2", "30", "13800000001")
    a.send("watch", vid="2")
    assert (await a.reply("watch"))["message"] == "视频已经在播放中啦"
    b.send("cut_music")
    assert (await b.reply("cut_music"))["message"] == "只有点歌者才能切歌"
    a.send("cut_music")
    assert (await a.reply("cut_music"))["status"] == 0
    await b.status(lambda x: x["status"] == "4")
    a.send("watch", vid="2")
    assert (await a.reply("watch"))["status"] == 0
    video = await b.status(lambda x: x["status"] == "6")
    assert (video["vid"], video["name"], video["duration"]) == ("2", "Flower", "60")
    check_times(video, int(reactor.seconds()))
    b.send("set_duration", current=100)
    assert (await b.reply("set_duration"))["message"] == "进度调整错误"
    b.send("set_duration", current=20)
    assert (await b.reply("set_duration"))["status"] == 0
    seek = await a.status(lambda x: x["status"] == "6" and x["version"] > video["version"])
    remaining = int(seek["end_time"]) - seek["current_time"]
    assert 39 <= remaining <= 41
    b.send("cut_video")
    assert (await b.reply("cut_video"))["message"] == "只有点播者才能切视频"
    a.send("cut_video")
    await b.status(lambda x: x["status"] == "4")


@pytest_twisted.ensureDeferred
async def test_chat_history_heart_device(start_server, ws_connect):
    """chat reaches every member (type 2), history is newest first, heart and device answer."""
    srv = await start_server(**FAST)
    a = await joined(ws_connect, srv, "13800000001", nickname="皮皮")
    b = await joined(ws_connect, srv, "13800000002")
    a.send("chat", content="test")
    push = await b.expect(lambda m: m.get("caller_action") == "chat")
    assert (push["type"], push["status"]) == (2, 0)
    assert push["body"] == {"content": "test", "nick": "皮皮", "fullname": "13800000001",
                            "action": "chat", "room": "R1"}
    await a.expect(lambda m: m.get("caller_action") == "chat")   # the sender too
    b.send("chat", content="second")
    await a.expect(lambda m: m.get("caller_action") == "chat")
    b.send("history")
    hist = await b.reply("history")
    assert hist["type"] == 2
    assert [h["content"] for h in hist["body"]] == ["second", "test"]
    assert isinstance(hist["body"][0]["timestamp"], float)
    assert set(hist["body"][0]) == {"content", "nick", "room", "action", "timestamp", "fullname"}
    a.send("heart")
    heart = await a.reply("heart")
    assert heart["body"] == {"heart": "success"} and heart["type"] == 1
    a.send("device", device="video", value="0")
    dev = await b.expect(lambda m: m.get("caller_action") == "device")
    assert dev["body"] == {"device": "video", "fullname": "13800000001", "room": "R1",
                           "value": 0}
    assert dev["type"] == 2


@pytest_twisted.ensureDeferred
async def test_chatroom_client_sees_ktv_chat(start_server, ws_connect):
    """A 003 member of the same room sees KTV chat, and KTV members see its messages."""
    srv = await start_server(**FAST)
    a = await joined(ws_connect, srv, "13800000001", nickname="皮皮")
    accounts = srv.core.accounts
    bob = await accounts.register(password="secret1", username="bob", phone="13900000009")
    token = (await accounts.issue_token(bob.id)).token
    cr = await ws_connect(srv.ws_url + "/ws/chatroom")
    user = {"user_name": "bob", "user_avatar": ""}
    cr.send({"type": "join", "data": {"user": user, "room_name": "R1", "msg": "",
                                      "token": token}})
    joined_packet = json.loads(await cr.recv())
    assert (joined_packet["type"], joined_packet["data"]["msg"]) == ("user", "join")
    seen = await a.status(lambda b: b["count"] == 2)   # the 003 member is a member
    assert "13900000009" in [m["fullname"] for m in seen["members"]]
    a.send("chat", content="from ktv")
    got, _ = await cr.recv_until(lambda m: json.loads(m).get("type") == "msg")
    got = json.loads(got)
    assert got["data"]["msg"] == "from ktv" and got["data"]["room_name"] == "R1"
    cr.send({"type": "msg", "data": {"user": user, "room_name": "R1", "msg": "from 003"}})
    push = await a.expect(lambda m: m.get("body", {}).get("content") == "from 003")
    assert push["type"] == 2 and push["body"]["fullname"] == "13900000009"
    assert push["body"]["nick"] == "bob" and push["body"]["action"] == "chat"
    a.send("history")
    hist = await a.reply("history")
    assert [h["content"] for h in hist["body"]] == ["from 003", "from ktv"]
    await cr.close()
    await a.status(lambda b: b["count"] == 1)


@pytest_twisted.ensureDeferred
async def test_leaving_takes_the_member_off_the_stage(start_server, ws_connect):
    """A member whose connection drops leaves the queue and the mic; the others are told."""
    srv = await start_server(ktv_ask_timeout=5.0, ktv_rest=5.0)
    a = await joined(ws_connect, srv, "13800000001")
    b = await joined(ws_connect, srv, "13800000002")
    a.send("sing", sid="1", duration=60)
    await a.reply("sing")
    a.send("ask", ack=1)
    await b.status(lambda x: x["status"] == "1")
    a.conn.abort()
    rest = await b.status(lambda x: x["status"] == "3" and x["count"] == 1)
    assert rest["fullname"] == ""


@pytest_twisted.ensureDeferred
async def test_silent_member_is_dropped(start_server, ws_connect):
    """Without heart (or any message) within the idle timeout a member is dropped and leaves."""
    srv = await start_server(ping_interval=0.4, idle_timeout=1.0, **FAST)
    a = await joined(ws_connect, srv, "13800000001")
    b = await joined(ws_connect, srv, "13800000002")
    b.send("sing", sid="1", duration=60)
    await b.reply("sing")
    for _ in range(4):   # a keeps sending heart; b says nothing more
        await deferLater(reactor, 0.4, lambda: None)
        a.send("heart")
    code, _ = await b.conn.closed
    assert code == 4000
    left = await a.status(lambda x: x["count"] == 1 and x["status"] == "4")
    assert left["songs"] == []
    assert not a.conn.closed.called


@pytest_twisted.ensureDeferred
async def test_close_and_reconnect(start_server, ws_connect):
    """close is acknowledged then closed; reconnect takes over from the old connection."""
    srv = await start_server(ktv_ask_timeout=5.0, ktv_rest=5.0)
    a = await joined(ws_connect, srv, "13800000001")
    watcher = await joined(ws_connect, srv, "13800000002")
    a.send("sing", sid="1", duration=60)
    await a.reply("sing")
    conn2 = await ws_connect(srv.ws_url + "/ws/ktv")
    a2 = Ktv(conn2, a.fullname, a.token, "R1")
    a2.send("join")
    assert (await a2.reply("join"))["message"] == "你已在房间中"
    a2.send("reconnect")
    assert (await a2.reply("reconnect"))["status"] == 0
    code, _ = await a.conn.closed
    assert code == 4002
    a2.send("ask", ack=1)   # still the one being asked: the place was kept
    singing = await watcher.status(lambda x: x["status"] == "1")
    assert singing["fullname"] == a.fullname and singing["count"] == 2
    a2.send("close")
    assert (await a2.reply("close"))["status"] == 0
    code, _ = await conn2.closed
    assert code == 1000
    await watcher.status(lambda x: x["status"] == "3" and x["count"] == 1)


@pytest_twisted.ensureDeferred
async def test_room_full(start_server, ws_connect):
    """A KTV room holds 12 members; the 13th is told 房间人数已满."""
    srv = await start_server(**FAST)
    for i in range(12):
        fullname, token = await user(srv, f"1380000{i:04d}")
        conn = await ws_connect(srv.ws_url + "/ws/ktv")
        conn.send({"action": "join", "fullname": fullname, "token": token, "room": "big"})
    fullname, token = await user(srv, "13899999999")
    k = Ktv(await ws_connect(srv.ws_url + "/ws/ktv"), fullname, token, "big")
    for _ in range(50):
        if await srv.core.rooms.population("big") == 12:
            break
        await deferLater(reactor, 0.05, lambda: None)
    k.send("join")
    err = await k.reply("join")
    assert (err["status"], err["message"]) == (-1, "房间人数已满")


@pytest_twisted.ensureDeferred
async def test_dialect_listen(start_server, ws_connect):
    """--dialect-listen ktv=... serves the KTV WebSocket at any path of its port."""
    srv = await start_server(dialect_listen={"ktv": True}, **FAST)
    k = await joined(ws_connect, srv, "13800000001", url=srv.dialect_urls["ktv"] + "/")
    assert k.statuses[-1]["status"] == "4"


# -- two processes --------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_two_processes_record_one_sequence(start_server, ws_connect):
    """Members on two processes see one identical sequence for a cycle with three singers."""
    quick = dict(ktv_ask_timeout=2.0, ktv_rest=0.5)
    one = await start_server(**quick)
    two = await start_server(**quick)
    a = await joined(ws_connect, one, "13800000001")
    b = await joined(ws_connect, two, "13800000002", url=two.ws_url + "/ws/ktv")
    fullname, token = await user(one, "13800000003")
    c = Ktv(await ws_connect(two.ws_url + "/ws/ktv"), fullname, token, "R1")
    c.send("join")
    await c.status(lambda x: x["count"] == 3)
    await a.status(lambda x: x["count"] == 3)
    await b.status(lambda x: x["count"] == 3)
    for k in (a, b, c):
        k.send("sing", sid="1", duration=1)
        await k.reply("sing")
    for k in (a, b, c):   # each sings when asked
        await k.status(lambda x: x["status"] == "2" and x["fullname"] == k.fullname, timeout=8)
        k.send("ask", ack=1)
    for k in (a, b, c):
        await k.status(lambda x: x["status"] == "4" and x["songs"] == [], timeout=8)
        await k.drain(0.2)

    def seq(k):
        start = next(i for i, s in enumerate(k.statuses) if s["count"] == 3)
        return [(s["version"], s["status"], s["fullname"], tuple(x["fullname"] for x in s["songs"]))
                for s in k.statuses[start:]]

    assert seq(a) == seq(b) == seq(c)
    statuses = [s[1] for s in seq(a)]
    assert statuses.count("1") == 3 and statuses.count("3") == 3
    versions = [s[0] for s in seq(a)]
    assert versions == sorted(set(versions))


@pytest_twisted.ensureDeferred
async def test_members_of_a_dead_process_leave_the_stage(start_server, ws_connect):
    """When a process dies, its KTV members leave room, queue and mic; the others are told."""
    from imserver.core.presence import Presence
    from imserver.core.rooms import Member
    from imserver.core.stage import Entry

    srv = await start_server(ktv_ask_timeout=30.0, ktv_rest=30.0)
    a = await joined(ws_connect, srv, "13800000001")
    core = srv.core
    ghost_user = await core.accounts.register(password="secret1", phone="13800000002")
    # a process that registers itself, takes one KTV member, then stops answering
    ghost = Presence(core.store, reactor, "deadbeef0000", dead_after=0.2)
    await ghost._tick()
    conn = ghost.new_conn_id()
    await ghost.connect(conn, ghost_user.id, "ktv", {"room": "R1", "fullname": "13800000002"})
    await core.rooms.join("R1", Member.from_user(ghost_user), conn, "ktv")
    await core.stage.sing("R1", Entry(fullname="13800000002", sid="1", duration=60))
    asked = await a.status(lambda x: x["status"] == "2" and x["count"] == 2)
    assert asked["fullname"] == "13800000002"
    await deferLater(reactor, 0.3, lambda: None)
    await core.presence.reap()
    after = await a.status(lambda x: x["status"] == "4" and x["count"] == 1)
    assert after["songs"] == [] and after["fullname"] == ""
