"""
``/ws/ktv``: the Autobahn protocol of document 002, kept thin.

It moves frames between the socket and a :class:`~.session.KtvSession`
(which decodes, calls the core and encodes), and is the session's ``link``:
``send`` a reply, ``drop`` the connection, ``follow_topic``/``unfollow_topic``
a bus topic, ``finished`` once the session has cleaned up. Bus events reach it as
a sink (:class:`~imserver.web.wsbase.BoundedSession`) and go to the session,
which decides what the client sees.

What the session writes (``send`` a reply, ``push`` a push) goes through an
:class:`Outbox`: a client that has fallen behind gets the room status it
missed coalesced to the latest one, instead of every superseded version.
"""

from __future__ import annotations

from collections import deque

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

from imserver import metrics
from imserver.dialects.ktv.session import KtvSession
from imserver.web.wsbase import SLOW_CLIENT_CODE, BoundedSession, queued_bytes


def wire_size(wire) -> int:
    if isinstance(wire, str):
        return len(wire.encode("utf-8"))
    if isinstance(wire, bytes):
        return len(wire)
    return len(getattr(wire, "payloadHybi", b""))   # Autobahn's PreparedMessage


class Outbox:
    """
    What a KTV connection still has to write while its client is behind.

    While fewer than ``behind`` bytes wait in the transport, writes go
    straight through (``write``). Past that the client is not keeping up,
    and what follows waits here, in order; a new room status replaces a
    waiting one (each status is the whole room, so only the latest matters),
    while replies, chat and device pushes all stay. Every ``drain_every``
    seconds of the clock, what waits is written as far as the transport has
    room. When the bytes waiting here and in the transport pass
    ``max_bytes``, ``overflow()`` is called (the connection is closed) and
    the queue dropped.
    """

    def __init__(self, clock, write, queued, overflow, *, behind: int = 64 * 1024,
                 max_bytes: int = BoundedSession.max_queue, drain_every: float = 0.25):
        self.clock = clock
        self.write = write
        self.queued = queued
        self.overflow = overflow
        self.behind = behind
        self.max_bytes = max_bytes
        self.drain_every = drain_every
        self.superseded = 0          # room statuses dropped for a newer one
        self._items: deque[list] = deque()   # [wire, size]; wire None once superseded
        self._status: list | None = None      # the waiting status, if any
        self._bytes = 0
        self._timer = None

    def __len__(self) -> int:
        return sum(1 for item in self._items if item[0] is not None)

    def put(self, wire, status: bool = False) -> None:
        if not self._items and self.queued() <= self.behind:
            self.write(wire)
            return
        item = [wire, wire_size(wire)]
        if status:
            if self._status is not None:
                self._bytes -= self._status[1]
                self._status[0] = None
                self.superseded += 1
            self._status = item
        self._items.append(item)
        self._bytes += item[1]
        if self.queued() + self._bytes > self.max_bytes:
            self.close()
            self.overflow()
            return
        if self._timer is None:
            self._timer = self.clock.callLater(self.drain_every, self._drain)

    def _drain(self) -> None:
        self._timer = None
        while self._items and self.queued() <= self.behind:
            item = self._items.popleft()
            if item is self._status:
                self._status = None
            if item[0] is not None:
                self._bytes -= item[1]
                self.write(item[0])
        if self._items:
            self._timer = self.clock.callLater(self.drain_every, self._drain)

    def close(self) -> None:
        """Forget what waits (the connection is going)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._items.clear()
        self._status = None
        self._bytes = 0


class KtvProtocol(BoundedSession, WebSocketServerProtocol):
    dialect = "ktv"
    session: KtvSession | None = None

    def onOpen(self):
        deps = self.factory.deps
        self.codec = deps.codec
        self.session_opened(deps.presence.new_conn_id())
        self.outbox = Outbox(deps.clock, self.send_wire, self._queued, self._too_slow,
                             max_bytes=self.max_queue)
        self.session = KtvSession(deps, self, self.conn_id)
        deps.sessions.add(self)
        self.session.opened()

    def onMessage(self, payload, isBinary):
        metrics.MESSAGES_IN.labels(self.dialect).inc()
        if self.session is not None:
            self.session.received(payload)

    def onClose(self, wasClean, code, reason):
        outbox = getattr(self, "outbox", None)
        if outbox is not None:
            outbox.close()
        if self.session is not None:
            self.session.lost()

    def _queued(self) -> int:
        return queued_bytes(self.transport) if self.transport is not None else 0

    def _too_slow(self) -> None:
        metrics.SLOW_CLIENTS.labels(self.dialect).inc()
        if self.state == self.STATE_OPEN:
            self.sendClose(SLOW_CLIENT_CODE, "client too slow: outgoing queue full")

    # -- the session's link --------------------------------------------------------

    def send(self, text: str) -> None:
        """A direct reply."""
        self.outbox.put(text)

    def push(self, wire, status: bool = False) -> None:
        """A push; ``status``: a room status, which a newer one supersedes."""
        self.outbox.put(wire, status)

    def drop(self, code: int, reason: str) -> None:
        if self.state == self.STATE_OPEN:
            self.sendClose(code, reason)
        elif self.transport is not None and self.state != self.STATE_CLOSED:
            self.dropConnection(abort=True)

    def follow_topic(self, topic: str):
        """Fires once Redis confirmed the subscription."""
        return self.follow(self.factory.deps.bus, topic)

    def unfollow_topic(self, topic: str) -> None:
        self.unfollow(self.factory.deps.bus, topic)

    def finished(self) -> None:
        self.session_closed(self.factory.deps.bus)
        self.factory.deps.sessions.discard(self)

    # -- bus sink --------------------------------------------------------------------

    def deliver(self, event, wire) -> None:
        if self.session is not None:
            self.session.deliver(event, wire)


def make_factory(deps, config) -> WebSocketServerFactory:
    factory = WebSocketServerFactory()
    factory.protocol = KtvProtocol
    factory.deps = deps
    # Autobahn's ping timers (txaio's batched timer) round down to whole
    # seconds: a sub-second timeout would drop healthy peers. failByDrop off:
    # an oversized or broken frame gets a close frame (1009, 1002…), not a cut.
    factory.setProtocolOptions(
        maxMessagePayloadSize=config.max_frame, maxFramePayloadSize=config.max_frame,
        openHandshakeTimeout=10, autoPingInterval=max(config.ping_interval, 1.0),
        autoPingTimeout=max(config.idle_timeout, 2.0), failByDrop=False)
    return factory
