"""The room settings: --chatroom-capacity, --room-reserve-ttl, --chat-max-message,
--ktv-heart-type; checked when read, and what each changes on a running server."""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from imserver.config import ConfigError, resolve
from imserver.tap import Options


def test_defaults():
    """Without them: rooms of 10, reservations of 120 s, 4000 characters, heart type 1."""
    c = resolve({}, environ={})
    assert (c.chatroom_capacity, c.room_reserve_ttl, c.chat_max_message, c.ktv_heart_type) \
        == (10, 120.0, 4000, 1)


def test_every_source():
    """Command line, environment and file all set them; 0 capacity means no limit."""
    o = Options()
    o.parseOptions(["--chatroom-capacity", "0", "--room-reserve-ttl", "2.5",
                    "--chat-max-message", "300", "--ktv-heart-type", "2"])
    c = o.config
    assert (c.chatroom_capacity, c.room_reserve_ttl, c.chat_max_message, c.ktv_heart_type) \
        == (0, 2.5, 300, 2)
    c = resolve({}, environ={"IMSERVER_CHATROOM_CAPACITY": "25", "IMSERVER_KTV_HEART_TYPE": "2"})
    assert c.chatroom_capacity == 25 and c.ktv_heart_type == 2


@pytest.mark.parametrize("given, fragment", [
    ({"ktv_heart_type": ["3"]}, "--ktv-heart-type"),
    ({"ktv_heart_type": ["one"]}, "--ktv-heart-type"),
    ({"chatroom_capacity": ["-1"]}, "--chatroom-capacity"),
    ({"chatroom_capacity": ["ten"]}, "--chatroom-capacity"),
    ({"chatroom_capacity": ["2000000"]}, "--chatroom-capacity"),
    ({"room_reserve_ttl": ["0"]}, "--room-reserve-ttl"),
    ({"chat_max_message": ["0"]}, "--chat-max-message"),
    ({"chat_max_message": ["70000"]}, "--max-frame"),
    ({"chat_max_message": ["5000"], "max_frame": ["4096"]}, "--chat-max-message"),
])
def test_invalid_values_one_line(given, fragment):
    """Each bad value is refused with one line naming the option."""
    with pytest.raises(ConfigError) as e:
        resolve(given, environ={})
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_in_help():
    """twistd imserver --help lists them."""
    text = str(Options())
    for option in ("--chatroom-capacity", "--room-reserve-ttl", "--chat-max-message",
                   "--ktv-heart-type"):
        assert option in text


async def wait_for(conn, pred, timeout=5.0):
    msg, _ = await conn.recv_until(lambda raw: pred(json.loads(raw)), timeout)
    return json.loads(msg)


@pytest_twisted.ensureDeferred
async def test_a_server_follows_them(start_server, ws_connect):
    """Rooms created over 003 hold --chatroom-capacity, reservations last
    --room-reserve-ttl, every dialect refuses chat over --chat-max-message, and the KTV
    heart reply has --ktv-heart-type."""
    srv = await start_server(chatroom_capacity=1, room_reserve_ttl=7.0, chat_max_message=5,
                             ktv_heart_type=2)
    assert srv.core.rooms.reserve_ttl == 7.0 and srv.core.rooms.default_capacity == 1
    accounts = srv.core.accounts
    users = [await accounts.register(password="secret1", username=f"user{i}",
                                     phone=f"1380000000{i}") for i in (1, 2)]
    tokens = [(await accounts.issue_token(u.id)).token for u in users]

    first = await ws_connect(srv.ws_url + "/ws/chatroom")
    first.send({"type": "join", "data": {"room_name": "small", "token": tokens[0]}})
    assert (await wait_for(first, lambda m: True))["data"]["msg"] == "create"
    first.send({"type": "msg", "data": {"room_name": "small", "msg": "123456"}})
    assert (await wait_for(first, lambda m: True))["data"]["msg"] == "invalid msg"
    first.send({"type": "msg", "data": {"room_name": "small", "msg": "12345"}})
    assert (await wait_for(first, lambda m: True))["data"]["msg"] == "12345"
    second = await ws_connect(srv.ws_url + "/ws/chatroom")
    second.send({"type": "join", "data": {"room_name": "small", "token": tokens[1]}})
    assert (await wait_for(second, lambda m: True))["data"]["msg"] == "full room"

    chat = await ws_connect(srv.ws_url + "/ws/chat")
    chat.send({"type": "login", "data": {"username": "user2", "password": "secret1"}})
    await wait_for(chat, lambda m: m["type"] == "login")
    chat.send({"type": "send", "data": {"message": "123456"}})
    refused = await wait_for(chat, lambda m: m["type"] == "send")
    assert refused["errCode"] == 1 and refused["data"] == [["message", "消息过长"]]

    ktv = await ws_connect(srv.ws_url + "/ws/ktv")
    base = {"fullname": users[1].phone, "token": tokens[1], "room": "K"}
    ktv.send({"action": "join", **base})
    await wait_for(ktv, lambda m: "members" in (m.get("body") or {}))
    ktv.send({"action": "chat", "content": "123456", **base})
    refused = await wait_for(ktv, lambda m: m.get("caller_action") == "chat")
    assert refused["status"] == -1 and refused["message"] == "参数错误: content"
    ktv.send({"action": "heart", **base})
    heart = await wait_for(ktv, lambda m: m.get("caller_action") == "heart")
    assert heart["type"] == 2 and heart["body"] == {"heart": "success"}
