"""
Redis access for the core: one connection pool, one pub/sub link.

:class:`Store` wraps a txredisapi 1.6 pool (``convertNumbers=False`` so
``"007"`` stays a string) and puts a timeout on every call, because a
reconnecting pool otherwise makes a caller wait for as long as Redis is down.
Lua scripts (:class:`~imserver.store.scripts.Script`) run by EVALSHA, falling
back to EVAL when Redis has forgotten them (after a restart).

:class:`Subscription` is the pub/sub side: its own connection whose protocol
resubscribes to every wanted channel in ``connectionMade``, so a Redis restart
loses no subscription; after such a reconnect it calls ``on_reconnect`` so the
owner can catch up from the stored logs what pub/sub dropped meanwhile.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, urlsplit

import txredisapi
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.logger import Logger

from imserver.store.scripts import Script

log = Logger()


class StoreTimeout(Exception):
    """Redis did not answer in time."""


class StoreError(Exception):
    """Redis answered with an error."""


def parse_url(url: str) -> tuple[str, Any, int]:
    """``redis://host:port/db`` or ``unix:///path?db=N`` -> (kind, address, db)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        db = int(parse_qs(parts.query).get("db", ["0"])[0])
        return "unix", parts.path, db
    db = int(parts.path.lstrip("/") or 0)
    return "tcp", (parts.hostname, parts.port or 6379), db


def _endpoint(reactor, url: str):
    kind, address, _ = parse_url(url)
    if kind == "unix":
        return UNIXClientEndpoint(reactor, address, timeout=5)
    return TCP4ClientEndpoint(reactor, address[0], address[1], timeout=5)


def pairs(reply) -> dict:
    """A flat [k1, v1, k2, v2…] reply as a dict."""
    if not reply:
        return {}
    it = iter(reply)
    return dict(zip(it, it))


class Store:
    """The core's handle on Redis."""

    def __init__(self, reactor, url: str, poolsize: int = 8, timeout: float = 5.0):
        self.reactor = reactor
        self.url = url
        self.timeout = timeout
        _, _, self.db = parse_url(url)
        factory = txredisapi.RedisFactory(
            url, self.db, poolsize, isLazy=True, handler=txredisapi.ConnectionHandler,
            convertNumbers=False)
        factory.maxDelay = 2
        factory.initialDelay = 0.1
        self._factory = factory
        self._redis = factory.handler
        factory.startConnecting(_endpoint(reactor, url))
        self.latency = 0.0  # seconds, last measured by ping()

    def _timed(self, d: defer.Deferred, what: str, timeout: float | None = None) -> defer.Deferred:
        timeout = timeout or self.timeout

        def timed_out(failure):
            failure.trap(defer.TimeoutError)
            raise StoreTimeout(f"Redis did not answer {what} within {timeout:g}s")

        def redis_error(failure):
            failure.trap(txredisapi.ResponseError)
            raise StoreError(str(failure.value))

        d.addTimeout(timeout, self.reactor)
        d.addErrback(timed_out)
        d.addErrback(redis_error)
        return d

    def execute(self, *args) -> defer.Deferred:
        """Run one Redis command; the reply as txredisapi gives it (str, int, list, None)."""
        return self._timed(self._redis.execute_command(*args), str(args[0]))

    async def hgetall(self, key: str) -> dict:
        return pairs(await self.execute("HGETALL", key))

    async def eval(self, script: Script, keys: Iterable = (), args: Iterable = ()):
        keys, args = list(keys), list(args)
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except StoreError as e:
            if "NOSCRIPT" not in str(e):
                raise
        return await self.execute("EVAL", script.source, len(keys), *keys, *args)

    def publish(self, channel: str, payload: str) -> defer.Deferred:
        return self.execute("PUBLISH", channel, payload)

    async def ping(self, timeout: float | None = None) -> float:
        start = time.perf_counter()
        await self._timed(self._redis.execute_command("PING"), "PING", timeout)
        self.latency = time.perf_counter() - start
        return self.latency

    async def close(self) -> None:
        await self._factory.disconnect()


class _SubscriberProtocol(txredisapi.SubscriberProtocol):
    def connectionMade(self):
        super().connectionMade()
        self.factory.owner._connected(self)

    def messageReceived(self, pattern, channel, message):
        self.factory.owner._message(channel, message)

    def connectionLost(self, reason):
        self.factory.owner._lost(self)
        super().connectionLost(reason)


class Subscription:
    """
    One pub/sub connection for a process. ``add``/``remove`` change the
    wanted channels; they are (re)subscribed whenever the link (re)connects.

    ``add`` returns a Deferred that fires once Redis has confirmed the
    subscription, so a caller can be sure to receive what is published after
    it. Each SUBSCRIBE names one channel: txredisapi hands each reply to the
    oldest waiting command, so one reply per command keeps them paired. While the link is down every
    channel counts as not confirmed.
    """

    def __init__(self, reactor, url: str, on_message: Callable[[str, Any], None],
                 on_reconnect: Callable[[], None] | None = None):
        self.reactor = reactor
        self.on_message = on_message
        self.on_reconnect = on_reconnect
        # channel -> None once confirmed, or the Deferreds waiting for confirmation
        self.channels: dict[str, list | None] = {}
        self.protocol: _SubscriberProtocol | None = None
        self._ever_connected = False
        self._ready = defer.Deferred()
        factory = txredisapi.SubscriberFactory(isLazy=True)
        factory.protocol = _SubscriberProtocol
        factory.convertNumbers = False
        factory.maxDelay = 2
        factory.initialDelay = 0.1
        factory.owner = self
        self._factory = factory
        factory.startConnecting(_endpoint(reactor, url))

    def whenReady(self) -> defer.Deferred:
        """Fires once the first connection is up and subscribed."""
        if self._ready is None:
            return defer.succeed(None)
        d = defer.Deferred()
        self._ready.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    def _connected(self, proto) -> None:
        self.protocol = proto
        proto.whenConnected().addCallback(self._resubscribe, proto)

    def _resubscribe(self, _, proto) -> defer.Deferred:
        """Subscribe every wanted channel; once Redis confirmed them all, tell the owner.

        ``on_reconnect`` runs only then: a log read in it misses nothing,
        since whatever is stored later is also published to us.
        """
        sent = [self._send(proto, channel) for channel in list(self.channels)]
        first = not self._ever_connected
        self._ever_connected = True

        def all_confirmed(_):
            if self._ready is not None:
                ready, self._ready = self._ready, None
                ready.callback(None)
            if not first and self.on_reconnect and self.protocol is proto:
                self.on_reconnect()

        return defer.DeferredList(sent, consumeErrors=True).addCallback(all_confirmed)

    def _send(self, proto, channel: str) -> defer.Deferred:
        def confirmed(_):
            waiters = self.channels.get(channel)
            if waiters:
                self.channels[channel] = None
                for d in waiters:
                    d.callback(None)
            elif channel in self.channels:
                self.channels[channel] = None

        return proto.subscribe([channel]).addCallbacks(
            confirmed, lambda f: log.warn("subscribe {c} failed: {e}", c=channel,
                                          e=f.getErrorMessage()))

    def _lost(self, proto) -> None:
        if self.protocol is proto:
            self.protocol = None
            # Redis forgot them: each is wanted again until it confirms anew
            for channel, waiters in self.channels.items():
                if waiters is None:
                    self.channels[channel] = []

    def _message(self, channel, message) -> None:
        try:
            self.on_message(channel, message)
        except Exception:
            log.failure("bus message handling failed on {channel}", channel=channel)

    def add(self, channel: str) -> defer.Deferred:
        """Subscribe; the Deferred fires when Redis has confirmed it."""
        if channel in self.channels:
            waiters = self.channels[channel]
            if waiters is None:
                return defer.succeed(None)
        else:
            waiters = self.channels[channel] = []
            if self.protocol is not None:
                self._send(self.protocol, channel)
        d = defer.Deferred()
        waiters.append(d)
        return d

    def remove(self, channel: str) -> None:
        if channel not in self.channels:
            return
        waiters = self.channels.pop(channel)
        for d in waiters or ():
            d.callback(None)
        if self.protocol is not None:
            self.protocol.unsubscribe([channel]).addErrback(lambda f: None)

    async def close(self) -> None:
        await self._factory.disconnect()
