"""
The ``/entry`` WebSocket of document 004: a thin Autobahn protocol.

Each text frame is decoded by :mod:`.codec`, handed to the core
(:class:`~imserver.core.messages.Messages`, :class:`~imserver.core.groups.Groups`,
accounts, presence) and answered with frames from :mod:`.codec`. Frames of
one connection are handled one after the other, so its messages are stored
in the order it sent them.

A logged-in session follows the bus topics ``user:<id>`` and
``group:<gid>`` for each of its groups. :class:`SignalWire` is the dialect's
bus codec: the bus asks it once per event for the wire (a
``Frame``: framed once), and :meth:`SignalSession.deliver` writes
that same frame to every session, checking only the outgoing queue bound.
While a session catches up (the offline inbox after login, a group it was
just added to) live events are held back and then released minus the ones
the catch-up already delivered, so each message arrives once and in order.

Liveness: one loop per dialect (:class:`Heartbeat`) writes the document's
``heartbeat_<timet>`` and a WebSocket ping to every session each
``ping_interval`` and drops sessions silent for ``idle_timeout``. One loop
instead of Autobahn's per-connection ``autoPing`` timers keeps an idle
connection cheap; any frame received, pongs included, counts as a sign of
life.
"""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import defer, task, tcp
from twisted.logger import Logger
from twisted.python.failure import Failure

from imserver import metrics
from imserver.core.errors import CoreError, Forbidden, InvalidInput, NotFound, RateLimited
from imserver.core.groups import GroupNotFound
from imserver.core.messages import (MESSAGE_EVENT, UNICAST, NotMember, TooFast,
                                    UnknownGroup, UnknownRecipient)
from imserver.dialects.signal import codec
from imserver.store.redis import StoreError, StoreTimeout
from imserver.web.wsbase import SLOW_CLIENT_CODE, BoundedSession, queued_bytes
from imserver.web.wsfast import FastTextFrames

log = Logger()

AUTH_FAILED_CODE = 4001
STATE_OPEN = WebSocketProtocol.STATE_OPEN
PING_FRAME = b"\x89\x00"          # an empty, unmasked WebSocket ping
MAX_PENDING = 64                  # frames queued on one connection before it is paused

_CLOSE = object()                 # queued after the frames when the connection goes
_REQUESTS = frozenset({codec.Send, codec.Heartbeat, codec.Login, codec.Logout, codec.Members,
                       codec.Records})
_MESSAGES_IN = metrics.MESSAGES_IN.labels("signal")


def write_now(transport, data: bytes) -> None:
    """Write a complete frame, sending it at once when nothing is queued.

    ``transport.write`` queues the bytes and registers for writability, and
    the reactor sends them on its next turn and unregisters: three system
    calls per frame. A plain TCP connection with an empty queue can take the
    frame with one ``send()``; whatever it does not take is queued as usual,
    and anything already queued keeps its place in front.
    """
    if (transport.__class__ is tcp.Server and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer) and not transport.TLS
            and transport.connected and not transport.disconnecting):
        try:
            sent = transport.socket.send(data)
        except OSError:      # EAGAIN, or an error the reactor will report
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def text_frame(payload: bytes) -> bytes:
    """A complete, unmasked (server to client) WebSocket text frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


class Frame:
    """Wire bytes framed once, written as they are to each session."""

    __slots__ = ("payloadHybi",)   # PreparedMessage's name for the same thing

    def __init__(self, data: bytes):
        self.payloadHybi = data


def _id_key(message_id: str) -> tuple[int, int]:
    ms, _, seq = message_id.partition("-")
    return int(ms), int(seq or 0)


class SignalWire:
    """The signal dialect's bus codec: one framed message per event.

    It frames the text itself rather than through Autobahn's
    ``prepareMessage`` (which does the same work with more steps): the
    dialect never negotiates compression, so a frame is header + UTF-8.
    """

    # the id up to which nothing was lost on the pub/sub link: the last
    # message event received through Redis, or a later mark (SignalDialect
    # publishes the message clock to itself every few seconds). Ids increase
    # in the order Redis publishes them, so after a lost link everything
    # later may be missing. Direct messages this process delivered itself,
    # from the script's reply, do not count: the link cannot have lost them.
    watermark = ""

    def encode_event(self, event):
        out = codec.event_output(event.topic, event.kind, event.data)
        if out.__class__ is str:
            if not event.local:
                self.watermark = event.data["id"]
            return Frame(text_frame(out.encode("utf-8")))
        return out

    def advance(self, message_id: str) -> None:
        """A mark came through Redis: nothing up to ``message_id`` was missed."""
        if not self.watermark or _id_key(message_id) > _id_key(self.watermark):
            self.watermark = message_id


def _error_code(exc: Exception) -> str:
    if isinstance(exc, NotMember):
        return codec.NOT_MEMBER
    if isinstance(exc, UnknownRecipient):
        return codec.UNKNOWN_USER
    if isinstance(exc, (UnknownGroup, GroupNotFound)):
        return codec.UNKNOWN_GROUP
    if isinstance(exc, (TooFast, RateLimited)):
        return codec.TOO_FAST
    if isinstance(exc, InvalidInput):
        return codec.MALFORMED
    if isinstance(exc, NotFound):
        return codec.UNKNOWN_USER
    if isinstance(exc, Forbidden):
        return codec.NOT_MEMBER
    return codec.UNAVAILABLE


async def subscribed(deferreds, clock, timeout: float = 5.0) -> None:
    """Wait until Redis confirmed the subscriptions (``follow``'s Deferreds).

    A log read after this misses nothing: whatever is appended later is
    also published to us. Without the pub/sub link (Redis restarting) give
    up waiting after ``timeout``; the bus's resync covers the rest.
    """
    d = defer.gatherResults(list(deferreds), consumeErrors=True)
    d.addTimeout(timeout, clock)
    try:
        await d
    except defer.TimeoutError:
        log.warn("signal: subscriptions not confirmed within {t}s", t=timeout)
    except Exception:
        log.failure("signal: subscribing failed")


class SignalSession(BoundedSession, FastTextFrames, WebSocketServerProtocol):
    dialect = "signal"
    user_id: str | None = None
    _pending: list | None = None    # frames waiting while one is handled (None: idle)
    _held: list | None = None       # live events held back during a catch-up
    groups: set | None = None       # ids of the groups followed (through GroupRelays)
    _closed = False
    _registered = False             # presence knows this connection

    # -- Autobahn callbacks ---------------------------------------------------------

    def onConnect(self, request):
        return None

    def onOpen(self):
        d = self.factory.dialect
        self.codec = d.wire
        self.session_opened(d.presence.new_conn_id())
        self.last_heard = d.clock.seconds()
        d.sessions.add(self)

    def dataReceived(self, data):
        self.last_heard = self.factory.dialect.clock.seconds()
        super().dataReceived(data)

    def onMessage(self, payload, isBinary):
        _MESSAGES_IN.inc()
        if self._pending is not None:
            self._enqueue(None if isBinary else payload)
            return
        # the common case, a message to send, needs no coroutine: sends are
        # stored in the order they are submitted, so the next frame need not
        # wait for this one's outcome
        req = self._decode(None if isBinary else payload)
        if req is None or req.__class__ is codec.Heartbeat:
            return
        if req.__class__ is codec.Send:
            self._send(req)
        else:
            self._enqueue(req)

    def onClose(self, wasClean, code, reason):
        if self._closed:
            return
        self._closed = True
        d = self.factory.dialect
        d.sessions.discard(self)
        if self.conn_id is not None:
            self.session_closed(d.bus)
            self._enqueue(_CLOSE)

    # -- one frame at a time ----------------------------------------------------------

    def _enqueue(self, item) -> None:
        if self._pending is not None:
            self._pending.append(item)
            if len(self._pending) == MAX_PENDING and self.transport is not None:
                self.transport.pauseProducing()
            return
        self._pending = []
        defer.ensureDeferred(self._drain(item))

    async def _drain(self, item) -> None:
        while True:
            try:
                if item is _CLOSE:
                    await self._end_session()
                elif self._closed:
                    pass
                elif item.__class__ is _Join:
                    await self._join_group(item.group_id, item.since)
                elif item.__class__ is _Repair:
                    await self._repair(item.after)
                else:
                    await self._handle(item)
            except Exception:
                log.failure("signal: handling a frame failed")
            pending = self._pending
            if not pending:
                self._pending = None
                return
            item = pending.pop(0)
            if len(pending) == MAX_PENDING - 1 and self.transport is not None and not self._closed:
                self.transport.resumeProducing()

    def _decode(self, payload):
        """A frame -> a request, or None after answering a bad one with an error frame."""
        if payload is None:
            self.send_text(codec.error_frame(codec.MALFORMED, "text frames only"))
            return None
        limit = self.factory.dialect.max_message
        if len(payload) > limit:
            self.send_text(codec.error_frame(codec.TOO_LARGE,
                                             f"frames are limited to {limit} bytes"))
            return None
        try:
            return codec.parse_frame(payload.decode("utf-8"))
        except codec.FrameError as e:
            self.send_text(codec.error_frame(e.code, e.reason))
            return None

    async def _handle(self, item) -> None:
        """One queued frame (bytes, or None for a binary one) or decoded request."""
        d = self.factory.dialect
        req = item if item.__class__ in _REQUESTS else self._decode(item)
        if req is None:
            return
        try:
            if isinstance(req, codec.Send):
                self._send(req)
            elif isinstance(req, codec.Heartbeat):
                pass
            elif isinstance(req, codec.Login):
                await self._login(req)
            elif isinstance(req, codec.Logout):
                await self._logout()
            elif self.user_id is None:
                self.send_text(codec.error_frame(codec.NOT_LOGGED_IN, "log in first"))
            elif isinstance(req, codec.Members):
                ids = await d.groups.member_ids(self.user_id, req.group_id)
                self.send_text(codec.members_frame(req.group_id, ids))
            elif isinstance(req, codec.Records):
                await self._records(req)
        except CoreError as e:
            self.send_text(codec.error_frame(_error_code(e), e.reason))
        except (StoreTimeout, StoreError):
            log.failure("signal: store failed")
            self.send_text(codec.error_frame(codec.UNAVAILABLE, "try again later"))

    # -- requests -----------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        if self.state == STATE_OPEN:
            self.sendMessage(text.encode("utf-8"))

    def _send(self, req: codec.Send) -> None:
        d = self.factory.dialect
        if self.user_id is None:
            self.send_text(codec.error_frame(codec.NOT_LOGGED_IN, "log in first"))
            return
        if not self.within_rate(d.clock.seconds(), d.conn_rate):
            self.send_text(codec.error_frame(codec.TOO_FAST, "too many messages; slow down"))
            return
        d.messages.post(self.user_id, req.kind, req.to, req.type, req.payload, req.ext,
                        self.conn_id, self._send_failed)

    def _send_failed(self, exc: Exception) -> None:
        if isinstance(exc, CoreError):
            self.send_text(codec.error_frame(_error_code(exc), exc.reason))
        elif isinstance(exc, (StoreTimeout, StoreError)):
            log.warn("signal: storing a message failed: {e}", e=exc)
            self.send_text(codec.error_frame(codec.UNAVAILABLE, "try again later"))
        else:
            log.failure("signal: sending failed", Failure(exc))

    async def _login(self, req: codec.Login) -> None:
        d = self.factory.dialect
        if self.user_id is not None:
            if self.user_id == req.user_id:
                self.send_text(codec.login_ok_frame(self.user_id))
                return
            await self._end_session()
        if req.token is not None:
            user = await d.accounts.user_for_token(req.token)
            if user is None or str(user.id) != req.user_id:
                self._refuse("invalid token for this user")
                return
        elif d.legacy_auth:
            user = await d.accounts.get(int(req.user_id))
            if user is None:
                self._refuse("unknown user")
                return
        else:
            self._refuse("login needs a token: login_<userid>_<token>")
            return
        if self._closed:
            return
        uid = str(user.id)
        self.user_id = uid
        self._registered = True
        await d.presence.connect(self.conn_id, uid, "signal")
        group_ids = await d.groups.group_ids_of(uid)
        if self._closed:
            return

        def follow():
            return ([self.follow(d.bus, "user:" + uid)]
                    + [d.relays.join(self, gid) for gid in group_ids])

        async def fetch():
            since = await d.messages.take_inbox(uid)
            self.send_text(codec.login_ok_frame(uid))
            if since is None:
                return []
            return await d.messages.inbox(uid, since)

        await self._catch_up(follow, fetch)

    def _refuse(self, reason: str) -> None:
        log.info("signal: login refused ({reason})", reason=reason)
        self.sendClose(AUTH_FAILED_CODE, reason)

    async def _logout(self) -> None:
        if self.user_id is None:
            self.send_text(codec.error_frame(codec.NOT_LOGGED_IN, "not logged in"))
            return
        uid = self.user_id
        await self._end_session()
        self.send_text(codec.logout_ok_frame(uid))

    async def _end_session(self) -> None:
        """Forget the login: topics, presence, and the offline mark if it was the last."""
        d = self.factory.dialect
        uid, self.user_id = self.user_id, None
        for topic in list(self.topics):
            self.unfollow(d.bus, topic)
        d.relays.leave_all(self)
        if self._registered:
            self._registered = False
            await d.presence.disconnect(self.conn_id)
            if uid is not None:
                # nothing written since the client's last sign of life is
                # known to have arrived: the inbox starts there
                await d.messages.went_offline(
                    uid, backdate=max(0.0, d.clock.seconds() - self.last_heard))

    async def _records(self, req: codec.Records) -> None:
        d = self.factory.dialect
        type_, messages = await d.messages.history(self.user_id, req.target, req.type, req.after)
        for m in messages:
            self.send_text(self._message_frame(m))
        cursor = messages[-1].id if messages else req.after
        self.send_text(codec.records_end_frame(req.target, len(messages), cursor))

    def _message_frame(self, m) -> str:
        conversation = codec.conversation_for(m.sender, m.to, m.type, self.user_id)
        return codec.message_frame(m.kind, m.sender, m.payload, m.type, conversation,
                                   codec.timet_of(m.id), m.ext)

    # -- catching up ----------------------------------------------------------------------

    async def _catch_up(self, subscribe, fetch) -> None:
        """Subscribe, read the log, send it, then release the live events held meanwhile."""
        d = self.factory.dialect
        self._held = held = []
        delivered = set()
        try:
            await subscribed(subscribe(), d.clock)
            for m in await fetch():
                if m.id not in delivered:
                    delivered.add(m.id)
                    self.send_text(self._message_frame(m))
        finally:
            self._held = None
            for event, wire in held:
                if event.kind == MESSAGE_EVENT and event.data.get("id") in delivered:
                    continue
                if wire.__class__ is _HeldFrame:
                    self.write(wire.payloadHybi)
                else:
                    self.deliver(event, wire)

    async def _join_group(self, gid: str, since: str) -> None:
        d = self.factory.dialect
        if self.user_id is None or (self.groups is not None and gid in self.groups):
            return

        async def fetch():
            # from the join on: the member may read nothing older anyway
            _, messages = await d.messages.history(self.user_id, gid, codec.GROUP, "0-0")
            return messages

        await self._catch_up(lambda: [d.relays.join(self, gid)], fetch)

    def enqueue_repair(self, after: str) -> None:
        self._enqueue(_Repair(after))

    async def _repair(self, after: str) -> None:
        """The bus link was down: send this user's messages stored after ``after``."""
        d = self.factory.dialect
        if self.user_id is None:
            return
        last = _id_key(after)
        here = d.messages.here
        for m in await d.messages.inbox(self.user_id, last[0]):
            # left out: the user's own messages (this connection may have sent
            # them) and direct messages this process delivered itself
            if (m.sort_key() > last and m.sender != self.user_id
                    and not (m.origin == here and m.type == UNICAST)):
                self.send_text(self._message_frame(m))

    # -- the bus sink ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Write complete frames, unless the client stopped reading (then close)."""
        transport = self.transport
        if transport is None or self.state != STATE_OPEN:
            return
        if queued_bytes(transport) > self.max_queue:
            metrics.SLOW_CLIENTS.labels(self.dialect).inc()
            self.sendClose(SLOW_CLIENT_CODE, "client too slow: outgoing queue full")
            return
        write_now(transport, data)

    def deliver(self, event, wire) -> None:
        """The bus sink (``user:<id>``): direct messages and membership changes."""
        if self._held is not None:
            self._held.append((event, wire))
        elif wire.__class__ is Frame:
            self.write(wire.payloadHybi)
            self.factory.dialect.delivered += 1
        elif isinstance(wire, codec.MembershipChange):
            if wire.joined:
                self._enqueue(_Join(wire.group_id, wire.since))
            else:
                self.factory.dialect.relays.leave(self, wire.group_id)


class _Repair:
    """Queued with the frames: deliver what the bus missed after ``after`` (an id)."""

    __slots__ = ("after",)

    def __init__(self, after: str):
        self.after = after


class _Join:
    """Queued with the frames: follow a group the user was just added to."""

    __slots__ = ("group_id", "since")

    def __init__(self, group_id: str, since: str):
        self.group_id = group_id
        self.since = since


class GroupRelay:
    """The one bus sink of a group topic on this process.

    The bus hands it each event of the topic once, already framed (the
    dialect's wire); it collects the frames of one reactor turn and then
    writes them, joined into one buffer, to every local member session: per
    member one write, whatever the number of messages. A member that sent
    one of them gets the others only; a member catching up holds them.
    """

    conn_id = None

    def __init__(self, relays, group_id: str):
        self.relays = relays
        self.codec = relays.wire
        self.topic = "group:" + group_id
        self.sessions: dict = {}      # insertion-ordered set of SignalSessions
        self.pending: list = []       # (event, frame bytes) of this turn

    def deliver(self, event, wire) -> None:
        if wire.__class__ is not Frame:
            return
        if not self.pending:
            self.relays.schedule(self)
        self.pending.append((event, wire.payloadHybi))

    def flush(self) -> int:
        pending, self.pending = self.pending, []
        data = pending[0][1] if len(pending) == 1 else b"".join(f for _, f in pending)
        senders = {e.exclude for e, _ in pending if e.exclude is not None}
        n = 0
        for s in tuple(self.sessions):
            if s._held is not None:
                s._held.extend((e, _HeldFrame(f)) for e, f in pending
                               if e.exclude != s.conn_id)
            elif s.conn_id in senders:
                mine = b"".join(f for e, f in pending if e.exclude != s.conn_id)
                if mine:
                    s.write(mine)
                    n += 1
            else:
                s.write(data)
                n += 1
        return n


class _HeldFrame:
    """A relay's frame held for a session that is catching up (see ``_catch_up``)."""

    __slots__ = ("payloadHybi",)

    def __init__(self, data: bytes):
        self.payloadHybi = data


class GroupRelays:
    """The group relays of a dialect, and the end-of-turn flush."""

    def __init__(self, bus, wire, clock):
        self.bus = bus
        self.wire = wire
        self.clock = clock
        self.by_group: dict[str, GroupRelay] = {}
        self._due: list = []
        self.delivered = 0

    def join(self, session, group_id: str) -> defer.Deferred:
        """Add a session to a group's relay; fires once the topic is subscribed."""
        relay = self.by_group.get(group_id)
        if relay is None:
            relay = self.by_group[group_id] = GroupRelay(self, group_id)
        relay.sessions[session] = None
        if session.groups is None:
            session.groups = set()
        session.groups.add(group_id)
        return self.bus.subscribe(relay.topic, relay)

    def leave(self, session, group_id: str) -> None:
        if session.groups is not None:
            session.groups.discard(group_id)
        relay = self.by_group.get(group_id)
        if relay is None:
            return
        relay.sessions.pop(session, None)
        if not relay.sessions:
            del self.by_group[group_id]
            self.bus.unsubscribe(relay.topic, relay)

    def leave_all(self, session) -> None:
        for gid in tuple(session.groups or ()):
            self.leave(session, gid)

    def schedule(self, relay) -> None:
        if not self._due:
            self.clock.callLater(0, self.flush)
        self._due.append(relay)

    def flush(self) -> None:
        due, self._due = self._due, []
        for relay in due:
            if relay.pending:
                self.delivered += relay.flush()


class SignalFactory(WebSocketServerFactory):
    protocol = SignalSession

    def __init__(self, dialect, *, max_frame: int, handshake_timeout: float = 10.0):
        super().__init__()
        self.dialect = dialect
        self.setProtocolOptions(
            maxFramePayloadSize=max_frame, maxMessagePayloadSize=max_frame,
            openHandshakeTimeout=handshake_timeout, autoPingInterval=0,
            closeHandshakeTimeout=5,
            # a client breaking the protocol (bad UTF-8, oversized frame) gets
            # a close frame with the reason's code before the connection goes
            failByDrop=False)


class Heartbeat:
    """The dialect's liveness loop: heartbeats and pings out, silent sessions dropped."""

    def __init__(self, dialect, clock, interval: float, idle_timeout: float):
        self.dialect = dialect
        self.clock = clock
        self.interval = interval
        self.idle_timeout = idle_timeout
        self._beat = task.LoopingCall(self.beat)
        self._beat.clock = clock
        self._sweep = task.LoopingCall(self.sweep)
        self._sweep.clock = clock

    def start(self) -> None:
        self._beat.start(self.interval, now=False)
        # a silent session goes at most a tenth of the timeout late
        self._sweep.start(max(0.05, self.idle_timeout / 10), now=False)

    def stop(self) -> None:
        for loop in (self._beat, self._sweep):
            if loop.running:
                loop.stop()

    def beat(self) -> None:
        d = self.dialect
        frame = text_frame(codec.heartbeat_frame(int(self.clock.seconds())).encode())
        data = frame + PING_FRAME
        for s in tuple(d.sessions):
            t = s.transport
            if t is not None and s.state == STATE_OPEN and queued_bytes(t) <= s.max_queue:
                write_now(t, data)

    def sweep(self) -> None:
        self.dialect.flush_metrics()
        deadline = self.clock.seconds() - self.idle_timeout
        for s in tuple(self.dialect.sessions):
            if s.last_heard < deadline:
                log.info("signal: dropping connection {conn} silent for {t:.0f}s",
                         conn=s.conn_id, t=self.clock.seconds() - s.last_heard)
                self.dialect.sessions.discard(s)
                s.dropConnection(abort=True)
