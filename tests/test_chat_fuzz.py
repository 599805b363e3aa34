"""
Bad input at /ws/chat and /ws/chatroom: whatever one connection sends, the
server answers in the dialect's own form (or closes that connection
cleanly), never crashes, and two other clients keep chatting.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import blockingCallFromThread

from tests.conftest import blocking

# Autobahn seeds and uses ``random`` on the reactor thread while hypothesis
# draws examples in another: hypothesis warns, but no strategy uses it.
pytestmark = pytest.mark.filterwarnings(
    "ignore::hypothesis.errors.HypothesisDeprecationWarning")

CHAT_TYPES = ["code", "register", "userinfo", "login", "send", "logout", "restore",
              "onlineaccount", "changeroom", "ping"]
CLEAN_CLOSES = {1000, 1002, 1007, 1009, 4000, 4008}


def values():
    return hs.one_of(
        hs.none(), hs.booleans(), hs.integers(-5, 10**20), hs.floats(), hs.text(max_size=20),
        hs.sampled_from(["", "1", "2", "secret1", "13800000000", "x" * 40, "\u0000", "房间"]),
        hs.lists(hs.integers(), max_size=2),
        hs.dictionaries(hs.text(max_size=3), hs.integers(), max_size=2))


def noise():
    return hs.one_of(
        hs.text(max_size=100).map(lambda t: ("text", t.encode("utf-8"))),
        hs.binary(max_size=100).map(lambda b: ("binary", b)),
        hs.binary(min_size=1, max_size=30).map(lambda b: ("text", b)),  # maybe bad UTF-8
        hs.integers(64 * 1024 + 1, 140 * 1024).map(lambda n: ("text", b"{" + b" " * n + b"}")),
        hs.integers(2000, 5000).map(lambda n: ("text", b"[" * n + b"]" * n)),  # deep JSON
    )


def chat_frames():
    data = hs.one_of(values(), hs.fixed_dictionaries({}, optional={
        k: values() for k in ("phone", "username", "password", "repeat-password", "code",
                              "email", "wechat", "qq", "age", "gender", "room_id", "user_id",
                              "message", "token")}))
    shaped = hs.fixed_dictionaries(
        {"type": hs.one_of(hs.sampled_from(CHAT_TYPES), hs.sampled_from(CHAT_TYPES), values())},
        optional={"data": data, "status": values()},
    ).map(lambda d: ("text", json.dumps(d, ensure_ascii=False).encode("utf-8")))
    return hs.lists(hs.one_of(shaped, shaped, shaped, noise()), min_size=1, max_size=10)


def chatroom_frames(token):
    user = hs.one_of(values(), hs.fixed_dictionaries({}, optional={
        "user_name": values(), "user_avatar": values()}))
    data = hs.one_of(values(), hs.fixed_dictionaries({}, optional={
        "user": user, "room_name": hs.one_of(hs.sampled_from(["F1", "F2", "", "calm"]),
                                             values()),
        "msg": values(), "token": hs.one_of(hs.just(token), values())}))
    shaped = hs.fixed_dictionaries(
        {}, optional={"type": hs.one_of(hs.sampled_from(["join", "leave", "msg", "msg"]),
                                        values()),
                      "data": data},
    ).map(lambda d: ("text", json.dumps(d, ensure_ascii=False).encode("utf-8")))
    return hs.lists(hs.one_of(shaped, shaped, shaped, noise()), min_size=1, max_size=10)


def run_in_reactor(coro_fn):
    return blockingCallFromThread(reactor, lambda: defer.ensureDeferred(coro_fn()))


async def wait_for(conn, pred, timeout=5.0):
    msg, _ = await conn.recv_until(lambda raw: pred(json.loads(raw)), timeout)
    return json.loads(msg)


async def fuzz(conn_url, ws_connect, batch, check_reply):
    conn = await ws_connect(conn_url)
    for kind, data in batch:
        if conn.closed.called:
            break
        conn.protocol.sendMessage(data, isBinary=(kind == "binary"))
    return conn


async def settle(conn, check_reply):
    while conn.queue.pending:
        check_reply(json.loads(await conn.recv()))
    if conn.closed.called:
        code, _ = await conn.closed
        assert code in CLEAN_CLOSES, code
    else:
        await conn.close()


def chat_reply(reply):
    if reply == {"type": "ping", "errCode": 0}:
        return
    assert set(reply) == {"type", "errCode", "info", "data"}, reply
    assert isinstance(reply["errCode"], int) and isinstance(reply["info"], str)


def chatroom_reply(reply):
    assert set(reply) == {"type", "data"}, reply
    assert reply["type"] in ("user", "msg", "error")
    assert set(reply["data"]) == {"user", "room_name", "msg"}


@pytest_twisted.ensureDeferred
async def test_chat_bad_input_never_disturbs_others(start_server, ws_connect):
    """Random 000 frames: envelope replies or clean closes; room 1 keeps chatting."""
    srv = await start_server(messages_per_second=100000)
    accounts = srv.core.accounts
    calm = []
    for name in ("calm_a", "calm_b"):
        await accounts.register(password="secret1", username=name)
        conn = await ws_connect(srv.ws_url + "/ws/chat")
        conn.send({"type": "login", "data": {"username": name, "password": "secret1"}})
        assert (await wait_for(conn, lambda m: m["type"] == "login"))["errCode"] == 0
        calm.append(conn)
    a, b = calm
    counter = iter(range(10**9))

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(chat_frames())
    def check(batch):
        async def one():
            conn = await fuzz(srv.ws_url + "/ws/chat", ws_connect, batch, chat_reply)
            n = next(counter)
            a.send({"type": "send", "data": {"user_id": "", "message": f"calm {n}"}})
            got = await wait_for(b, lambda m: m["type"] == "send"
                                 and m["data"]["message"] == f"calm {n}"
                                 and m["data"]["from"]["username"] == "calm_a")
            assert got["data"]["room_id"] == 1
            await settle(conn, chat_reply)

        run_in_reactor(one)

    await blocking(check)
    assert next(counter) >= 40
    assert (await treq.get(srv.url + "/health")).code == 200
    assert not a.closed.called and not b.closed.called


@pytest_twisted.ensureDeferred
async def test_chatroom_bad_input_never_disturbs_others(start_server, ws_connect):
    """Random 003 packets: 003 packets back or clean closes; another room keeps chatting."""
    srv = await start_server(messages_per_second=100000)
    accounts = srv.core.accounts
    calm = []
    for name, tel in (("calm_a", "13500000001"), ("calm_b", "13500000002")):
        u = await accounts.register(password="secret1", username=name, phone=tel)
        token = (await accounts.issue_token(u.id)).token
        conn = await ws_connect(srv.ws_url + "/ws/chatroom")
        conn.send({"type": "join", "data": {"room_name": "calm", "token": token}})
        await wait_for(conn, lambda m: m["type"] == "user" and m["data"]["msg"] in ("create",
                                                                                   "join"))
        calm.append(conn)
    a, b = calm
    fuzzer = await accounts.register(password="secret1", username="fuzzer")
    token = (await accounts.issue_token(fuzzer.id)).token
    counter = iter(range(10**9))

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(chatroom_frames(token))
    def check(batch):
        async def one():
            conn = await fuzz(srv.ws_url + "/ws/chatroom", ws_connect, batch, chatroom_reply)
            n = next(counter)
            a.send({"type": "msg", "data": {"room_name": "calm", "msg": f"calm {n}"}})
            got = await wait_for(b, lambda m: m["type"] == "msg"
                                 and m["data"]["msg"] == f"calm {n}")
            assert got["data"]["user"]["user_name"] == "calm_a"
            await settle(conn, chatroom_reply)

        run_in_reactor(one)

    await blocking(check)
    assert next(counter) >= 40
    assert (await treq.get(srv.url + "/health")).code == 200
    assert not a.closed.called and not b.closed.called
    for name in ("F1", "F2"):  # the fuzzing connections have all left
        for _ in range(100):
            if await srv.core.rooms.population(name) == 0:
                break
            await deferLater(reactor, 0.02, lambda: None)
        assert await srv.core.rooms.population(name) == 0
    assert await srv.core.rooms.population("calm") == 2
