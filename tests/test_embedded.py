"""The embedded redis-server: supervision, restarts, and the store reconnecting."""

import os
import signal

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from imserver.store.embedded import EmbeddedRedis
from imserver.store.redis import Store


async def sleep(s):
    await deferLater(reactor, s, lambda: None)


async def eventually(check, timeout=10.0, step=0.05):
    deadline = reactor.seconds() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert reactor.seconds() < deadline, "condition not reached in time"
        await sleep(step)


@pytest_twisted.ensureDeferred
async def test_health_follows_redis_and_store_reconnects(start_server, http, tmp_path):
    """/health is 503 while an external Redis is down and 200 again once it is back."""
    redis = EmbeddedRedis(reactor, tmp_path / "ext")
    await redis.start()
    try:
        srv = await start_server(redis=redis.url)
        assert (await http.get_json(srv.url + "/health"))[0] == 200
        await redis.stop()

        async def down():
            code, body = await http.get_json(srv.url + "/health")
            return code == 503 and body["redis"] == "down"

        await eventually(down)
        redis.stopping = False
        await redis.start()

        async def up():
            return (await http.get_json(srv.url + "/health"))[0] == 200

        await eventually(up)
        await srv.core.store.execute("SET", "im:test", "007")
        assert await srv.core.store.execute("GET", "im:test") == "007"  # no number conversion
        await srv.stop()
    finally:
        await redis.stop()


@pytest_twisted.ensureDeferred
async def test_child_killed_is_restarted_with_its_data(start_server, http):
    """A redis-server child killed mid-run is restarted, and the data is still there."""
    srv = await start_server(redis=None)
    embedded = srv.service.embedded
    _, body = await http.get_json(srv.url + "/auth/register", params={
        "user_tel": "13800000001", "user_name": "alice", "user_password": "pw1"})
    assert body == {"res": "register successfully"}
    await srv.core.store.execute("BGREWRITEAOF")
    await sleep(0.3)  # appendfsync everysec: give the AOF its second
    os.kill(embedded.transport.pid, signal.SIGKILL)

    async def restarted():
        if embedded.restarts < 1:
            return False
        code, body = await http.get_json(srv.url + "/auth/login", params={
            "user_tel": "13800000001", "user_password": "pw1"})
        return body.get("res") == "login successfully"

    await eventually(restarted, timeout=15)


@pytest_twisted.ensureDeferred
async def test_leftover_process_is_shut_down(tmp_path):
    """A redis-server left running by a killed parent is stopped before a new one starts."""
    first = EmbeddedRedis(reactor, tmp_path)
    await first.start()
    old_pid = first.transport.pid
    store = Store(reactor, first.url)
    await store.execute("SET", "im:k", "v")
    await store.close()
    first.stopping = True  # forget it, as a SIGKILLed parent would
    second = EmbeddedRedis(reactor, tmp_path)
    await second.start()
    try:
        assert second.transport.pid != old_pid
        await eventually(lambda: _dead(old_pid))
        store = Store(reactor, second.url)
        assert await store.execute("GET", "im:k") == "v"
        await store.close()
    finally:
        await second.stop()


async def _dead(pid):
    return not EmbeddedRedis._alive(pid)
