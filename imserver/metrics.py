"""
Prometheus metrics, served as text at ``GET /metrics``.

Counters are process-wide (one registry per process); the gauges that need
fresh values (Redis latency, uptime) are read when scraped.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

CONNECTIONS = Gauge("imserver_connections", "Open WebSocket connections",
                    ["dialect"], registry=REGISTRY)
MESSAGES_IN = Counter("imserver_messages_in_total", "Messages received from clients",
                      ["dialect"], registry=REGISTRY)
MESSAGES_OUT = Counter("imserver_messages_out_total", "Messages written to clients",
                       ["dialect"], registry=REGISTRY)
HTTP_REQUESTS = Counter("imserver_http_requests_total", "HTTP requests served",
                        ["dialect"], registry=REGISTRY)
SLOW_CLIENTS = Counter("imserver_slow_clients_total",
                       "Connections closed because they could not keep up",
                       ["dialect"], registry=REGISTRY)
REDIS_LATENCY = Gauge("imserver_redis_latency_seconds", "Round trip of a Redis PING",
                      registry=REGISTRY)
UPTIME = Gauge("imserver_uptime_seconds", "Seconds since this process started",
               registry=REGISTRY)
BUS_PUBLISHED = Gauge("imserver_bus_published", "Events this process published",
                      registry=REGISTRY)
BUS_RECEIVED = Gauge("imserver_bus_received", "Events this process received for local sinks",
                     registry=REGISTRY)


def render() -> bytes:
    return generate_latest(REGISTRY)
