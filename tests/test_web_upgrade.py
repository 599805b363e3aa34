"""
After a WebSocket upgrade nothing of twisted.web's HTTP side stays alive.

Every dialect's WebSocket, at its path on the main site and alone on its
``--dialect-listen`` port, is an :class:`imserver.web.wsbase.UpgradedResource`:
once Autobahn has the TCP transport, the ``HTTPChannel`` that parsed the
upgrade request is no longer the transport's producer, its idle timer is
cancelled, and it (with its request) is garbage once cycles are collected.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.server import Site
from txaio.testutil import replace_loop

from imserver.web.wsbase import UpgradedResource

PATHS = {"chat": "/ws/chat", "chatroom": "/ws/chatroom", "ktv": "/ws/ktv", "signal": "/entry"}


def spy_on(monkeypatch, factory) -> list:
    """Record (weakly) every protocol ``factory`` builds."""
    built = []
    real = factory.buildProtocol

    def build(addr):
        proto = real(addr)
        built.append(weakref.ref(proto))
        return proto

    monkeypatch.setattr(factory, "buildProtocol", build)
    return built


async def assert_let_go(ws_connect, monkeypatch, url, site, dialect):
    channels = spy_on(monkeypatch, site)
    sessions = spy_on(monkeypatch, dialect.factory)
    client = await ws_connect(url)
    session = sessions[-1]()
    assert session is not None and session.transport.protocol is session
    assert session.transport.producer is None
    gc.collect()
    assert [c() for c in channels] == [None], url
    assert session.transport.protocol is session   # the WebSocket itself lives on
    await client.close()
    monkeypatch.undo()


@pytest_twisted.ensureDeferred
async def test_upgrade_lets_the_http_channel_go(start_server, ws_connect, monkeypatch):
    """For /ws/chat, /ws/chatroom, /ws/ktv and /entry, and each --dialect-listen port,
    the upgraded connection no longer holds the HTTP channel or its timer."""
    srv = await start_server(dialect_listen={name: None for name in PATHS})
    dialects = {d.name: d for d in srv.service.dialects}
    site = srv.service.ports[0].factory
    for name, path in PATHS.items():
        assert isinstance(dialects[name].websocket_resource(), UpgradedResource)
        await assert_let_go(ws_connect, monkeypatch, srv.ws_url + path, site, dialects[name])
        await assert_let_go(ws_connect, monkeypatch, srv.dialect_urls[name] + "/any/path",
                            srv.service.dialect_ports[name].factory, dialects[name])


UPGRADE = (b"GET /x HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


@pytest.mark.parametrize("build_fails", [False, True])
def test_only_a_taken_over_transport_is_let_go(build_fails):
    """The channel is let go (no producer, no timer) only when Autobahn took the
    transport; when no protocol can be built the channel answers 500 itself."""
    clock = Clock()
    factory = WebSocketServerFactory()
    factory.protocol = WebSocketServerProtocol
    if build_fails:
        factory.buildProtocol = lambda addr: None
    site = Site(UpgradedResource(factory), reactor=clock)
    wrapper = site.buildProtocol(None)     # HTTP/1.1 and HTTP/2 negotiation
    transport = StringTransport()
    transport.protocol = wrapper           # as a TCP transport has
    with replace_loop(clock):
        wrapper.makeConnection(transport)
        channel = wrapper._channel         # the HTTP/1.1 channel that serves the request
        wrapper.dataReceived(UPGRADE)
        timers = [c for c in clock.getDelayedCalls()
                  if getattr(c.func, "__self__", None) is channel]
        if build_fails:
            assert channel.transport is transport and b" 500 " in transport.value()
            assert transport.producer is channel and timers
            channel.connectionLost(Failure(ConnectionDone()))
        else:
            assert channel.transport is None and b" 101 " in transport.value()
            assert transport.protocol is not wrapper
            assert transport.producer is None and not timers
            transport.protocol.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []
