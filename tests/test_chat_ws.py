"""/ws/chat (000) over real sockets: every request type and push, as the document shows."""

from __future__ import annotations

import json
import re

import pytest_twisted
from twisted.internet import defer

HEX20 = re.compile(r"^[0-9a-f]{20}$")


def typed(kind):
    return lambda m: json.loads(m).get("type") == kind


async def expect(conn, kind, timeout=5.0):
    msg, _ = await conn.recv_until(typed(kind), timeout)
    return json.loads(msg)


async def chat(server, ws_connect, path="/ws/chat"):
    return await ws_connect(server.ws_url + path)


async def register(conn, username, password="secret1", **extra):
    conn.send({"type": "register", "data": {"username": username, "password": password,
                                            "repeat-password": password, **extra}})
    return await expect(conn, "register")


async def logged_in(server, ws_connect, username):
    conn = await chat(server, ws_connect)
    reply = await register(conn, username)
    assert reply["errCode"] == 0, reply
    return conn, reply["data"]


async def online_list(conn):
    conn.send({"type": "onlineaccount", "data": ""})
    return (await expect(conn, "onlineaccount"))["data"]


@pytest_twisted.ensureDeferred
async def test_guest_is_listed_in_room_1(server, ws_connect):
    """A new connection is a guest in room 1, listed by onlineaccount under a 20-hex client_id."""
    conn = await chat(server, ws_connect)
    data = await online_list(conn)
    assert len(data) == 1
    (client_id, session), = data.items()
    assert HEX20.match(client_id)
    assert session == {"room_id": 1, "level": "guest"}


@pytest_twisted.ensureDeferred
async def test_register_logs_in_and_announces_online(server, ws_connect):
    """register returns user_id/username/token/level and the room (not the newcomer) gets online."""
    watcher = await chat(server, ws_connect)
    await online_list(watcher)
    conn = await chat(server, ws_connect)
    reply = await register(conn, "lester")
    assert reply["errCode"] == 0 and reply["type"] == "register"
    data = reply["data"]
    assert data["username"] == "lester" and data["level"] == "user" and data["token"]
    assert isinstance(data["user_id"], int)
    online = await expect(watcher, "online")
    assert online == {"type": "online", "errCode": 0, "info": "",
                      "data": {"username": "lester", "user_id": data["user_id"],
                               "room_id": 1, "level": "user"}}
    sessions = await online_list(conn)
    assert sorted(s.get("username", "") for s in sessions.values()) == ["", "lester"]
    assert await conn.no_message(0.2)  # no "online" about itself


@pytest_twisted.ensureDeferred
async def test_register_validation(server, ws_connect):
    """Bad register input: errCode 1 参数错误！ with [field, reason] pairs; duplicates refused."""
    conn = await chat(server, ws_connect)
    reply = await register(conn, "bob", password="123")
    assert reply["errCode"] == 1 and reply["info"] == "参数错误！"
    assert reply["data"][0][0] == "password"
    conn.send({"type": "register", "data": {"username": "bob", "password": "secret1",
                                            "repeat-password": "secret2"}})
    reply = await expect(conn, "register")
    assert reply["data"] == [["repeat-password", "两次输入的密码不一致"]]
    assert (await register(conn, "bob"))["errCode"] == 0
    other = await chat(server, ws_connect)
    reply = await register(other, "BOB")
    assert reply["errCode"] == 1 and reply["data"][0][0] == "username"
    reply = await register(other, "carl", code="1234")
    assert reply["data"] == [["code", "请先获取验证码"]]


@pytest_twisted.ensureDeferred
async def test_code_then_register_binds_phone_for_other_dialects(start_server, ws_connect,
                                                                 http):
    """A verified code's phone becomes the account's: it logs in over 003 with user_tel."""
    server = await start_server(sms_echo=True)
    conn = await chat(server, ws_connect)
    conn.send({"type": "code", "data": {"phone": "13800001111"}})
    sent = await expect(conn, "code")
    assert sent["errCode"] == 0
    code = sent["data"]["code"]  # only with --sms-echo
    wrong = "0000" if code != "0000" else "1111"
    assert (await register(conn, "phoned", code=wrong))["data"] == [["code", "验证码错误"]]
    reply = await register(conn, "phoned", code=code)
    assert reply["errCode"] == 0, reply
    status, body = await http.get_json(server.url + "/auth/login",
                                       params={"user_tel": "13800001111",
                                               "user_password": "secret1"})
    assert body["res"] == "login successfully"
    assert body["data"]["user_name"] == "phoned"
    assert body["data"]["user_id"] == reply["data"]["user_id"]


@pytest_twisted.ensureDeferred
async def test_code_is_not_echoed_by_default(server, ws_connect):
    """Without --sms-echo the code reply does not carry the code."""
    conn = await chat(server, ws_connect)
    conn.send({"type": "code", "data": {"phone": "13800002222"}})
    sent = await expect(conn, "code")
    assert sent["errCode"] == 0 and "code" not in sent["data"]
    conn.send({"type": "code", "data": {"phone": "12ab"}})
    assert (await expect(conn, "code"))["data"] == [["phone", "手机号格式错误"]]


@pytest_twisted.ensureDeferred
async def test_login_failures_and_success(server, ws_connect):
    """login: unknown user and wrong password name the field; success returns a token."""
    a, _ = await logged_in(server, ws_connect, "admin1")
    conn = await chat(server, ws_connect)
    conn.send({"type": "login", "data": {"username": "nobody", "password": "secret1"}})
    assert await expect(conn, "login") == {"type": "login", "errCode": 1, "info": "参数错误！",
                                           "data": [["username", "用户名不存在"]]}
    conn.send({"type": "login", "data": {"username": "admin1", "password": "wrong!!"}})
    assert (await expect(conn, "login"))["data"] == [["password", "密码错误"]]
    conn.send({"type": "login", "data": {"username": "admin1", "password": "secret1"}})
    reply = await expect(conn, "login")
    assert reply["errCode"] == 0 and reply["data"]["username"] == "admin1"
    assert reply["data"]["token"]
    online = await expect(a, "online")
    assert online["data"]["username"] == "admin1"


@pytest_twisted.ensureDeferred
async def test_guest_cannot_send(server, ws_connect):
    """A guest's send is refused with errCode -1 登录后才能聊天."""
    conn = await chat(server, ws_connect)
    conn.send({"type": "send", "data": {"room_id": 1, "user_id": "", "message": "hi"}})
    reply = await expect(conn, "send")
    assert reply["errCode"] == -1 and reply["info"] == "登录后才能聊天"


@pytest_twisted.ensureDeferred
async def test_room_message_reaches_everyone_with_from(server, ws_connect):
    """A room send reaches every member, the sender and guests included, with from = session."""
    a, ad = await logged_in(server, ws_connect, "alice")
    b, _ = await logged_in(server, ws_connect, "bruce")
    guest = await chat(server, ws_connect)
    await online_list(guest)
    a.send({"type": "send", "data": {"room_id": 99, "user_id": "", "message": "hello"}})
    for conn in (a, b, guest):
        msg = await expect(conn, "send")
        assert msg["errCode"] == 0
        assert msg["data"]["message"] == "hello" and msg["data"]["room_id"] == 1
        assert msg["data"]["from"]["user_id"] == ad["user_id"]
        assert msg["data"]["from"]["username"] == "alice"
    b.send({"type": "send", "data": {"room_id": 1, "user_id": 0, "message": "zero"}})
    msg = await expect(guest, "send")  # user_id 0, like empty, means the room
    assert msg["data"]["message"] == "zero" and msg["data"]["user_id"] == ""


@pytest_twisted.ensureDeferred
async def test_private_message(server, ws_connect):
    """send with user_id goes to that user only, echoed to the sender; offline -> -2."""
    a, ad = await logged_in(server, ws_connect, "alice")
    b, bd = await logged_in(server, ws_connect, "bruce")
    c, _ = await logged_in(server, ws_connect, "chris")
    a.send({"type": "send", "data": {"user_id": bd["user_id"], "message": "psst"}})
    echo = await expect(a, "send")
    got = await expect(b, "send")
    for m in (echo, got):
        assert m["errCode"] == 0 and m["data"]["message"] == "psst"
        assert m["data"]["user_id"] == bd["user_id"]
        assert m["data"]["from"]["user_id"] == ad["user_id"]
    await c.no_message(0.3)
    assert all(json.loads(m)["type"] != "send" for m in c.queue.pending)
    a.send({"type": "send", "data": {"user_id": 99999999, "message": "anyone?"}})
    reply = await expect(a, "send")
    assert reply["errCode"] == -2 and reply["info"] == "对方已下线"


@pytest_twisted.ensureDeferred
async def test_logout_sends_unonline_to_the_whole_room(server, ws_connect):
    """logout: unonline to the room (the user included); the connection stays as a guest."""
    a, ad = await logged_in(server, ws_connect, "alice")
    b, _ = await logged_in(server, ws_connect, "bruce")
    a.send({"type": "logout", "data": []})
    reply = await expect(a, "logout")
    assert reply["errCode"] == 0
    for conn in (a, b):
        un = await expect(conn, "unonline")
        assert un["data"] == {"username": "alice", "user_id": ad["user_id"], "room_id": 1,
                              "level": "user"}
    a.send({"type": "send", "data": {"user_id": "", "message": "x"}})
    assert (await expect(a, "send"))["errCode"] == -1
    sessions = await online_list(b)
    assert {"room_id": 1, "level": "guest"} in sessions.values()


@pytest_twisted.ensureDeferred
async def test_restore(server, ws_connect):
    """restore: unknown token errCode 2; a valid one logs in with a new token, revoking the old."""
    a, ad = await logged_in(server, ws_connect, "alice")
    conn = await chat(server, ws_connect)
    conn.send({"type": "restore", "data": {"token": "nope"}})
    assert (await expect(conn, "restore"))["errCode"] == 2
    conn.send({"type": "restore", "data": {"token": ad["token"]}})
    reply = await expect(conn, "restore")
    assert reply["errCode"] == 0 and reply["data"]["user_id"] == ad["user_id"]
    assert reply["data"]["token"] != ad["token"]
    other = await chat(server, ws_connect)
    other.send({"type": "restore", "data": {"token": ad["token"]}})
    assert (await expect(other, "restore"))["errCode"] == 2
    other.send({"type": "restore", "data": {"token": reply["data"]["token"]}})
    assert (await expect(other, "restore"))["errCode"] == 0


@pytest_twisted.ensureDeferred
async def test_changeroom(server, ws_connect):
    """changeroom replies exactly; the old room sees the user leave, the new one sees online."""
    a, ad = await logged_in(server, ws_connect, "alice")
    b, _ = await logged_in(server, ws_connect, "bruce")
    c = await chat(server, ws_connect)
    c.send({"type": "changeroom", "data": {"room_id": 2}})
    assert json.loads(await c.recv()) == {"type": "changeroom", "errCode": 0, "info": "",
                                          "data": []}
    a.send({"type": "changeroom", "data": {"room_id": "2"}})
    assert (await expect(a, "changeroom"))["errCode"] == 0
    left = await expect(b, "unonline")
    assert left["data"]["user_id"] == ad["user_id"]
    online = await expect(c, "online")
    assert online["data"]["room_id"] == 2 and online["data"]["user_id"] == ad["user_id"]
    a.send({"type": "send", "data": {"user_id": "", "message": "in two"}})
    assert (await expect(c, "send"))["data"]["room_id"] == 2
    assert (await expect(a, "send"))["data"]["message"] == "in two"
    assert await b.no_message(0.3)
    assert sorted(s["room_id"] for s in (await online_list(a)).values()) == [2, 2]


@pytest_twisted.ensureDeferred
async def test_close_pushes(server, ws_connect):
    """Disconnects push close: the session for a user, only room_id for a guest."""
    watcher = await chat(server, ws_connect)
    a, ad = await logged_in(server, ws_connect, "alice")
    await expect(watcher, "online")
    await a.close()
    closed = await expect(watcher, "close")
    assert closed["data"] == {"username": "alice", "user_id": ad["user_id"], "room_id": 1,
                              "level": "user"}
    guest = await chat(server, ws_connect)
    await online_list(guest)
    await guest.close()
    assert (await expect(watcher, "close"))["data"] == {"room_id": 1}


@pytest_twisted.ensureDeferred
async def test_killed_tcp_connection_gives_close(server, ws_connect):
    """Dropping the TCP connection without a close frame still produces close."""
    watcher = await chat(server, ws_connect)
    a, ad = await logged_in(server, ws_connect, "alice")
    a.abort()
    closed = await expect(watcher, "close")
    assert closed["data"]["user_id"] == ad["user_id"]


@pytest_twisted.ensureDeferred
async def test_server_pings_and_drops_silent_clients(start_server, ws_connect):
    """The server pings; a client that answers stays, a silent one is dropped with close."""
    server = await start_server(ping_interval=0.2, idle_timeout=0.7)
    lively = await chat(server, ws_connect)
    ping = await expect(lively, "ping")
    assert ping == {"type": "ping", "errCode": 0}
    lively.send({"type": "ping", "status": 1})
    silent, sd = await logged_in(server, ws_connect, "quiet")
    silent.freeze()
    while True:  # the lively client answers every ping until the silent one is gone
        msg = json.loads(await lively.recv(5))
        if msg["type"] == "ping":
            lively.send({"type": "ping", "status": 1})
        elif msg["type"] == "close":
            break
    assert msg["data"]["user_id"] == sd["user_id"]
    assert len(await online_list(lively)) == 1


@pytest_twisted.ensureDeferred
async def test_userinfo(server, ws_connect, http):
    """userinfo needs a login and stores the profile fields."""
    conn = await chat(server, ws_connect)
    conn.send({"type": "userinfo", "data": {"email": "a@b.c"}})
    assert (await expect(conn, "userinfo"))["errCode"] == -1
    await register(conn, "profiled")
    conn.send({"type": "userinfo", "data": {"email": "a@b.c", "wechat": "wx", "qq": 12345,
                                            "age": "30", "gender": "f"}})
    reply = await expect(conn, "userinfo")
    assert reply["errCode"] == 0
    assert reply["data"] == {"email": "a@b.c", "wechat": "wx", "qq": "12345", "age": "30",
                             "gender": "f"}
    conn.send({"type": "userinfo", "data": {"age": "old"}})
    assert (await expect(conn, "userinfo"))["data"] == [["age", "年龄格式错误"]]


@pytest_twisted.ensureDeferred
async def test_bad_frames_get_errors(server, ws_connect):
    """Non-JSON, untyped and unknown frames get errCode 1; a ping without data is accepted."""
    conn = await chat(server, ws_connect)
    conn.send("not json")
    assert (await expect(conn, "error"))["errCode"] == 1
    conn.send({"data": {}})
    assert (await expect(conn, "error"))["errCode"] == 1
    conn.send({"type": "fly", "data": {}})
    reply = await expect(conn, "fly")
    assert reply["errCode"] == 1
    conn.send({"type": "ping", "status": 1})
    assert await conn.no_message(0.2)
    assert len(await online_list(conn)) == 1


@pytest_twisted.ensureDeferred
async def test_dialect_listen_serves_any_path(start_server, ws_connect):
    """--dialect-listen chat=ENDPOINT serves /ws/chat at every path of its port."""
    server = await start_server(dialect_listen={"chat": None})
    conn = await ws_connect(server.dialect_urls["chat"] + "/whatever")
    assert len(await online_list(conn)) == 1
