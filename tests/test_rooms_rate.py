"""
Room messages per user, counted in Redis: the rooms core refuses a sender
past ``post_rate`` a second (a user over all connections, dialects and
processes; a guest per connection), and each dialect says so in its own
error form: 000 errCode 1, 003 an ``error`` packet, 002 ``status`` -1.
"""

from __future__ import annotations

import json
import math

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.task import deferLater

from imserver.core.limits import Limits
from imserver.core.rooms import Member, Rooms, TooFast

RATE = 3


def user(uid):
    return Member(user_id=uid, name=f"u{uid}", username=f"u{uid}", level="user")


@pytest_twisted.ensureDeferred
async def test_core_counts_a_user_over_connections_and_a_guest_per_connection(
        store, bus, presence):
    """post_rate holds per user whatever the connection, per connection for guests,
    and a new second starts afresh."""
    clock = task.Clock()
    clock.advance(1_700_000_000)
    rooms = Rooms(store, bus, presence, clock, limits=Limits(store, clock), post_rate=2)
    await rooms.post("R", user(1), "a", dialect="chat", conn_id="c1")
    await rooms.post("R", user(1), "b", dialect="ktv", conn_id="c2")
    with pytest.raises(TooFast):
        await rooms.post("R", user(1), "c", dialect="chatroom", conn_id="c3")
    await rooms.post("R", user(2), "other user", dialect="chat", conn_id="c4")
    for conn in ("g1", "g2"):
        for text in ("x", "y"):
            await rooms.post("R", Member.guest(), text, dialect="chatroom", conn_id=conn)
    with pytest.raises(TooFast):
        await rooms.post("R", Member.guest(), "z", dialect="chatroom", conn_id="g1")
    clock.advance(1)
    await rooms.post("R", user(1), "next second", dialect="chat", conn_id="c1")
    assert [m.text for m in await rooms.history("R", 3)] == ["next second", "y", "x"]


# -- over real sockets ------------------------------------------------------------------

async def wait_for(conn, pred, timeout=5.0):
    msg, _ = await conn.recv_until(lambda raw: pred(json.loads(raw)), timeout)
    return json.loads(msg)


async def in_one_second(burst):
    """Run ``burst()`` from the start of a second; again if it spilled into the next one."""
    for _ in range(3):
        now = reactor.seconds()
        await deferLater(reactor, math.ceil(now) - now + 0.01, lambda: None)
        second = int(reactor.seconds())
        result = await burst()
        if int(reactor.seconds()) == second:
            return result
    raise AssertionError("the machine is too slow to send four messages within a second")


async def chat_login(url, ws_connect, username):
    conn = await ws_connect(url + "/ws/chat")
    conn.send({"type": "login", "data": {"username": username, "password": "secret1"}})
    assert (await wait_for(conn, lambda m: m["type"] == "login"))["errCode"] == 0
    return conn


@pytest_twisted.ensureDeferred
async def test_000_send_limit_holds_across_processes(start_server, ws_connect):
    """One user on two processes: past the rate the send is refused (errCode 1) and the
    room gets only what was allowed."""
    one = await start_server(messages_per_second=RATE)
    two = await start_server(messages_per_second=RATE)
    await one.core.accounts.register(password="secret1", username="chatter")
    a = await chat_login(one.ws_url, ws_connect, "chatter")
    b = await chat_login(two.ws_url, ws_connect, "chatter")
    watcher = await ws_connect(one.ws_url + "/ws/chat")
    watcher.send({"type": "onlineaccount", "data": ""})
    await wait_for(watcher, lambda m: m["type"] == "onlineaccount")

    async def burst():
        tag = str(reactor.seconds())
        for i in (1, 2):
            a.send({"type": "send", "data": {"message": f"{tag} a{i}"}})
            await wait_for(a, lambda m: m["type"] == "send" and m["errCode"] == 0
                           and m["data"]["message"] == f"{tag} a{i}")
        b.send({"type": "send", "data": {"message": f"{tag} b1"}})
        b.send({"type": "send", "data": {"message": f"{tag} b2"}})
        replies = [await wait_for(b, lambda m: m["type"] == "send" and (
            m["errCode"] != 0 or m["data"]["message"].startswith(f"{tag} b")))
            for _ in (1, 2)]
        return tag, replies

    tag, replies = await in_one_second(burst)
    assert replies[0]["errCode"] == 0 and replies[0]["data"]["message"] == f"{tag} b1"
    assert replies[1] == {"type": "send", "errCode": 1, "info": "发送太频繁，请稍后再试",
                          "data": []}
    seen = [(await wait_for(watcher, lambda m: m["type"] == "send"
                            and m["data"]["message"].startswith(tag)))["data"]["message"]
            for _ in range(3)]
    assert seen == [f"{tag} a1", f"{tag} a2", f"{tag} b1"]
    assert await watcher.no_message(0.3)


async def room_login(srv, http, tel, name):
    _, body = await http.get_json(srv.url + "/auth/register", params={
        "user_tel": tel, "user_name": name, "user_password": "pw123456"})
    _, body = await http.get_json(srv.url + "/auth/login", params={
        "user_tel": tel, "user_password": "pw123456"})
    return body["data"]["token"]


async def room_join(srv, ws_connect, token, room="R"):
    conn = await ws_connect(srv.ws_url + "/ws/chatroom")
    conn.send({"type": "join", "data": {"room_name": room, "token": token}})
    await wait_for(conn, lambda m: m["type"] == "user")
    return conn


@pytest_twisted.ensureDeferred
async def test_003_msg_limit_holds_across_connections(start_server, ws_connect, http):
    """One user on two connections: past the rate a msg gets the error packet."""
    srv = await start_server(messages_per_second=RATE)
    token = await room_login(srv, http, "13900000001", "alice")
    a = await room_join(srv, ws_connect, token)
    b = await room_join(srv, ws_connect, token)

    async def burst():
        tag = str(reactor.seconds())
        for i in (1, 2):
            a.send({"type": "msg", "data": {"room_name": "R", "msg": f"{tag} a{i}"}})
            await wait_for(a, lambda m: m["type"] == "msg" and m["data"]["msg"] == f"{tag} a{i}")
        b.send({"type": "msg", "data": {"room_name": "R", "msg": f"{tag} b1"}})
        b.send({"type": "msg", "data": {"room_name": "R", "msg": f"{tag} b2"}})
        got = [await wait_for(b, lambda m: m["type"] == "error"
                              or m["data"]["msg"] in (f"{tag} b1", f"{tag} b2"))
               for _ in (1, 2)]
        return tag, got

    tag, got = await in_one_second(burst)
    assert got[0]["type"] == "msg" and got[0]["data"]["msg"] == f"{tag} b1"
    assert got[1] == {"type": "error", "data": {
        "user": {"user_name": "", "user_avatar": ""}, "room_name": "R",
        "msg": "too many messages"}}


@pytest_twisted.ensureDeferred
async def test_002_chat_counts_with_the_users_other_dialects(start_server, ws_connect, http):
    """A user chatting over 003 and 002 at once (two rooms): past the rate the KTV chat is
    refused with status -1 and a clear message."""
    srv = await start_server(messages_per_second=RATE)
    token = await room_login(srv, http, "13900000002", "bob")
    r = await room_join(srv, ws_connect, token)
    k = await ws_connect(srv.ws_url + "/ws/ktv")
    # the user is in room R over 003: 002 admits them to another room only
    base = {"fullname": "13900000002", "token": token, "room": "K"}
    k.send({"action": "join", **base})
    await wait_for(k, lambda m: m.get("type") == 1 and "members" in (m.get("body") or {}))

    async def burst():
        tag = str(reactor.seconds())
        for i in (1, 2):
            r.send({"type": "msg", "data": {"room_name": "R", "msg": f"{tag} r{i}"}})
            await wait_for(r, lambda m: m["type"] == "msg" and m["data"]["msg"] == f"{tag} r{i}")
        k.send({"action": "chat", "content": f"{tag} k1", **base})
        await wait_for(k, lambda m: m.get("type") == 2 and m["body"].get("content") == f"{tag} k1")
        k.send({"action": "chat", "content": f"{tag} k2", **base})
        return await wait_for(k, lambda m: m.get("caller_action") == "chat")

    refused = await in_one_second(burst)
    assert refused["status"] == -1 and refused["message"] == "发言太频繁，请稍后再试"
    assert refused["body"] == {} and refused["type"] == 1
