"""
Malformed and out-of-order actions at /ws/ktv: the server answers each with
the 002 envelope or closes that one connection cleanly, never crashes, and
a stage in another room goes on undisturbed.
"""

from __future__ import annotations

import json

import pytest_twisted
import treq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from twisted.internet import defer, reactor
from twisted.internet.threads import blockingCallFromThread

from tests.conftest import blocking
from tests.test_ktv_ws import Ktv, joined, user

ACTIONS = ["join", "status", "ask", "cut", "boardcast", "sing", "del", "heart", "chat",
           "history", "device", "listen", "del_music", "cut_music", "cut_video", "watch",
           "set_duration", "close", "reconnect"]
CLEAN_CLOSES = {1000, 1002, 1007, 1009, 4002, 4008}
ENVELOPE = {"status", "type", "body", "message", "timestamp"}


def frames(phone, token):
    value = hs.one_of(
        hs.none(), hs.booleans(), hs.integers(-5, 10**6), hs.floats(),
        hs.text(max_size=20),
        hs.sampled_from(["0", "1", "2", "-1", "1.5", "60", "NaN", "1e309", "4", "999"]),
        hs.lists(hs.integers(), max_size=2), hs.dictionaries(hs.text(max_size=3),
                                                             hs.integers(), max_size=2))
    action = hs.one_of(hs.sampled_from(ACTIONS), hs.sampled_from(ACTIONS),
                       hs.sampled_from(["", "JOIN", "x", None, 5, ["sing"]]))
    shaped = hs.fixed_dictionaries(
        {"action": action,
         "fullname": hs.one_of(hs.just(phone), hs.just(phone), value),
         "token": hs.one_of(hs.just(token), hs.just(token), value),
         "room": hs.one_of(hs.sampled_from(["F1", "F1", "F2", ""]), value)},
        optional={k: hs.one_of(value, hs.sampled_from(["1", "2", "3"]))
                  for k in ("ack", "sid", "duration", "content", "device", "value", "vid",
                            "current", "body")},
    ).map(lambda d: ("text", json.dumps(d, ensure_ascii=False).encode("utf-8")))
    noise = hs.one_of(
        hs.text(max_size=100).map(lambda t: ("text", t.encode("utf-8"))),
        hs.binary(max_size=100).map(lambda b: ("binary", b)),
        hs.binary(min_size=1, max_size=30).map(lambda b: ("text", b)),   # maybe bad UTF-8
        hs.integers(64 * 1024 + 1, 80 * 1024).map(lambda n: ("text", b"{" + b" " * n + b"}")),
        hs.integers(2000, 5000).map(lambda n: ("text", b"[" * n + b"]" * n)),   # deep JSON
    )
    return hs.lists(hs.one_of(shaped, shaped, shaped, noise), min_size=1, max_size=10)


def run_in_reactor(coro_fn):
    return blockingCallFromThread(reactor, lambda: defer.ensureDeferred(coro_fn()))


@pytest_twisted.ensureDeferred
async def test_random_actions_never_disturb_another_room(start_server, ws_connect):
    """Whatever one connection sends, the server stays up and another room's stage goes on."""
    # the calm room talks after every example: no per-connection rate limit here
    srv = await start_server(ktv_ask_timeout=0.5, ktv_rest=0.5, messages_per_second=100000)
    a = await joined(ws_connect, srv, "13800000001", room="calm")
    b = await joined(ws_connect, srv, "13800000002", room="calm")
    a.send("sing", sid="1", duration=600)
    await a.reply("sing")
    a.send("ask", ack=1)
    singing = await b.status(lambda x: x["status"] == "1")
    phone, token = await user(srv, "13800000009")
    counter = iter(range(10**9))

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(frames(phone, token))
    def check(batch):
        async def one():
            conn = await ws_connect(srv.ws_url + "/ws/ktv")
            for kind, data in batch:
                if conn.closed.called:
                    break
                conn.protocol.sendMessage(data, isBinary=(kind == "binary"))
            # the calm room: chat still flows and the stage is where it was
            n = next(counter)
            a.send("chat", content=f"ping {n}")
            await b.expect(lambda m: m.get("body", {}).get("content") == f"ping {n}")
            b.send("status")
            status = (await b.reply("status"))["body"]
            assert (status["status"], status["fullname"], status["start_time"]) == \
                ("1", a.fullname, singing["start_time"])
            assert [m["fullname"] for m in status["members"]] == [a.fullname, b.fullname]
            # what the fuzzing connection got back is the 002 envelope, or a clean close
            while conn.queue.pending:
                reply = json.loads(await conn.recv())
                assert ENVELOPE <= set(reply), reply
                assert reply["status"] in (0, -1) and isinstance(reply["timestamp"], str)
                if reply["status"] == -1:
                    assert reply["message"] and reply["body"] == {}
            if conn.closed.called:
                code, _ = await conn.closed
                assert code in CLEAN_CLOSES, code
            else:
                await conn.close()

        run_in_reactor(one)

    await blocking(check)
    assert next(counter) >= 40   # every example ran against the server
    assert (await treq.get(srv.url + "/health")).code == 200
    assert not a.conn.closed.called and not b.conn.closed.called
    # the fuzzing user's connections are all gone from the rooms they reached
    for _ in range(100):
        if await srv.core.rooms.population("F1") == 0:
            break
        await deferLater_(0.02)
    assert await srv.core.rooms.population("F1") == 0
    k = Ktv(await ws_connect(srv.ws_url + "/ws/ktv"), phone, token, "F1")
    k.send("join")
    assert (await k.status())["count"] == 1


def deferLater_(seconds):
    from twisted.internet.task import deferLater
    return deferLater(reactor, seconds, lambda: None)
