"""
Hostile HTTP input: whatever arrives, the answer is a clear JSON error in the
dialect's form, nothing changes, and the server keeps serving.
"""

import json

import pytest_twisted
import treq
from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import defer, reactor
from twisted.internet.threads import blockingCallFromThread

from tests.conftest import blocking

params = st.dictionaries(st.sampled_from(["user_tel", "user_name", "user_password", "token",
                                          "x", ""]), st.text(max_size=300), max_size=5)
content_types = st.sampled_from(["application/json", "application/x-www-form-urlencoded",
                                 "multipart/form-data; boundary=xx", "multipart/form-data",
                                 "text/plain", ""])


def run_in_reactor(coro_fn):
    """From the hypothesis thread, run one async check on the reactor and wait for it."""
    return blockingCallFromThread(reactor, lambda: defer.ensureDeferred(coro_fn()))


@pytest_twisted.ensureDeferred
async def test_auth_endpoints_survive_random_input(server):
    """Random parameters, bodies and content types: JSON replies, no user created."""
    urls = [server.url + "/auth/register", server.url + "/auth/login"]

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(urls), params, st.binary(max_size=2000), content_types)
    def check(url, query, body, ctype):
        async def one():
            headers = {"Content-Type": [ctype]} if ctype else {}
            r = await treq.post(url, params=query, data=body, headers=headers)
            payload = json.loads(await r.text("utf-8"))
            assert r.code == 200, (r.code, payload)
            assert isinstance(payload, dict) and isinstance(payload.get("res"), str)
            assert "user_password" not in json.dumps(payload)

        run_in_reactor(one)

    await blocking(check)
    assert (await treq.get(server.url + "/health")).code == 200


@pytest_twisted.ensureDeferred
async def test_oversized_body_refused(start_server, http):
    """A body over the limit gets 413 in the dialect's JSON and the server keeps serving."""
    srv = await start_server(max_body=1000, max_upload=1000)
    r = await treq.post(srv.url + "/auth/register", data=b"x" * 200_000,
                        headers={"Content-Type": ["application/x-www-form-urlencoded"]})
    assert r.code == 413 and json.loads(await r.text())["res"] == "request body too large"
    code, body = await http.get_json(srv.url + "/auth/login", params={"user_tel": "1"})
    assert body["res"] == "missing parameters"
