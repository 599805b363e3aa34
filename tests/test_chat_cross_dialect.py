"""One room, three dialects: 000, 002 and 003 clients in one room see each other, in one
process and spread over two processes of one deployment."""

from __future__ import annotations

import json

import pytest
import pytest_twisted


def kind_of(msg):
    m = json.loads(msg)
    return m.get("type"), m


async def wait_for(conn, pred, timeout=5.0):
    msg, _ = await conn.recv_until(lambda raw: pred(json.loads(raw)), timeout)
    return json.loads(msg)


async def people(core):
    """Three accounts: 000 logs in by username, 002 by phone, 003 with a token."""
    accounts = core.accounts
    chat = await accounts.register(password="secret1", username="chatter", phone="13600000001")
    ktv = await accounts.register(password="secret1", phone="13600000002", nickname="皮皮")
    room = await accounts.register(password="secret1", username="roomer", phone="13600000003")
    return {"chat": chat, "ktv": (ktv, (await accounts.issue_token(ktv.id)).token),
            "chatroom": (room, (await accounts.issue_token(room.id)).token)}


async def join_all(srv_chat, srv_ktv, srv_room, ws_connect, who, room="5"):
    c = await ws_connect(srv_chat.ws_url + "/ws/chat")
    c.send({"type": "login", "data": {"username": "chatter", "password": "secret1"}})
    assert (await wait_for(c, lambda m: m.get("type") == "login"))["errCode"] == 0
    c.send({"type": "changeroom", "data": {"room_id": int(room)}})
    assert (await wait_for(c, lambda m: m.get("type") == "changeroom"))["errCode"] == 0

    ktv_user, ktv_token = who["ktv"]
    k = await ws_connect(srv_ktv.ws_url + "/ws/ktv")
    k.send({"action": "join", "fullname": ktv_user.phone, "token": ktv_token, "room": room})
    await wait_for(k, lambda m: isinstance(m.get("body"), dict) and "members" in m["body"])

    room_user, room_token = who["chatroom"]
    r = await ws_connect(srv_room.ws_url + "/ws/chatroom")
    r.send({"type": "join", "data": {"user": {"user_name": "roomer", "user_avatar": ""},
                                     "room_name": room, "msg": "", "token": room_token}})
    assert (await wait_for(r, lambda m: m.get("type") == "user"))["data"]["msg"] == "join"
    # 000 sees the 002 and 003 members come online
    online = await wait_for(c, lambda m: m.get("type") == "online"
                            and m["data"]["username"] == "roomer")
    assert online["data"]["room_id"] == int(room)
    return c, k, r


async def exchange(c, k, r, who, room="5"):
    chat_user = who["chat"]
    ktv_user, _ = who["ktv"]
    room_user, _ = who["chatroom"]

    c.send({"type": "send", "data": {"room_id": room, "user_id": "", "message": "from 000"}})
    got = await wait_for(r, lambda m: m.get("type") == "msg")
    assert got["data"] == {"user": {"user_name": "chatter", "user_avatar": "default"},
                           "room_name": room, "msg": "from 000"}
    got = await wait_for(k, lambda m: isinstance(m.get("body"), dict)
                         and m["body"].get("content") == "from 000")
    assert got["type"] == 2 and got["body"]["action"] == "chat"
    assert got["body"]["fullname"] == chat_user.phone

    r.send({"type": "msg", "data": {"room_name": room, "msg": "from 003"}})
    got = await wait_for(c, lambda m: m.get("type") == "send"
                         and m["data"]["message"] == "from 003")
    assert got["data"]["from"]["user_id"] == room_user.id
    assert got["data"]["from"]["username"] == "roomer" and got["data"]["room_id"] == int(room)
    got = await wait_for(k, lambda m: isinstance(m.get("body"), dict)
                         and m["body"].get("content") == "from 003")
    assert got["body"]["fullname"] == room_user.phone

    k.send({"action": "chat", "fullname": ktv_user.phone, "token": who["ktv"][1], "room": room,
            "content": "from 002"})
    got = await wait_for(c, lambda m: m.get("type") == "send"
                         and m["data"]["message"] == "from 002")
    assert got["data"]["from"]["user_id"] == ktv_user.id
    got = await wait_for(r, lambda m: m.get("type") == "msg" and m["data"]["msg"] == "from 002")
    assert got["data"]["room_name"] == room

    # each dialect's own view of leaving: 000 'close', 003 'leave'
    await k.close()
    left = await wait_for(c, lambda m: m.get("type") == "close")
    assert left["data"]["user_id"] == ktv_user.id
    left = await wait_for(r, lambda m: m.get("type") == "user" and m["data"]["msg"] == "leave")
    assert left["data"]["user"]["user_name"] == ktv_user.phone


@pytest_twisted.ensureDeferred
async def test_one_room_three_dialects(server, ws_connect):
    """A 000, a 002 and a 003 client in one room each get the others' messages, own format."""
    who = await people(server.core)
    c, k, r = await join_all(server, server, server, ws_connect, who)
    await exchange(c, k, r, who)


@pytest_twisted.ensureDeferred
async def test_one_room_three_dialects_two_processes(start_server, ws_connect):
    """The same holds with 000 on one process and 002, 003 on another."""
    a = await start_server()
    b = await start_server()
    who = await people(a.core)
    c, k, r = await join_all(a, b, b, ws_connect, who)
    await exchange(c, k, r, who)


@pytest_twisted.ensureDeferred
async def test_members_of_a_dead_process_leave(server, ws_connect):
    """A process that stops answering: its members' close (000) and leave (003) follow."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    from imserver.core.presence import Presence
    from imserver.core.rooms import Member

    core = server.core
    who = await people(core)
    watcher = await ws_connect(server.ws_url + "/ws/chat")
    watcher.send({"type": "onlineaccount", "data": ""})
    await wait_for(watcher, lambda m: m.get("type") == "onlineaccount")
    room_user, room_token = who["chatroom"]
    r = await ws_connect(server.ws_url + "/ws/chatroom")
    r.send({"type": "join", "data": {"room_name": "1", "token": room_token}})
    await wait_for(r, lambda m: m.get("type") == "user")
    ghost_user = who["chat"]
    ghost = Presence(core.store, reactor, "deadbeef0001", dead_after=0.2)
    await ghost._tick()
    conn = ghost.new_conn_id()
    await ghost.connect(conn, ghost_user.id, "chat")
    await core.rooms.join("1", Member.from_user(ghost_user), conn, "chat", capacity=0)
    await wait_for(watcher, lambda m: m.get("type") == "online"
                   and m["data"]["username"] == "chatter")
    await deferLater(reactor, 0.3, lambda: None)   # its heartbeat expires
    await core.presence.reap()
    closed = await wait_for(watcher, lambda m: m.get("type") == "close"
                            and m["data"].get("user_id") == ghost_user.id)
    assert closed["data"]["room_id"] == 1
    left = await wait_for(r, lambda m: m.get("type") == "user" and m["data"]["msg"] == "leave")
    assert left["data"]["user"]["user_name"] == "chatter"
    assert await core.rooms.population("1") == 2


@pytest_twisted.ensureDeferred
async def test_frozen_chatroom_client_is_dropped(start_server, ws_connect):
    """A 003 client that stops reading (no FIN) is dropped by WebSocket pings; others see leave."""
    server = await start_server(ping_interval=0.5, idle_timeout=1.0)
    who = await people(server.core)
    _, token_a = who["chatroom"]
    ktv_user, token_b = who["ktv"]
    a = await ws_connect(server.ws_url + "/ws/chatroom")
    a.send({"type": "join", "data": {"room_name": "R", "token": token_a}})
    await wait_for(a, lambda m: m.get("type") == "user")
    b = await ws_connect(server.ws_url + "/ws/chatroom")
    b.send({"type": "join", "data": {"room_name": "R", "token": token_b}})
    await wait_for(b, lambda m: m.get("type") == "user")
    await wait_for(a, lambda m: m.get("type") == "user" and m["data"]["msg"] == "join")
    b.freeze()
    left = await wait_for(a, lambda m: m.get("type") == "user" and m["data"]["msg"] == "leave",
                          timeout=10)
    assert left["data"]["user"]["user_name"] == ktv_user.phone
