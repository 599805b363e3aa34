"""
What the two room-chat WebSockets, 000 (``/ws/chat``) and 003
(``/ws/chatroom``), share.

:class:`RoomSession` is the session side: a connection's frames are handled
one after another on a Deferred chain with a bounded backlog; room pushes
pass through a :class:`~imserver.core.rooms.RoomFeed`, which holds them
back while the session catches up after a lost bus link; when the
connection goes the session leaves every room and forgets its presence,
after whatever frame is still being handled. A dialect's session class
adds its own frames and answers, and says how a failed frame is answered
(:meth:`RoomSession._frame_failed`).

:class:`RoomDialect` is the dialect side: after a lost bus link every
session catches up from one read of each room
(:meth:`~imserver.core.rooms.Rooms.resync`), and stopping drops every
session and waits for their cleanup.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from imserver.core.rooms import Shared
from imserver.web.wsbase import BoundedSession

log = Logger()

MAX_BACKLOG = 32          # frames waiting on one connection before it is told to slow down
STOP_TIMEOUT = 5.0        # how long stopping waits for the sessions' cleanup


def protocol_pings(config) -> dict:
    """
    Autobahn's WebSocket ping options (with ``failByDrop=False`` beside them,
    a protocol error such as bad UTF-8 gets a close frame, 1007, rather than
    a silently dropped TCP connection). Its timers (txaio's batched timer)
    round deadlines down to whole seconds, so a sub-second timeout fires at
    once and drops healthy peers: keep them at a second or more. 000's own
    ``ping`` heartbeat keeps the configured precision.
    """
    return {"autoPingInterval": max(config.ping_interval, 1.0),
            "autoPingTimeout": max(config.idle_timeout, 2.0)}


class RoomSession(BoundedSession):
    """The session side; mixed in before ``WebSocketServerProtocol``.

    The factory provides ``rooms``, ``presence``, ``bus``, ``reactor`` and
    ``sessions`` (a set). ``log_name`` names the dialect in log lines. The
    dialect's class defines:

    - ``async _open()``: the first step of every connection (registering
      its presence), queued by its ``onOpen`` with :meth:`_enqueue`;
    - ``_frame_failed(request)``: answer a request whose handler raised, in
      the dialect's form;
    - ``_show(event, wire)``: write a room push its client should see (the
      dialect's filter).
    """

    log_name = "?"
    closed = True             # until opened

    def room_session_opened(self, conn_id: str, feed) -> None:
        """Call from ``onOpen``; then queue the dialect's first step with :meth:`_enqueue`."""
        self.session_opened(conn_id)
        self.closed = False
        self.feed = feed
        self._backlog = 0
        self._chain = defer.succeed(None)
        self.cleaned = defer.Deferred()   # fires once the session left its rooms
        self.factory.sessions.add(self)

    @property
    def backlogged(self) -> bool:
        return self._backlog >= MAX_BACKLOG

    # -- frames, one after another ----------------------------------------------

    def _enqueue(self, fn, *args) -> None:
        """Run ``fn(*args)`` (a coroutine function) after the frames queued before it."""
        self._backlog += 1

        def run(_):
            if self.closed and fn != self._open:
                return None
            return defer.ensureDeferred(fn(*args))

        def failed(failure):
            log.failure("{d} frame failed on {c}", failure, d=self.log_name, c=self.conn_id)
            if args and not self.closed:
                self._frame_failed(args[0])

        def done(_):
            self._backlog -= 1

        self._chain.addCallback(run)
        self._chain.addErrback(failed)
        self._chain.addBoth(done)

    # -- room pushes --------------------------------------------------------------

    def deliver(self, event, wire) -> None:
        if self.closed or not self.feed.admit(event, wire):
            return
        self._show(event, wire)

    def catch_up(self, resync) -> None:
        """The bus link came back: hold pushes, then show what was missed (in frame order)."""
        if self.closed:
            return
        self.feed.hold()
        self._enqueue(lambda: self.feed.catch_up(resync, self.codec, self._show))

    # -- the end ------------------------------------------------------------------

    def onClose(self, wasClean, code, reason):
        self._shutdown()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self._shutdown()

    def _closing(self) -> None:
        """Stop the dialect's own timers (called once, when the connection goes)."""

    def _shutdown(self) -> None:
        if getattr(self, "closed", True):
            return
        self.closed = True
        self.factory.sessions.discard(self)
        self._closing()
        self.session_closed(self.factory.bus)
        self.feed.close()
        self._chain.addBoth(lambda _: defer.ensureDeferred(self._cleanup()))
        self._chain.addErrback(lambda f: log.failure("{d} cleanup of {c} failed", f,
                                                     d=self.log_name, c=self.conn_id))
        self._chain.addBoth(lambda _: self.cleaned.callback(None))

    async def _cleanup(self) -> None:
        f = self.factory
        await f.rooms.leave_all(self.conn_id, reason="close")
        await f.presence.disconnect(self.conn_id)


def close_sessions(sessions) -> defer.Deferred:
    """Drop every session (``_shutdown`` then abort); fires once each has ``cleaned`` up."""
    done = []
    for s in list(sessions):
        s._shutdown()
        done.append(s.cleaned)
        if s.transport is not None:
            s.transport.abortConnection()
    return defer.DeferredList(done)


class RoomDialect:
    """The dialect side; ``factory`` (with ``sessions`` and ``reactor``), ``rooms`` and
    ``resource`` (the WebSocket's)."""

    factory = None
    rooms = None
    resource = None

    def websocket_resource(self):
        return self.resource

    def start(self) -> None:
        pass

    def repair(self) -> None:
        """The bus link came back: every session catches up on its rooms."""
        sessions = [s for s in self.factory.sessions if not s.closed]
        if sessions:
            found = Shared(self.rooms.resync())  # one read of each room for all sessions
            for session in sessions:
                session.catch_up(found.get())

    def stop(self) -> defer.Deferred:
        """Drop the sessions; the Deferred fires once they have left their rooms."""
        d = close_sessions(self.factory.sessions)
        self.factory.stopFactory()
        d.addTimeout(STOP_TIMEOUT, self.factory.reactor)
        d.addErrback(lambda f: None)  # shutting down regardless
        return d
