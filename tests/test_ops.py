"""/health and /metrics over real HTTP."""

import pytest_twisted


@pytest_twisted.ensureDeferred
async def test_health_ok(server, http):
    """/health is 200 with a JSON body while Redis answers."""
    code, body = await http.get_json(server.url + "/health")
    assert code == 200 and body["status"] == "ok" and body["redis"] == "up"


@pytest_twisted.ensureDeferred
async def test_metrics_prometheus_text(server, http):
    """/metrics serves Prometheus text with the documented series."""
    await http.get_json(server.url + "/auth/login", params={"user_tel": "1"})
    r = await http.get(server.url + "/metrics")
    text = await r.text()
    assert r.code == 200 and r.headers.getRawHeaders("content-type")[0].startswith("text/plain")
    for name in ("imserver_connections", "imserver_messages_in_total",
                 "imserver_messages_out_total", "imserver_redis_latency_seconds",
                 "imserver_uptime_seconds", "imserver_http_requests_total"):
        assert name in text


@pytest_twisted.ensureDeferred
async def test_unknown_path_404(server, http):
    """An unknown path is a JSON 404, not a traceback."""
    code, body = await http.get_json(server.url + "/nope")
    assert code == 404 and body["error"] == "not found"
