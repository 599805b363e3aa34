"""
Document 002, the KTV dialect: ``/ws/ktv`` (and ``--dialect-listen ktv=…``).

:class:`KtvDialect` holds what every KTV session needs (accounts, rooms, the
stage machine, the catalogue, the bus, presence, limits, the clock, the
codec) and serves the WebSocket. Sessions are in :mod:`.session`, the wire
format in :mod:`.codec`, the stage itself in :mod:`imserver.core.stage`.

Connections of a process that died are taken out of their rooms by the
rooms core; this dialect then takes their users off the stage (queue places,
an ask, a song) unless they are still in the room on another connection.

When the bus link to Redis comes back after a loss (:meth:`KtvDialect.repair`),
every watched stage gets a new version and each session is shown it, then the
chat it missed.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from imserver.core.rooms import Shared
from imserver.dialects.ktv.codec import KtvCodec
from imserver.dialects.ktv.ws import make_factory
from imserver.web.wsbase import UpgradedResource

log = Logger()

DEFAULT_CAPACITY = 12


class KtvDialect:
    name = "ktv"

    def __init__(self, *, config, reactor, accounts, rooms, bus, presence, limits, stage,
                 catalog=None, capacity: int = DEFAULT_CAPACITY, heart_type: int = 1):
        self.config = config
        self.clock = reactor
        self.accounts = accounts
        self.rooms = rooms
        self.bus = bus
        self.presence = presence
        self.limits = limits
        self.stage = stage
        self.catalog = catalog
        self.capacity = capacity
        self.heart_type = heart_type
        self.max_message = config.chat_max_message
        self.legacy_auth = config.legacy_auth
        self.idle_timeout = config.idle_timeout
        self.messages_per_second = config.messages_per_second
        self.sessions: set = set()
        self.factory = make_factory(self, config)
        self.codec = KtvCodec(lambda text: self.factory.prepareMessage(text.encode("utf-8")))
        self.resource = UpgradedResource(self.factory)
        self._started = False
        presence.on_dead(self._connection_died)
        bus.on_resync(self.repair)

    def mount(self, router) -> None:
        router.add("/ws/ktv", self.resource)

    def websocket_resource(self):
        return self.resource

    def start(self) -> None:
        if not self._started:
            self.factory.startFactory()
            self._started = True

    def stop(self) -> defer.Deferred:
        """Close every KTV connection; fires when their members have left their rooms."""
        self.stage.stop()
        cleanups = []
        for proto in list(self.sessions):
            proto.drop(1001, "server shutting down")
            if proto.session is not None:
                cleanups.append(proto.session.lost())
        if self._started:
            self.factory.stopFactory()
            self._started = False
        return defer.DeferredList(cleanups, consumeErrors=True)

    def repair(self) -> None:
        """The bus link came back: new stage versions, then each session catches up."""
        sessions = [p.session for p in self.sessions
                    if p.session is not None and not p.session.closed]
        if not sessions:
            return
        stage_found = Shared(self.stage.resync())
        found = Shared(self.rooms.resync())  # one read of each room's log for all sessions
        for session in sessions:
            session.catch_up(found.get(), stage_found.get())

    def _connection_died(self, record: dict):
        if record.get("dialect") != "ktv":
            return None
        return defer.ensureDeferred(self._off_stage(record))

    async def _off_stage(self, record: dict) -> None:
        info = record.get("info") or {}
        room, fullname = info.get("room"), info.get("fullname")
        uid = str(record.get("user_id") or "")
        if not room or not fullname:
            return
        if any(str(m.user_id) == uid for _, m in await self.rooms.members(room)):
            return  # still in the room on another connection
        await self.stage.member_gone(room, fullname)
