"""
``/ws/ktv``: the Autobahn protocol of document 002, kept thin.

It moves frames between the socket and a :class:`~.session.KtvSession`
(which decodes, calls the core and encodes), and is the session's ``link``:
``send`` a reply, ``drop`` the connection, ``follow_topic``/``unfollow_topic``
a bus topic, ``finished`` once the session has cleaned up. Bus events reach it as
a sink (:class:`~imserver.web.wsbase.BoundedSession`) and go to the session,
which decides what the client sees.
"""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

from imserver import metrics
from imserver.dialects.ktv.session import KtvSession
from imserver.web.wsbase import BoundedSession


class KtvProtocol(BoundedSession, WebSocketServerProtocol):
    dialect = "ktv"
    session: KtvSession | None = None

    def onOpen(self):
        deps = self.factory.deps
        self.codec = deps.codec
        self.session_opened(deps.presence.new_conn_id())
        self.session = KtvSession(deps, self, self.conn_id)
        deps.sessions.add(self)
        self.session.opened()

    def onMessage(self, payload, isBinary):
        metrics.MESSAGES_IN.labels(self.dialect).inc()
        if self.session is not None:
            self.session.received(payload)

    def onClose(self, wasClean, code, reason):
        if self.session is not None:
            self.session.lost()

    # -- the session's link --------------------------------------------------------

    def send(self, text: str) -> None:
        self.send_wire(text)

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
