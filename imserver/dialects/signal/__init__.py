"""
Document 004, the signal dialect: IM over the ``/entry`` WebSocket and the
group API over HTTP.

:class:`SignalDialect` is built in the composition root with the core
services it uses; it mounts ``/entry`` and ``/wsim/entry`` (one Autobahn
factory, :mod:`.ws`), the group routes (:mod:`.groups_http`) and serves the
same WebSocket alone for ``--dialect-listen signal=ENDPOINT``. The upload
routes (``/upload/writev1..3``) are :mod:`.upload`'s. The wire is described
in ``docs/signal.rst``.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.logger import Logger

from imserver import metrics
from imserver.dialects.signal.envelope import BAD_REQUEST
from imserver.dialects.signal.groups_http import GroupApi
from imserver.dialects.signal.ws import GroupRelays, Heartbeat, SignalFactory, SignalWire
from imserver.web.wsbase import UpgradedResource

log = Logger()

ENTRY_PATHS = ("/entry", "/wsim/entry")
MARK_INTERVAL = 5.0       # seconds between marks (how stale the repair's start may be)


def refusal(status: int, reason: str) -> dict:
    """A request the site refused (body too large, no route) in the group API's envelope."""
    return {"code": BAD_REQUEST, "message": reason}


class SignalDialect:
    name = "signal"

    def __init__(self, *, config, reactor, accounts, presence, bus, limits, messages, groups,
                 max_message: int = 16 * 1024, conn_rate: int | None = None):
        self.config = config
        self.clock = reactor
        self.accounts = accounts
        self.presence = presence
        self.bus = bus
        self.limits = limits
        self.messages = messages
        self.groups = groups
        self.legacy_auth = config.legacy_auth
        self.max_message = min(max_message, config.max_frame)
        self.conn_rate = conn_rate or config.messages_per_second
        self.sessions: set = set()
        self.delivered = 0            # frames written by the fan-out path, for metrics
        self._counted = 0
        self.factory = SignalFactory(self, max_frame=config.max_frame)
        self.wire = SignalWire()
        self.relays = GroupRelays(bus, self.wire, reactor)
        self.resource = UpgradedResource(self.factory)
        self.group_api = GroupApi(accounts=accounts, groups=groups, limits=limits,
                                  ok_code=config.signal_group_ok_code,
                                  max_body=config.max_body)
        self.heartbeat = Heartbeat(self, reactor, config.ping_interval, config.idle_timeout)
        self._out = metrics.MESSAGES_OUT.labels("signal")
        self._mark_topic = f"process:{bus.process_id}:signal-marks"
        self._marks: task.LoopingCall | None = None
        self._mark_sink = None
        presence.on_dead(self._connection_died)
        bus.on_resync(self.repair)

    def mount(self, router) -> None:
        for path in ENTRY_PATHS:
            router.add(path, self.resource)
        router.add_klein(self.group_api.app, refusal=refusal)
        router.add_refusal(refusal, prefixes=("/wsim/",))

    def websocket_resource(self):
        return self.resource

    def start(self) -> None:
        self.factory.startFactory()
        self.heartbeat.start()
        # marks: the message clock through this process's own pub/sub link
        self._marks = task.LoopingCall(self.send_mark)
        self._marks.clock = self.clock
        self._mark_sink = self.bus.listen(self._mark_topic, self._marked)
        self._mark_sink.ready.addCallback(
            lambda _: None if self._marks is None else self._marks.start(MARK_INTERVAL))

    def send_mark(self) -> defer.Deferred:
        """Publish the message clock to ourselves (see ``SignalWire.watermark``)."""
        d = self.messages.publish_mark(self._mark_topic)
        d.addErrback(lambda f: log.warn("signal: publishing a mark failed: {e}",
                                        e=f.getErrorMessage()))
        return d

    def _marked(self, event) -> None:
        self.wire.advance(event.data["id"])

    def stop(self) -> defer.Deferred:
        """Stop the loops and let the users of this process go offline in Redis."""
        self.heartbeat.stop()
        marks, self._marks = self._marks, None
        if marks is not None and marks.running:
            marks.stop()
        if self._mark_sink is not None:
            self.bus.unsubscribe(self._mark_topic, self._mark_sink)
            self._mark_sink = None
        self.flush_metrics()
        self.factory.stopFactory()
        return defer.ensureDeferred(self._part())

    async def _part(self) -> None:
        for session in tuple(self.sessions):
            uid = session.user_id
            if uid is None or not session._registered:
                continue
            session._registered = False
            try:
                await self.presence.disconnect(session.conn_id)
                await self.messages.went_offline(uid)
            except Exception:
                log.failure("signal: marking {uid} offline failed", uid=uid)

    def flush_metrics(self) -> None:
        total = self.delivered + self.relays.delivered
        n, self._counted = total - self._counted, total
        if n:
            self._out.inc(n)

    def repair(self) -> None:
        """The bus link came back: each session gets what was stored meanwhile."""
        after = self.wire.watermark
        if not after:
            return
        log.info("signal: repairing {n} sessions from the logs after {after}",
                 n=len(self.sessions), after=after)
        for session in tuple(self.sessions):
            if session.user_id is not None:
                session.enqueue_repair(after)

    async def _connection_died(self, record: dict) -> None:
        """A process died with this connection: its user may be offline now."""
        if record.get("dialect") != self.name or not record.get("user_id"):
            return
        # the dead process delivered nothing for about as long as it took
        # to notice: date the offline mark back by that much
        await self.messages.went_offline(record["user_id"],
                                         backdate=self.presence.dead_after)
