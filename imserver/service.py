"""
The composition root: builds store, bus, core services, dialects and sites.

``IMService`` is what ``twistd -n imserver`` runs. ``makeService`` cannot
wait, so start-up happens in ``startService``, in order:

1. the embedded ``redis-server`` (unless ``--redis``), waited for until it answers;
2. the :class:`~imserver.store.redis.Store` pool and the bus's pub/sub link;
3. the core services (:func:`build_core`), each given its real dependencies;
4. the dialects (:func:`build_dialects`), mounted on one :class:`Router`;
5. the listening ports, last, so ``/health`` answers only when all is up.

A start-up failure (Redis missing, port taken) is logged as one line and
stops the process. ``stopService`` undoes it all in reverse order.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import treq
from twisted.application import service
from twisted.internet import defer, endpoints, threads
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from imserver.bus import Bus
from imserver.config import Config
from imserver.core.accounts import Accounts
from imserver.core.catalog import Catalog
from imserver.core.friends import Friends
from imserver.core.groups import Groups
from imserver.core.limits import Limits
from imserver.core.live import LiveRooms, deployment_secret, make_provider
from imserver.core.messages import Messages
from imserver.core.media import MediaStore
from imserver.core.presence import Presence
from imserver.core.rooms import Rooms
from imserver.core.sms import HttpSender, LogSender
from imserver.core.stage import RoomDescriber, StageMachine
from imserver.core.wallet import Wallet
from imserver.store.embedded import EmbeddedRedis
from imserver.store.redis import Store, Subscription
from imserver.web.media import MediaResource
from imserver.web.ops import OpsApi
from imserver.web.router import Router, SingleResource
from imserver.web.site import IMSite
from imserver.web.streamhooks import StreamHooks

log = Logger()


@dataclass
class Core:
    """The core services of one process; dialects receive the ones they need."""

    config: Config
    reactor: object
    store: Store
    bus: Bus
    blocking: object
    accounts: Accounts
    limits: Limits
    presence: Presence
    rooms: Rooms | None = None        # the one room namespace (000, 002, 003)
    catalog: Catalog | None = None    # videos (000 video.php, 002 watch) and songs (002)
    live: LiveRooms | None = None     # 001 live rooms (friend list: who is live)
    friends: Friends | None = None    # 001 friends and friend requests
    wallet: Wallet | None = None      # 001 gold, gifts and the ledger
    stage: StageMachine | None = None  # 002 KTV stages (queue, mic, music, video)
    media: MediaStore | None = None   # uploads and group pictures, served at /media/
    messages: Messages | None = None  # 004 direct and group conversations, offline inbox
    groups: Groups | None = None      # 004 groups
    extra: dict = field(default_factory=dict)


async def build_core(config: Config, reactor, store: Store, bus: Bus, blocking) -> Core:
    limits = Limits(store, reactor)
    if config.sms_sender == "http":
        sms = HttpSender(config.sms_gateway_url, treq)
    else:
        sms = LogSender(echo=config.sms_echo)
    accounts = Accounts(
        store, reactor, blocking, sms, token_max_age=config.token_max_age,
        sms_echo=config.sms_echo, argon2_time_cost=config.argon2_time_cost,
        argon2_memory_cost=config.argon2_memory_cost, limits=limits)
    presence = Presence(store, reactor, bus.process_id,
                        heartbeat=min(5.0, config.idle_timeout / 4),
                        dead_after=config.idle_timeout)
    core = Core(config=config, reactor=reactor, store=store, bus=bus, blocking=blocking,
                accounts=accounts, limits=limits, presence=presence)
    core.media = MediaStore(config.data_dir, config.public_url, blocking,
                            max_upload=config.max_upload,
                            per_media={"audio": config.max_upload_audio,
                                       "picture": config.max_upload_picture,
                                       "video": config.max_upload_video})
    core.rooms = Rooms(store, bus, presence, reactor, default_capacity=config.chatroom_capacity,
                       history_len=config.history_length, reserve_ttl=config.room_reserve_ttl,
                       limits=limits,
                       post_rate=config.messages_per_second)
    core.catalog = Catalog(store)
    await core.catalog.ensure_sample(config.public_url)
    provider = make_provider(
        config.live_provider, clock=reactor, http_client=treq,
        secret=config.stream_secret or await deployment_secret(store),
        rtmp_publish_url=config.rtmp_publish_url, rtmp_play_url=config.rtmp_play_url,
        hls_url=config.hls_url, qiniu_access_key=config.qiniu_access_key,
        qiniu_secret_key=config.qiniu_secret_key, qiniu_hub=config.qiniu_hub,
        qiniu_api_url=config.qiniu_api_url, qiniu_publish_domain=config.qiniu_publish_domain,
        qiniu_play_domain=config.qiniu_play_domain)
    core.live = LiveRooms(store, bus, provider, reactor)
    core.friends = Friends(store, bus, reactor, live=core.live)
    core.wallet = Wallet(store, bus, reactor, gold_per_unit=config.gold_per_unit)
    core.stage = StageMachine(store, bus, reactor,
                              RoomDescriber(core.rooms, accounts, reactor),
                              ask_timeout=config.ktv_ask_timeout, rest=config.ktv_rest)
    core.messages = Messages(store, bus, reactor, history_length=config.history_length,
                             history_days=config.history_days,
                             user_rate=2 * config.messages_per_second)
    core.groups = Groups(store, bus, accounts, media=getattr(core, "media", None),
                         public_url=config.public_url)
    return core


def build_dialects(core: Core) -> list:
    from imserver.dialects.account import AccountDialect
    from imserver.dialects.chat import ChatDialect
    from imserver.dialects.chatroom import ChatroomDialect
    from imserver.dialects.signal import SignalDialect
    from imserver.dialects.ktv import KtvDialect

    c = core
    return [
        ChatroomDialect(config=c.config, accounts=c.accounts, limits=c.limits,
                        reactor=c.reactor, rooms=c.rooms, bus=c.bus, presence=c.presence),
        SignalDialect(config=c.config, reactor=c.reactor, accounts=c.accounts,
                      presence=c.presence, bus=c.bus, limits=c.limits, messages=c.messages,
                      groups=c.groups),
        ChatDialect(config=c.config, reactor=c.reactor, accounts=c.accounts, rooms=c.rooms,
                    bus=c.bus, presence=c.presence, limits=c.limits, catalog=c.catalog,
                    blocking=c.blocking),
        AccountDialect(config=c.config, reactor=c.reactor, accounts=c.accounts,
                       limits=c.limits, friends=c.friends, wallet=c.wallet, live=c.live,
                       media=c.media),
        KtvDialect(config=c.config, reactor=c.reactor, accounts=c.accounts, rooms=c.rooms,
                   bus=c.bus, presence=c.presence, limits=c.limits, stage=c.stage,
                   catalog=c.catalog, heart_type=c.config.ktv_heart_type),
    ]


class IMService(service.MultiService):
    def __init__(self, config: Config, reactor=None):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        self.embedded: EmbeddedRedis | None = None
        self.store: Store | None = None
        self.bus: Bus | None = None
        self.core: Core | None = None
        self.dialects: list = []
        self.router: Router | None = None
        self.ports: list = []
        self.dialect_ports: dict[str, object] = {}
        self.threadpool: ThreadPool | None = None
        self.ready: defer.Deferred = defer.Deferred()
        self.failure = None

    def startService(self):
        super().startService()
        d = defer.ensureDeferred(self._start())
        d.addCallbacks(self._started, self._start_failed)

    def _started(self, _):
        ports = ", ".join(str(p.getHost()) for p in self.ports)
        log.info("imserver ready on {ports}", ports=ports)
        self.ready.callback(self)

    def _start_failed(self, failure):
        self.failure = failure
        reason = failure.getErrorMessage() or failure.type.__name__
        log.error("imserver could not start: {reason}", reason=reason)
        sys.stderr.write(f"imserver: error: could not start: {reason}\n")
        # let go of what did start (thread pool, Redis links, the embedded Redis)
        stopped = defer.ensureDeferred(self._stop())
        stopped.addErrback(lambda f: log.failure("cleaning up a failed start failed", f))
        stopped.addBoth(lambda _: self._give_up(failure))

    def _give_up(self, failure):
        self.ready.errback(failure)
        if self.reactor.running and not getattr(self, "_in_test", False):
            self.reactor.stop()

    async def _start(self) -> None:
        config, reactor = self.config, self.reactor
        config.data_dir.mkdir(parents=True, exist_ok=True)
        url = config.redis
        if not url:
            self.embedded = EmbeddedRedis(reactor, config.data_dir)
            await self.embedded.start()
            url = self.embedded.url
        self.threadpool = ThreadPool(minthreads=1, maxthreads=4, name="imserver-blocking")
        self.threadpool.start()
        pool = self.threadpool

        def blocking(fn, *args, **kw):
            return threads.deferToThreadPool(reactor, pool, fn, *args, **kw)

        self.store = Store(reactor, url)
        await self._wait_for_redis()
        self.bus = Bus(self.store, lambda on_msg, on_re: Subscription(reactor, url, on_msg, on_re))
        await self.bus.subscription.whenReady()
        self.core = await build_core(config, reactor, self.store, self.bus, blocking)
        self.dialects = build_dialects(self.core)
        self.router = Router()
        ops = OpsApi(self.store, self.bus, reactor, reactor.seconds())
        self.router.add_klein(ops.app)
        self.router.add_klein(StreamHooks(self.core.live).app)
        from imserver.dialects.account.http import AccountApi
        from imserver.dialects.signal.upload import UploadApi
        UploadApi(media=self.core.media, accounts=self.core.accounts, limits=self.core.limits,
                  blocking=blocking, legacy_auth=config.legacy_auth).mount(self.router)
        self.router.add_prefix("/media/", MediaResource(self.core.media))
        for dialect in self.dialects:
            dialect.mount(self.router)
        self.core.presence.start()
        for dialect in self.dialects:
            dialect.start()
        # the routes check their own limits; the site only stops buffering
        # well before: the body cap plus room for a form's other fields, and
        # the upload cap on the upload paths alone
        slack = 64 * 1024
        max_request = config.max_body + slack
        site = IMSite(self.router, max_request, blocking,
                      upload_request=max(config.max_body, config.max_upload) + slack,
                      upload_paths=UploadApi.PATHS + AccountApi.UPLOAD_PATHS)
        for ep in config.listen:
            port = await endpoints.serverFromString(reactor, ep).listen(site)
            self.ports.append(port)
        by_name = {d.name: d for d in self.dialects}
        for name, ep in config.dialect_listen:
            dialect = by_name.get(name)
            resource = dialect.websocket_resource() if dialect else None
            if resource is None:
                raise RuntimeError(f"dialect {name} has no WebSocket to serve on {ep}")
            dsite = IMSite(SingleResource(resource), max_request)
            self.dialect_ports[name] = await endpoints.serverFromString(reactor, ep).listen(dsite)

    async def _wait_for_redis(self, timeout: float = 20.0) -> None:
        deadline = self.reactor.seconds() + timeout
        while True:
            try:
                await self.store.ping()
                return
            except Exception as e:
                if self.reactor.seconds() > deadline:
                    raise RuntimeError(f"Redis at {self.store.url} does not answer ({e})")
                await deferLater(self.reactor, 0.1, lambda: None)

    async def _stop(self) -> None:
        for port in self.ports + list(self.dialect_ports.values()):
            await port.stopListening()
        self.ports, self.dialect_ports = [], {}
        # each part is let go of once: a failed start stops what did start,
        # and twistd's shutdown then calls this again
        dialects, self.dialects = self.dialects, []
        for dialect in dialects:
            try:
                # a dialect may return a Deferred: its sessions leave their rooms
                await defer.maybeDeferred(dialect.stop)
            except Exception:
                log.failure("stopping dialect {name} failed", name=dialect.name)
        core, self.core = self.core, None
        if core is not None:
            try:
                await core.presence.shutdown()
            except Exception:
                log.failure("presence shutdown failed")
        bus, self.bus = self.bus, None
        if bus is not None:
            await bus.close()
        store, self.store = self.store, None
        if store is not None:
            await store.close()
        pool, self.threadpool = self.threadpool, None
        if pool is not None:
            pool.stop()
        embedded, self.embedded = self.embedded, None
        if embedded is not None:
            await embedded.stop()

    def stopService(self):
        super().stopService()
        return defer.ensureDeferred(self._stop())
