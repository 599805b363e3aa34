"""
The event bus: domain events to topics, delivered to every process.

The core publishes events (``room.message``, ``stage.changed``, …) to topics
(``user:<id>``, ``room:<name>``, ``group:<id>``). Every event travels through
Redis pub/sub, even to subscribers in the publishing process, so that every
process sees one order per topic (the order Redis published them in): members
of one room on two processes see the same sequence. One exception, the 1:1
hot path: a direct message is delivered by its sending process to its own
sinks straight from the script's reply (:meth:`Bus.dispatch_here`), and
published only when another process has a connection of the user.

Each process holds one pub/sub connection and subscribes to a topic's channel
while it has local sinks for it (sessions come and go, the channel set
follows). A sink is usually a WebSocket session: it has a ``codec`` and a
``conn_id`` and a ``deliver(event, wire)`` method. For each event the bus
asks every codec that has sinks on the topic to encode the event **once**
(:meth:`Event.wire`, cached on the event) and hands that same wire object
(e.g. an Autobahn ``PreparedMessage``) to each of that codec's sinks: fan-out
costs one encoding per dialect, not one per recipient. In-process listeners
use ``codec = None`` and receive ``wire = None``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from imserver.store import keys

log = Logger()

_CHANNEL_PREFIX = keys.bus_channel("")
ID_MARK = "\x01"                  # stands for a stored id in published_by_script's data
_ID_MARK_JSON = '"\\u0001"'         # how json.dumps writes it


class Event:
    """One event on a topic.

    ``local`` is set on an event its origin process delivers to its own
    sinks itself (:meth:`Bus.dispatch_here`) rather than through Redis; its
    JSON then carries ``"h":1``, and the copy Redis sends back to the origin
    is dropped there (other processes read it as any other event).
    """

    __slots__ = ("topic", "kind", "data", "exclude", "ts", "origin", "local", "_wires")

    def __init__(self, topic: str, kind: str, data: dict, exclude: str | None = None,
                 ts: float | None = None, origin: str = "", local: bool = False):
        self.topic = topic
        self.kind = kind
        self.data = data
        self.exclude = exclude
        self.ts = time.time() if ts is None else ts
        self.origin = origin
        self.local = local
        self._wires: dict = {}

    def wire(self, codec):
        """The codec's encoding of this event, computed once per codec."""
        try:
            return self._wires[codec]
        except KeyError:
            w = self._wires[codec] = codec.encode_event(self)
            return w

    def to_json(self) -> str:
        raw = {"k": self.kind, "d": self.data, "x": self.exclude, "t": self.ts, "o": self.origin}
        if self.local:
            raw["h"] = 1
        return json.dumps(raw, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, topic: str, text) -> "Event":
        if isinstance(text, bytes):
            text = text.decode()
        raw = json.loads(text)
        return cls(topic, raw["k"], raw["d"], raw.get("x"), raw.get("t"), raw.get("o", ""))

    def __repr__(self):
        return f"<Event {self.kind} on {self.topic}>"


def split_at_id(event: Event) -> tuple[str, str]:
    """The event's JSON before and after the :data:`ID_MARK` in its data (first one)."""
    head, sep, tail = event.to_json().partition(_ID_MARK_JSON)
    if not sep:
        raise ValueError("the event data must hold ID_MARK")
    return head + '"', '"' + tail


class _Listener:
    """Adapts a plain callable to the sink interface."""

    codec = None
    conn_id = None

    def __init__(self, fn):
        self.fn = fn

    def deliver(self, event, wire):
        self.fn(event)

    def __eq__(self, other):
        return isinstance(other, _Listener) and other.fn == self.fn

    def __hash__(self):
        return hash(self.fn)


class Bus:
    def __init__(self, store, subscription_factory, process_id: str | None = None):
        """
        ``subscription_factory(on_message, on_reconnect)`` builds the pub/sub
        link (an :class:`imserver.store.redis.Subscription`).
        """
        self.store = store
        self.process_id = process_id or os.urandom(6).hex()
        # topic -> codec -> list of sinks (lists: iteration order = subscription order)
        self._sinks: dict[str, dict[Any, list]] = {}
        self._resync_hooks: list = []
        self.published = 0
        self.received = 0
        self.dropped_own = 0          # copies of events this process delivered itself
        # how the JSON of such an event ends (Event.to_json puts "o" and "h" last)
        self._own_local_end = ',"o":' + json.dumps(self.process_id) + ',"h":1}'
        self.subscription = subscription_factory(self._on_message, self._on_reconnect)

    async def publish(self, topic: str, kind: str, data: dict, exclude: str | None = None) -> None:
        event = Event(topic, kind, data, exclude, origin=self.process_id)
        self.published += 1
        await self.store.publish(_CHANNEL_PREFIX + topic, event.to_json())

    def published_by_script(self, topic: str, kind: str, data: dict,
                            exclude: str | None = None) -> tuple[str, str, str]:
        """For a Lua script that stores something and publishes its event itself.

        ``data`` holds :data:`ID_MARK` where the stored id goes, before any
        field a client chose (the first occurrence is taken). Returns the
        Redis channel and the event's JSON before and after that id: the
        script publishes ``head .. id .. tail``, so subscribers see events
        in the order the script stored them, on every process.
        """
        head, tail = split_at_id(Event(topic, kind, data, exclude, origin=self.process_id))
        self.published += 1
        return _CHANNEL_PREFIX + topic, head, tail

    def subscribe(self, topic: str, sink) -> defer.Deferred:
        """
        Add a sink to a topic. The Deferred fires once the process is
        subscribed in Redis: await it before publishing something the sink
        must see (a join notice the joiner itself receives).
        """
        by_codec = self._sinks.get(topic)
        if by_codec is None:
            by_codec = self._sinks[topic] = {}
        sinks = by_codec.setdefault(sink.codec, [])
        if sink not in sinks:
            sinks.append(sink)
        return self.subscription.add(_CHANNEL_PREFIX + topic)

    def unsubscribe(self, topic: str, sink) -> None:
        by_codec = self._sinks.get(topic)
        if not by_codec:
            return
        sinks = by_codec.get(sink.codec)
        if sinks and sink in sinks:
            sinks.remove(sink)
            if not sinks:
                del by_codec[sink.codec]
        if not by_codec:
            del self._sinks[topic]
            self.subscription.remove(_CHANNEL_PREFIX + topic)

    def listen(self, topic: str, fn) -> _Listener:
        """
        Subscribe an in-process callable ``fn(event)``; returns the sink to
        unsubscribe with (``sink.ready`` fires once Redis confirmed).
        """
        sink = _Listener(fn)
        sink.ready = self.subscribe(topic, sink)
        return sink

    def has_local(self, topic: str) -> bool:
        return topic in self._sinks

    def on_resync(self, hook) -> None:
        """``hook()`` runs after the pub/sub link came back: catch up from the logs."""
        self._resync_hooks.append(hook)

    def _on_reconnect(self) -> None:
        log.info("bus link to Redis is back; resynchronising")
        for hook in self._resync_hooks:
            try:
                hook()
            except Exception:
                log.failure("resync hook failed")

    def _on_message(self, channel: str, message) -> None:
        if isinstance(channel, bytes):
            channel = channel.decode()
        topic = channel[len(_CHANNEL_PREFIX):]
        by_codec = self._sinks.get(topic)
        if not by_codec:
            return
        if message.__class__ is bytes:
            message = message.decode()
        if message.endswith(self._own_local_end):
            self.dropped_own += 1       # delivered here already (dispatch_here)
            return
        self.received += 1
        event = Event.from_json(topic, message)
        self.dispatch(event)

    def dispatch_here(self, event: Event) -> None:
        """Deliver an event of this process to its own sinks, without Redis.

        For an event a script stored and published (or did not need to
        publish, nobody elsewhere following the topic): its JSON carried
        ``"h":1`` and the copy Redis sends back is dropped. Events so
        delivered are ``local``; they are not in Redis' order of the topic
        (see docs/design.rst, "Direct messages on the sending process").
        """
        event.local = True
        self.dispatch(event)

    def dispatch(self, event: Event) -> None:
        by_codec = self._sinks.get(event.topic)
        if not by_codec:
            return
        exclude = event.exclude
        for codec, sinks in list(by_codec.items()):
            wire = None
            if codec is not None:
                try:
                    wire = event.wire(codec)
                except Exception:
                    log.failure("encoding {event} failed", event=event)
                    continue
                if wire is None:
                    continue
            for sink in tuple(sinks):
                if exclude is not None and sink.conn_id == exclude:
                    continue
                try:
                    sink.deliver(event, wire)
                except Exception:
                    log.failure("delivering {event} failed", event=event)

    async def close(self) -> None:
        await self.subscription.close()
