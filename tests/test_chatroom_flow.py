"""003 chatroom over real sockets: the document's flow, capacity under concurrency, errors."""

from __future__ import annotations

import json

import pytest_twisted
import treq
from twisted.internet import defer


async def account(server, http, tel, name, password="pw123456"):
    """Register and log in over 003 HTTP; returns the login data (token, user_id…)."""
    _, body = await http.get_json(server.url + "/auth/register", params={
        "user_tel": tel, "user_name": name, "user_password": password})
    assert body["res"] == "register successfully", body
    _, body = await http.get_json(server.url + "/auth/login", params={
        "user_tel": tel, "user_password": password})
    assert body["res"] == "login successfully", body
    return body["data"]


def packet(type_, room, msg="", token=None, name="test", avatar=""):
    data = {"user": {"user_name": name, "user_avatar": avatar}, "room_name": room, "msg": msg}
    if token:
        data["token"] = token
    return {"type": type_, "data": data}


async def recv(conn, timeout=5.0):
    return json.loads(await conn.recv(timeout))


@pytest_twisted.ensureDeferred
async def test_document_flow(server, ws_connect, http):
    """register, login, create, enter, join (create), msg, leave, exit — as the document writes."""
    alice = await account(server, http, "13900000001", "alice")
    bob = await account(server, http, "13900000002", "bob")
    _, body = await http.get_json(server.url + "/chatroom/create",
                                  params={"room_name": "TEST", "token": alice["token"]})
    assert body == {"res": "chatroom create successfully"}
    _, body = await http.post_json(server.url + "/chatroom/create",
                                   data={"room_name": "TEST", "token": bob["token"]})
    assert body == {"res": "chatroom already exist"}
    _, body = await http.get_json(server.url + "/chatroom/room", params={
        "room_name": "TEST", "user_name": "alice", "status": "1", "token": alice["token"]})
    assert body == {"res": "join chatroom"}
    a = await ws_connect(server.ws_url + "/ws/chatroom")
    a.send(packet("join", "TEST", token=alice["token"], name="alice"))
    assert await recv(a) == {"type": "user", "data": {
        "user": {"user_name": "alice", "user_avatar": "default"}, "room_name": "TEST",
        "msg": "create"}}
    _, body = await http.get_json(server.url + "/chatroom/room", params={
        "room_name": "TEST", "user_name": "bob", "status": "1"},
        headers={"Authorization": "Bearer " + bob["token"]})
    assert body == {"res": "join chatroom"}
    b = await ws_connect(server.ws_url + "/ws/chatroom")
    b.send(packet("join", "TEST", token=bob["token"], name="bob"))
    joined = {"type": "user", "data": {"user": {"user_name": "bob", "user_avatar": "default"},
                                       "room_name": "TEST", "msg": "join"}}
    assert await recv(b) == joined
    assert await recv(a) == joined
    _, body = await http.get_json(server.url + "/chatroom/list")
    assert body["room_list"] == body["rooms"] == [
        {"name": "TEST", "room_name": "TEST", "population": 2}]
    b.send(packet("msg", "TEST", "hello", name="someone-else"))
    said = {"type": "msg", "data": {"user": {"user_name": "bob", "user_avatar": "default"},
                                    "room_name": "TEST", "msg": "hello"}}
    assert await recv(a) == said
    assert await recv(b) == said
    b.send(packet("leave", "TEST", name="bob"))
    left = {"type": "user", "data": {"user": {"user_name": "bob", "user_avatar": "default"},
                                     "room_name": "TEST", "msg": "leave"}}
    assert await recv(b) == left
    assert await recv(a) == left
    _, body = await http.get_json(server.url + "/chatroom/room", params={
        "room_name": "TEST", "user_name": "bob", "status": "0", "token": bob["token"]})
    assert body == {"res": "leave chatroom"}
    _, body = await http.get_json(server.url + "/chatroom/room", params={
        "room_name": "TEST", "user_name": "bob", "status": "0", "token": bob["token"]})
    assert body == {"res": "user not exist"}
    _, body = await http.get_json(server.url + "/chatroom/list")
    assert body["rooms"][0]["population"] == 1


@pytest_twisted.ensureDeferred
async def test_twenty_concurrent_entries_admit_ten(server, http):
    """20 concurrent /chatroom/room entries into a room of 10 admit exactly 10."""
    users = [await account(server, http, f"1370000{i:04d}", f"u{i}") for i in range(20)]
    await http.get_json(server.url + "/chatroom/create",
                        params={"room_name": "crowd", "token": users[0]["token"]})

    async def enter(u):
        _, body = await http.get_json(server.url + "/chatroom/room", params={
            "room_name": "crowd", "status": "1", "token": u["token"]})
        return body["res"]

    results = await defer.gatherResults([defer.ensureDeferred(enter(u)) for u in users])
    assert sorted(results) == ["full room"] * 10 + ["join chatroom"] * 10
    _, body = await http.get_json(server.url + "/chatroom/list")
    assert body["rooms"][0]["population"] == 10


@pytest_twisted.ensureDeferred
async def test_room_endpoint_errors(server, http):
    """missing parameters, invalid token, invalid room, invalid status — GET and POST alike."""
    u = await account(server, http, "13900000009", "carol")
    url = server.url + "/chatroom/room"
    for call in (http.get_json, http.post_json):
        kw = "params" if call is http.get_json else "data"
        _, body = await call(url, **{kw: {"room_name": "R", "token": u["token"]}})
        assert body == {"res": "missing parameters"}
        _, body = await call(url, **{kw: {"room_name": "R", "status": "1", "user_name": "carol"}})
        assert body == {"res": "invalid token"}
        _, body = await call(url, **{kw: {"room_name": "nope", "status": "1",
                                          "token": u["token"]}})
        assert body == {"res": "invalid room"}
        _, body = await call(url, **{kw: {"room_name": "nope", "status": "7",
                                          "token": u["token"]}})
        assert body == {"res": "invalid status"}
    _, body = await http.get_json(server.url + "/chatroom/create", params={"room_name": "R"})
    assert body == {"res": "invalid token"}
    _, body = await http.get_json(server.url + "/chatroom/create", params={"token": u["token"]})
    assert body == {"res": "missing parameters"}
    _, body = await http.post_json(server.url + "/chatroom/create",
                                   json_body={"room_name": "J", "token": u["token"]})
    assert body == {"res": "chatroom create successfully"}


@pytest_twisted.ensureDeferred
async def test_legacy_auth_names_users(start_server, ws_connect, http):
    """With --legacy-auth, user_name alone works over HTTP and WebSocket, as documented."""
    server = await start_server(legacy_auth=True)
    await account(server, http, "13900000003", "dave")
    _, body = await http.get_json(server.url + "/chatroom/create", params={
        "room_name": "L", "user_name": "dave"})
    assert body == {"res": "chatroom create successfully"}
    _, body = await http.get_json(server.url + "/chatroom/room", params={
        "room_name": "L", "user_name": "dave", "status": "1"})
    assert body == {"res": "join chatroom"}
    _, body = await http.get_json(server.url + "/chatroom/room", params={
        "room_name": "L", "user_name": "ghost", "status": "1"})
    assert body == {"res": "user not exist"}
    conn = await ws_connect(server.ws_url + "/ws/chatroom")
    conn.send(packet("join", "L", name="test", avatar="a.png"))
    assert await recv(conn) == {"type": "user", "data": {
        "user": {"user_name": "test", "user_avatar": "a.png"}, "room_name": "L",
        "msg": "create"}}
    conn.send(packet("join", "L", name=""))
    assert (await recv(conn))["data"]["msg"] == "illegal data"


@pytest_twisted.ensureDeferred
async def test_join_needs_a_token(server, ws_connect, http):
    """Without --legacy-auth a join without a valid token is refused and joins nothing."""
    conn = await ws_connect(server.ws_url + "/ws/chatroom")
    conn.send(packet("join", "R"))
    assert await recv(conn) == {"type": "error", "data": {
        "user": {"user_name": "test", "user_avatar": ""}, "room_name": "R",
        "msg": "invalid token"}}
    conn.send(packet("join", "R", token="forged"))
    assert (await recv(conn))["data"]["msg"] == "invalid token"
    _, body = await http.get_json(server.url + "/chatroom/list")
    assert body["rooms"] == []


@pytest_twisted.ensureDeferred
async def test_packet_errors(server, ws_connect, http):
    """Each malformed packet gets its documented error; leave/msg outside a room are refused."""
    u = await account(server, http, "13900000004", "erin")
    conn = await ws_connect(server.ws_url + "/ws/chatroom")
    cases = [
        ("garbage", "invalid message"),
        ({"type": "join"}, "invalid message"),
        ({"type": "user", "data": {}}, "illegal type"),
        ({"type": "join", "data": "x"}, "invalid data"),
        ({"type": "join", "data": {"user": {"user_name": "x"}}}, "invalid data"),
        (packet("join", ""), "illegal data"),
        (packet("msg", "R", ""), "null message"),
        ({"type": "msg", "data": {"room_name": "R", "msg": {"a": 1}}}, "invalid msg"),
        (packet("msg", "R", "x" * 5000), "invalid msg"),
        (packet("msg", "R", "hi", token=u["token"]), "user not exist"),
    ]
    for frame, error in cases:
        conn.send(frame)
        reply = await recv(conn)
        assert reply["type"] == "error" and reply["data"]["msg"] == error, (frame, reply)
    conn.send(packet("leave", "nowhere"))
    assert (await recv(conn))["data"]["msg"] == "room not exist"
    conn.send(packet("join", "R", token=u["token"]))
    assert (await recv(conn))["data"]["msg"] == "create"
    other = await ws_connect(server.ws_url + "/ws/chatroom")
    other.send(packet("leave", "R"))
    reply = await recv(other)
    assert reply["type"] == "user" and reply["data"]["msg"] == "user not exist"


@pytest_twisted.ensureDeferred
async def test_user_data(server, http):
    """/auth/user_data finds a user by name or phone, never with a password."""
    await account(server, http, "13900000005", "frank")
    for params in ({"user_name": "frank"}, {"user_tel": "13900000005"}):
        _, body = await http.get_json(server.url + "/auth/user_data", params=params)
        assert body == {"res": "get user data successfully", "data": {"user": {
            "user_tel": 13900000005, "user_name": "frank", "user_avatar_url": "default"}}}
    for params in ({"user_name": "nobody"}, {}):
        _, body = await http.get_json(server.url + "/auth/user_data", params=params)
        assert body == {"res": "user not exist", "data": {}}


@pytest_twisted.ensureDeferred
async def test_disconnect_leaves_rooms(server, ws_connect, http):
    """A closed or killed connection leaves its rooms: the others get a leave packet."""
    a = await account(server, http, "13900000006", "gina")
    b = await account(server, http, "13900000007", "hank")
    ca = await ws_connect(server.ws_url + "/ws/chatroom")
    ca.send(packet("join", "R", token=a["token"]))
    await recv(ca)
    cb = await ws_connect(server.ws_url + "/ws/chatroom")
    cb.send(packet("join", "R", token=b["token"]))
    await recv(cb)
    assert (await recv(ca))["data"]["msg"] == "join"
    cb.abort()
    left = await recv(ca)
    assert left["type"] == "user" and left["data"]["msg"] == "leave"
    assert left["data"]["user"]["user_name"] == "hank"
    _, body = await http.get_json(server.url + "/chatroom/list")
    assert body["rooms"][0]["population"] == 1


@pytest_twisted.ensureDeferred
async def test_dialect_listen_bare_port(start_server, ws_connect, http):
    """--dialect-listen chatroom=ENDPOINT serves the 003 WebSocket at a bare ws://host:port."""
    server = await start_server(dialect_listen={"chatroom": None})
    u = await account(server, http, "13900000008", "ivan")
    conn = await ws_connect(server.dialect_urls["chatroom"])
    conn.send(packet("join", "TEST", token=u["token"]))
    assert (await recv(conn))["data"]["msg"] == "create"
