"""Operations endpoints: ``GET /health`` and ``GET /metrics``."""

from klein import Klein

from imserver import metrics
from imserver.web.http import json_body


class OpsApi:
    app = Klein()

    def __init__(self, store, bus, clock, started: float):
        self.store = store
        self.bus = bus
        self.clock = clock
        self.started = started

    @app.route("/health", methods=["GET", "HEAD"])
    async def health(self, request):
        try:
            latency = await self.store.ping(timeout=1.0)
        except Exception as e:
            return json_body(request, {"status": "unavailable", "redis": "down",
                                       "error": e.__class__.__name__}, 503)
        return json_body(request, {"status": "ok", "redis": "up",
                                   "redis_latency_ms": round(latency * 1000, 3),
                                   "uptime": round(self.clock.seconds() - self.started, 1)})

    @app.route("/metrics", methods=["GET"])
    async def metrics(self, request):
        try:
            metrics.REDIS_LATENCY.set(await self.store.ping(timeout=1.0))
        except Exception:
            metrics.REDIS_LATENCY.set(float("nan"))
        metrics.UPTIME.set(self.clock.seconds() - self.started)
        metrics.BUS_PUBLISHED.set(self.bus.published)
        metrics.BUS_RECEIVED.set(self.bus.received)
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return metrics.render()
