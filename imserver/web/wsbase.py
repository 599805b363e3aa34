"""
What every WebSocket session of every dialect shares.

:class:`BoundedSession` is a mixin for Autobahn server protocols:

- a connection id from :class:`~imserver.core.presence.Presence`;
- ``send_wire``: writes an encoded message (a ``PreparedMessage`` from the
  bus's encode-once path, or text) unless the client has stopped reading:
  when the bytes queued in the transport pass ``max_queue``, the connection
  is closed with code 4008 rather than allowed to grow the server's memory;
- ``deliver(event, wire)``: the bus sink interface, writing the wire as is;
- topic subscriptions that are dropped when the connection goes;
- the connections and messages metrics.

:class:`UpgradedResource` is the ``WebSocketResource`` every dialect mounts:
after the upgrade it lets go of twisted.web's HTTP channel (see there).
"""

from __future__ import annotations

from autobahn.twisted.resource import WebSocketResource

from imserver import metrics

SLOW_CLIENT_CODE = 4008


def queued_bytes(transport) -> int:
    # twisted's FileDescriptor keeps unsent data in dataBuffer + _tempDataBuffer
    return (len(getattr(transport, "dataBuffer", b""))
            + getattr(transport, "_tempDataLen", 0))


class UpgradedResource(WebSocketResource):
    """``WebSocketResource`` that lets go of the HTTP channel it upgraded.

    Autobahn takes the TCP transport over from twisted.web's ``HTTPChannel``
    but leaves the channel registered as the transport's producer and its
    idle timer running (the site's timeout, twelve hours by default); either
    keeps the channel and its unfinished request alive, several kilobytes
    per WebSocket connection for as long as it stays open. Unregistering both
    lets them go at once. Every dialect's WebSocket, at its path on the main
    site and alone on a ``--dialect-listen`` port, is served through this.
    """

    def render(self, request):
        channel = request.channel
        transport = channel.transport
        result = super().render(request)
        # Autobahn took the transport over (it answers even a bad handshake
        # itself) unless it could not build a protocol: then the channel
        # still owns the connection and answers this request
        if transport is not None and channel.transport is None:
            channel.setTimeout(None)
            if getattr(transport, "producer", None) is channel:
                transport.unregisterProducer()
        return result


class BoundedSession:
    dialect = "?"
    max_queue = 4 * 1024 * 1024
    codec = None
    conn_id: str | None = None
    _rate_second = -1
    _rate_count = 0

    def within_rate(self, now: float, limit: int) -> bool:
        """Count a frame in this connection's current second; False past ``limit``."""
        second = int(now)
        if second != self._rate_second:
            self._rate_second, self._rate_count = second, 0
        self._rate_count += 1
        return self._rate_count <= limit

    def session_opened(self, conn_id: str) -> None:
        self.conn_id = conn_id
        self.topics: set[str] = set()
        self._out = metrics.MESSAGES_OUT.labels(self.dialect)
        metrics.CONNECTIONS.labels(self.dialect).inc()
        self._counted = True

    def session_closed(self, bus) -> None:
        for topic in list(getattr(self, "topics", ())):
            bus.unsubscribe(topic, self)
        self.topics = set()
        if getattr(self, "_counted", False):
            metrics.CONNECTIONS.labels(self.dialect).dec()
            self._counted = False

    def follow(self, bus, topic: str):
        """Subscribe this session to a topic; the Deferred fires once Redis confirmed."""
        self.topics.add(topic)
        return bus.subscribe(topic, self)

    def unfollow(self, bus, topic: str) -> None:
        if topic in self.topics:
            self.topics.discard(topic)
            bus.unsubscribe(topic, self)

    def send_wire(self, wire) -> bool:
        transport = self.transport
        if transport is None or self.state != self.STATE_OPEN:
            return False
        if queued_bytes(transport) > self.max_queue:
            metrics.SLOW_CLIENTS.labels(self.dialect).inc()
            self.sendClose(SLOW_CLIENT_CODE, "client too slow: outgoing queue full")
            return False
        if isinstance(wire, str):
            self.sendMessage(wire.encode("utf-8"), isBinary=False)
        elif isinstance(wire, bytes):
            self.sendMessage(wire, isBinary=False)
        else:
            self.sendPreparedMessage(wire)
        self._out.inc()
        return True

    def deliver(self, event, wire) -> None:
        self.send_wire(wire)
