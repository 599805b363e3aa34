"""
The 000 heartbeat on a task.Clock: the session runs over an in-memory
connection (iosim) with the real rooms core on Redis, and time only moves
when the test says so.
"""

from __future__ import annotations

import json

import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor, task
from twisted.internet.task import deferLater
from twisted.test.iosim import connectedServerAndClient
from txaio.testutil import replace_loop

from imserver.config import Config
from imserver.core.rooms import Rooms
from imserver.dialects.chat.ws import ChatFactory


class Client(WebSocketClientProtocol):
    def onOpen(self):
        self.received = []
        self.closed_with = None

    def onMessage(self, payload, isBinary):
        self.received.append(json.loads(payload))

    def onClose(self, wasClean, code, reason):
        self.closed_with = code


async def until(pump, predicate, timeout=3.0):
    """Let Redis answer (real reactor) and move bytes (iosim) until predicate() holds."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not reached")
        pump.flush()
        await deferLater(reactor, 0.01, lambda: None)
    pump.flush()


@pytest_twisted.ensureDeferred
async def test_ping_and_idle_timeout_follow_the_clock(store, bus, presence, accounts, limits):
    """Pings go out every ping_interval of the clock; idle_timeout of silence closes (4000)."""
    clock = task.Clock()
    config = Config(ping_interval=30.0, idle_timeout=75.0)
    rooms = Rooms(store, bus, presence, clock)
    with replace_loop(clock):
        factory = ChatFactory(config=config, reactor=clock, accounts=accounts, rooms=rooms,
                              bus=bus, presence=presence, limits=limits)
        client_factory = WebSocketClientFactory("ws://127.0.0.1:9/ws/chat")
        client_factory.protocol = Client
        client, server, pump = connectedServerAndClient(
            lambda: factory.buildProtocol(None), lambda: client_factory.buildProtocol(None),
            greet=True)
        await until(pump, lambda: getattr(server, "in_room", False))
        assert await rooms.population("1") == 1

        clock.advance(29.9)
        pump.flush()
        assert client.received == []
        clock.advance(0.1)
        pump.flush()
        assert client.received == [{"type": "ping", "errCode": 0}]

        client.sendMessage(b'{"type":"ping","status":1}')   # an answer without data
        pump.flush()
        for _ in range(74):    # 74 s after the answer: still alive, pinged at 60 and 90
            clock.advance(1)
            pump.flush()
        assert client.closed_with is None
        assert [m["type"] for m in client.received] == ["ping", "ping", "ping"]

        clock.advance(1.5)     # 75 s of silence
        await until(pump, lambda: client.closed_with is not None)
        assert client.closed_with == 4000
        await until(pump, lambda: server.cleaned.called)
        assert await rooms.population("1") == 0
        assert [c for c in clock.getDelayedCalls() if c.active()] == []  # no leaked timer
