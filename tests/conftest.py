"""
Shared fixtures: a real redis-server, real core objects, real servers, real clients.

- ``redis_server`` (session): one throwaway ``redis-server`` on a unix socket
  in a temp dir, started with the same binary and arguments as the embedded
  Redis of the service. ``redis_url`` gives each test a FLUSHALL-ed database.
- ``store``, ``bus``, ``accounts``, ``limits``, ``presence``: core objects on it.
- ``start_server(**config)``: the real ``IMService`` on an ephemeral loopback
  port against that Redis; stopped at teardown. Call it twice for two
  processes of one deployment.
- ``ws_connect(url)``: a real Autobahn WebSocket client.
- ``cut_bus_link(server)``: Redis drops a server's pub/sub link until the
  test restores it.
- ``until(predicate)`` (``from conftest import until``): poll a plain or
  async predicate on the reactor until it holds.
- ``http``: JSON helpers over real ``treq``.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
import pytest_twisted
import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, endpoints, reactor, threads
from twisted.internet.task import deferLater

from imserver.bus import Bus
from imserver.config import Config
from imserver.core.accounts import Accounts
from imserver.core.limits import Limits
from imserver.core.presence import Presence
from imserver.core.sms import LogSender
from imserver.service import IMService
from imserver.store.embedded import EmbeddedRedis, find_redis_server
from imserver.store.redis import Store, Subscription, parse_url

# cheap hashes in tests: argon2 cost is a setting, the code path is the same
FAST_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_cost": 1024}


def _raw_command(path: str, *args: str) -> bytes:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(path)
    cmd = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    s.sendall(cmd.encode())
    reply = s.recv(65536)
    s.close()
    return reply


@pytest.fixture(scope="session")
def redis_server():
    """A redis-server child on a unix socket, for the whole test session."""
    tmp = tempfile.mkdtemp(prefix="imserver-test-redis-")
    embedded = EmbeddedRedis(reactor, tmp, binary=find_redis_server())
    embedded.dir.mkdir(parents=True, exist_ok=True)
    argv = embedded._argv()
    argv[argv.index("--appendonly") + 1] = "no"  # throwaway data: no fsync cost
    proc = subprocess.Popen(argv, cwd=str(embedded.dir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            if _raw_command(embedded.socket, "PING").startswith(b"+PONG"):
                break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("test redis-server did not start")
        time.sleep(0.02)
    yield embedded.socket
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server):
    """A fresh (FLUSHALL-ed) database on the session's redis-server."""
    _raw_command(redis_server, "FLUSHALL")
    return f"unix://{redis_server}?db=0"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def blocking(fn, *args, **kw):
    return threads.deferToThread(fn, *args, **kw)


@pytest_twisted.async_yield_fixture
async def store(redis_url):
    s = Store(reactor, redis_url)
    await s.ping()
    yield s
    await s.close()


@pytest_twisted.async_yield_fixture
async def bus(store, redis_url):
    b = Bus(store, lambda on_msg, on_re: Subscription(reactor, redis_url, on_msg, on_re))
    await b.subscription.whenReady()
    yield b
    await b.close()


@pytest.fixture
def limits(store):
    return Limits(store, reactor)


@pytest.fixture
def accounts(store, limits):
    return Accounts(store, reactor, blocking, LogSender(echo=True), sms_echo=True,
                    limits=limits, **FAST_ARGON2)


@pytest.fixture
def presence(store, bus):
    return Presence(store, reactor, bus.process_id)


class ServerHandle:
    def __init__(self, service: IMService):
        self.service = service
        self.config = service.config
        port = service.ports[0].getHost().port
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        self.dialect_urls = {name: f"ws://127.0.0.1:{p.getHost().port}"
                             for name, p in service.dialect_ports.items()}

    @property
    def core(self):
        return self.service.core

    async def stop(self):
        if self.service.running:
            await self.service.stopService()


@pytest_twisted.async_yield_fixture
async def start_server(redis_url, tmp_path):
    """``await start_server(**config_overrides)`` -> ServerHandle (real sockets)."""
    handles = []

    async def start(**overrides):
        dialect_listen = overrides.pop("dialect_listen", {})
        port = free_port()
        settings = dict(
            listen=(f"tcp:{port}:interface=127.0.0.1",),
            public_url=f"http://127.0.0.1:{port}",
            dialect_listen=tuple((n, "tcp:0:interface=127.0.0.1") for n in dialect_listen),
            redis=redis_url,
            data_dir=tmp_path / f"data{len(handles)}",
            **FAST_ARGON2,
        )
        settings.update(overrides)
        config = Config(**settings).check()
        service = IMService(config, reactor)
        service._in_test = True
        service.startService()
        await service.ready
        handle = ServerHandle(service)
        handles.append(handle)
        return handle

    yield start
    for h in reversed(handles):
        await h.stop()


@pytest_twisted.async_yield_fixture
async def server(start_server):
    """One running server with default settings."""
    yield await start_server()


async def until(predicate, timeout: float = 8.0, interval: float = 0.02) -> None:
    """Wait until ``predicate()`` (plain, or returning an awaitable) is true.

    For conditions no event announces (a record written, a counter moved);
    AssertionError after ``timeout`` seconds.
    """
    deadline = reactor.seconds() + timeout
    while True:
        ok = predicate()
        if inspect.isawaitable(ok):
            ok = await ok
        if ok:
            return
        if reactor.seconds() > deadline:
            raise AssertionError("condition not reached in time")
        await deferLater(reactor, interval, lambda: None)


class BusLinkCut:
    """A server's pub/sub link, dropped by Redis and kept down until :meth:`restore`.

    Its connection factory stops retrying (txredisapi's own calls), so what
    a test does meanwhile surely happens while the link is down, however
    slow the machine. ``CLIENT KILL TYPE pubsub`` drops every process's
    link; the others reconnect by themselves.
    """

    def __init__(self, server):
        self.server = server
        self.resynced = []
        server.core.bus.on_resync(lambda: self.resynced.append(True))
        self.factory = server.core.bus.subscription._factory

    async def cut(self):
        await self.factory.stopTrying()
        await self.server.core.store.execute("CLIENT", "KILL", "TYPE", "pubsub")

    async def restore(self, timeout: float = 8.0):
        """Reconnect; returns once the bus's resync hooks have run."""
        assert not self.resynced, "the link came back before the test restored it"
        kind, address, _ = parse_url(self.server.config.redis)
        self.factory.startConnecting(
            endpoints.UNIXClientEndpoint(reactor, address) if kind == "unix"
            else endpoints.TCP4ClientEndpoint(reactor, *address))
        await until(lambda: self.resynced, timeout)


@pytest.fixture
def cut_bus_link():
    """``link = await cut_bus_link(server)`` drops the link; ``await link.restore()``."""
    async def cut(server):
        link = BusLinkCut(server)
        await link.cut()
        return link
    return cut


# -- WebSocket client ---------------------------------------------------------

class _ClientProtocol(WebSocketClientProtocol):
    def onOpen(self):
        self.factory.client._opened(self)

    def onMessage(self, payload, isBinary):
        self.factory.client.queue.put(payload if isBinary else payload.decode("utf-8"))

    def onClose(self, wasClean, code, reason):
        self.factory.client._closed(code, reason)


class WSClient:
    """A real WebSocket client: ``send``, ``await recv()``, ``await close()``."""

    def __init__(self):
        self.queue = defer.DeferredQueue()
        self.protocol = None
        self.opened = defer.Deferred()
        self.closed = defer.Deferred()
        self.close_code = None
        self.close_reason = None

    def _opened(self, proto):
        self.protocol = proto
        if not self.opened.called:
            self.opened.callback(self)

    def _closed(self, code, reason):
        self.close_code, self.close_reason = code, reason
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"handshake failed: {code} {reason}"))
        if not self.closed.called:
            self.closed.callback((code, reason))

    def send(self, message) -> None:
        if isinstance(message, (dict, list)):
            message = json.dumps(message, ensure_ascii=False)
        if isinstance(message, str):
            self.protocol.sendMessage(message.encode("utf-8"), isBinary=False)
        else:
            self.protocol.sendMessage(message, isBinary=True)

    async def recv(self, timeout: float = 5.0):
        d = self.queue.get()
        d.addTimeout(timeout, reactor)
        return await d

    async def recv_json(self, timeout: float = 5.0):
        return json.loads(await self.recv(timeout))

    async def recv_until(self, predicate, timeout: float = 5.0):
        """Receive until ``predicate(message)`` holds; returns (match, skipped)."""
        skipped = []
        deadline = reactor.seconds() + timeout
        while True:
            left = deadline - reactor.seconds()
            if left <= 0:
                raise defer.TimeoutError(f"no matching message; got {skipped!r}")
            msg = await self.recv(left)
            if predicate(msg):
                return msg, skipped
            skipped.append(msg)

    async def no_message(self, within: float = 0.3) -> bool:
        """True when nothing arrives within ``within`` seconds."""
        await deferLater(reactor, within, lambda: None)
        return not self.queue.pending

    def freeze(self) -> None:
        """Stop reading the socket: pings go unanswered, like a dead client."""
        self.protocol.transport.pauseProducing()

    def abort(self) -> None:
        """Drop the TCP connection without a close frame."""
        self.protocol.transport.abortConnection()

    async def close(self, code: int = 1000):
        if self.protocol is not None and not self.closed.called:
            self.protocol.sendClose(code)
            d = self.closed
            d.addTimeout(5, reactor)
            try:
                await d
            except defer.TimeoutError:
                self.abort()


@pytest_twisted.async_yield_fixture
async def ws_connect():
    """``conn = await ws_connect("ws://127.0.0.1:PORT/path")``; all closed at teardown."""
    clients = []

    async def connect(url: str, timeout: float = 5.0) -> WSClient:
        client = WSClient()
        factory = WebSocketClientFactory(url)
        factory.protocol = _ClientProtocol
        factory.client = client
        factory.setProtocolOptions(autoPingInterval=None)
        host, port = factory.host, factory.port
        ep = endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
        await ep.connect(factory)
        clients.append(client)
        d = client.opened
        d.addTimeout(timeout, reactor)
        await d
        return client

    yield connect
    for c in clients:
        try:
            await c.close()
        except Exception:
            pass


class Http:
    """JSON over real HTTP (treq)."""

    async def get_json(self, url, params=None, **kw):
        r = await treq.get(url, params=params, **kw)
        return r.code, json.loads(await r.text("utf-8"))

    async def post_json(self, url, data=None, json_body=None, files=None, **kw):
        if json_body is not None:
            r = await treq.post(url, json=json_body, **kw)
        else:
            r = await treq.post(url, data=data, files=files, **kw)
        return r.code, json.loads(await r.text("utf-8"))

    get = staticmethod(treq.get)
    post = staticmethod(treq.post)


@pytest.fixture
def http():
    return Http()


@pytest.fixture(autouse=True)
def _no_env_leak(monkeypatch):
    """Tests never read the developer's IMSERVER_* environment."""
    for k in list(os.environ):
        if k.startswith("IMSERVER_"):
            monkeypatch.delenv(k)
