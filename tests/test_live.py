"""
Live rooms: the stream providers (local RTMP server, Qiniu Pili), the
LiveRooms service on a real Redis, and the on_publish hooks on the real
server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.web import resource, server

from imserver.core.accounts import User
from imserver.core.live import (
    LiveRooms, LocalProvider, QiniuProvider, StreamProviderError, qiniu_authorization,
)
from imserver.store import keys
from tests.conftest import blocking

T0 = 1_700_000_000.0


def clock_at(t=T0):
    c = Clock()
    c.advance(t)
    return c


def local_provider(clock=None, **kw):
    return LocalProvider("rtmp.example.com:1935", "play.example.com", "http://hls.example.com/hls",
                         "s3cret", clock or clock_at(), **kw)


def run(coro):
    """Drive a coroutine that never waits on the reactor (pure providers)."""
    from twisted.internet.defer import ensureDeferred
    results = []
    ensureDeferred(coro).addBoth(results.append)
    assert results, "coroutine did not finish synchronously"
    if isinstance(results[0], BaseException) or hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


# -- LocalProvider --------------------------------------------------------

class LocalProviderTests:
    def test_description_has_document_shape(self):
        """The stream description carries every key of 001's example with real values."""
        s = run(local_provider().create("586f00dd5e77b017852a1a7e", "my show"))
        d = s.description
        for key in ("id", "hub", "title", "publishKey", "publishSecurity", "nonce", "disabled",
                    "disabledTill", "hosts", "createdAt", "updatedAt", "expireAt"):
            assert key in d
        assert d["id"] == "local.live.586f00dd5e77b017852a1a7e"
        assert d["hub"] == "live" and d["title"] == "586f00dd5e77b017852a1a7e"
        assert d["roomTitle"] == "my show"
        assert d["hosts"]["publish"] == {"rtmp": "rtmp.example.com:1935"}
        assert d["hosts"]["play"] == {"rtmp": "play.example.com", "http": "hls.example.com"}
        assert set(d["hosts"]["live"]) == {"rtmp", "http", "hls", "hdl", "snapshot"}
        assert set(d["hosts"]["playback"]) == {"http", "hls"}
        assert d["createdAt"] == "2023-11-14T22:13:20.000+00:00"
        assert d["expireAt"] == "2023-11-15T22:13:20.000+00:00"
        assert d["disabled"] is False
        json.dumps(d)  # JSON-able as is

    def test_urls_follow_configured_hosts(self):
        """publish/play/HLS URLs are built from the configured hosts, app and stream name."""
        s = run(local_provider().create("abcd1234", ""))
        d = s.description
        assert d["publishUrl"] == f"rtmp://rtmp.example.com:1935/live/abcd1234?key={d['publishKey']}"
        assert d["playUrl"] == s.play_url == "rtmp://play.example.com/live/abcd1234"
        assert d["hlsUrl"] == s.hls_url == "http://hls.example.com/hls/abcd1234.m3u8"
        assert s.expires_at == T0 + 86400

    def test_pili_v1_client_formula_gives_publish_url(self):
        """rtmp://<hosts.publish.rtmp>/<hub>/<title>?key=<publishKey> (old clients) is the publish URL."""
        d = run(local_provider().create("abcd1234", "")).description
        built = f"rtmp://{d['hosts']['publish']['rtmp']}/{d['hub']}/{d['title']}?key={d['publishKey']}"
        assert built == d["publishUrl"]

    def test_key_valid_only_for_its_stream(self):
        """A publish key checks for its own stream and for no other."""
        p = local_provider()
        key = run(p.create("stream-one", "")).description["publishKey"]
        assert p.check_publish("stream-one", {"key": key})
        assert p.check_publish("stream-one", {"key": key}, "live")
        assert not p.check_publish("stream-two", {"key": key})
        assert not p.check_publish("stream-one", {"key": key}, "other-app")

    def test_key_expires(self):
        """A key is refused after its expiry, unless expired keys are explicitly allowed."""
        c = clock_at()
        p = local_provider(c, key_ttl=60)
        key = run(p.create("stream-one", "")).description["publishKey"]
        c.advance(59)
        assert p.check_publish("stream-one", {"key": key})
        c.advance(1)
        assert not p.check_publish("stream-one", {"key": key})
        assert p.check_publish("stream-one", {"key": key}, allow_expired=True)

    def test_forged_keys_refused(self):
        """Keys with a moved expiry, another secret, or garbage are refused."""
        p = local_provider()
        key = run(p.create("stream-one", "")).description["publishKey"]
        expires, sig = key.split("-")
        assert not p.check_publish("stream-one", {"key": f"{int(expires) + 3600}-{sig}"})
        other = LocalProvider("h", "h", "http://h", "another secret", clock_at())
        assert not p.check_publish("stream-one", {"key": other.publish_key("stream-one", int(expires))})
        for bad in ("", "-", "abc", f"{expires}-", f"-{sig}", "9" * 40 + "-" + sig, f"x{expires}-{sig}"):
            assert not p.check_publish("stream-one", {"key": bad})
        assert not p.check_publish("stream-one", {})

    def test_needs_secret(self):
        """A local provider without a secret cannot be built."""
        with pytest.raises(ValueError):
            LocalProvider("a", "b", "http://c", "", clock_at())


# -- Qiniu signing ----------------------------------------------------------

class QiniuSigningTests:
    def test_known_vectors(self):
        """The request signature matches Qiniu's published SDK test vectors."""
        assert qiniu_authorization(
            "ak", "sk", method="GET", path="", query="", host="",
            content_type="application/json", body='{"name": "test"}',
        ) == "Qiniu ak:K1DI0goT05yhGizDFE5FiPJxAj4="
        assert qiniu_authorization(
            "ak", "sk", method="GET", path="/mkfile/sdf.jpg", query="s=er3&df",
            host="upload.qiniup.com", content_type="application/x-www-form-urlencoded",
            body="name=test&language=go",
            qiniu_headers={"X-Qiniu-Bbb": "BBB", "X-Qiniu-Aaa": "DDD", "X-Qiniu-": "a"},
        ) == "Qiniu ak:PUFPWsEUIpk_dzUvvxTTmwhp3p4="

    def test_octet_stream_body_not_signed(self):
        """An application/octet-stream body does not enter the signature."""
        a = qiniu_authorization("ak", "sk", method="POST", path="/x", query="", host="h",
                                content_type="application/octet-stream", body=b"one")
        b = qiniu_authorization("ak", "sk", method="POST", path="/x", query="", host="h",
                                content_type="application/octet-stream", body=b"two")
        assert a == b


# -- a local server that answers like Pili's v2 API -----------------------------

def expected_auth(ak, sk, request, body: bytes) -> str:
    """Qiniu's documented algorithm, written out independently of the code under test."""
    uri = request.uri.decode()
    ctype = request.getHeader("content-type")
    data = f"{request.method.decode()} {uri}\nHost: {request.getHeader('host')}\n"
    if ctype:
        data += f"Content-Type: {ctype}\n"
    data += "\n"
    raw = data.encode() + (body if ctype and ctype != "application/octet-stream" else b"")
    sign = base64.urlsafe_b64encode(hmac.new(sk.encode(), raw, hashlib.sha1).digest()).decode()
    return f"Qiniu {ak}:{sign}"


class FakePili(resource.Resource):
    isLeaf = True

    def __init__(self, ak, sk, hub):
        super().__init__()
        self.ak, self.sk, self.hub = ak, sk, hub
        self.streams: dict[str, dict] = {}
        self.calls: list[tuple[str, str, dict]] = []
        self.fail_with: int | None = None

    def render(self, request):
        body = request.content.read()
        request.setHeader(b"content-type", b"application/json")
        if request.getHeader("authorization") != expected_auth(self.ak, self.sk, request, body):
            request.setResponseCode(401)
            return b'{"error":"bad token"}'
        payload = json.loads(body) if body else {}
        path = request.path.decode()
        self.calls.append((request.method.decode(), path, payload))
        if self.fail_with:
            request.setResponseCode(self.fail_with)
            return b'{"error":"internal error"}'
        parts = path.strip("/").split("/")
        if request.method == b"POST" and parts == ["v2", "hubs", self.hub, "streams"]:
            if payload["key"] in self.streams:
                request.setResponseCode(614)
                return b'{"error":"stream already exists"}'
            self.streams[payload["key"]] = {"disabledTill": 0}
            return b"{}"
        if (request.method == b"POST" and len(parts) == 6 and parts[:4] == ["v2", "hubs", self.hub, "streams"]
                and parts[5] == "disabled"):
            key = base64.urlsafe_b64decode(parts[4]).decode()
            if key not in self.streams:
                request.setResponseCode(612)
                return b'{"error":"no such stream"}'
            self.streams[key]["disabledTill"] = payload["disabledTill"]
            return b""
        request.setResponseCode(404)
        return b'{"error":"not found"}'


@pytest.fixture
def pili():
    fake = FakePili("AK-test", "SK-test", "myhub")
    port = reactor.listenTCP(0, server.Site(fake), interface="127.0.0.1")
    fake.base = f"http://127.0.0.1:{port.getHost().port}"
    yield fake
    pytest_twisted.blockon(port.stopListening())


def qiniu_provider(fake, clock=None, secret=None):
    return QiniuProvider(
        "AK-test", secret or "SK-test", "myhub", fake.base, treq,
        publish_domain="pili-publish.example.com", rtmp_play_domain="pili-live-rtmp.example.com",
        hls_play_domain="pili-live-hls.example.com", hdl_play_domain="pili-live-hdl.example.com",
        clock=clock or clock_at(), timeout=5)


class QiniuProviderTests:
    @pytest_twisted.ensureDeferred
    async def test_creates_stream_through_api(self, pili):
        """create() POSTs /v2/hubs/<hub>/streams {"key"} with a valid Qiniu signature."""
        s = await qiniu_provider(pili).create("586f00dd5e77b017852a1a7e", "show")
        assert pili.calls == [("POST", "/v2/hubs/myhub/streams", {"key": "586f00dd5e77b017852a1a7e"})]
        assert "586f00dd5e77b017852a1a7e" in pili.streams
        d = s.description
        assert d["id"] == "z1.myhub.586f00dd5e77b017852a1a7e"
        assert d["hub"] == "myhub" and d["title"] == "586f00dd5e77b017852a1a7e"
        assert d["hosts"]["publish"]["rtmp"] == "pili-publish.example.com"
        assert d["hosts"]["live"]["hdl"] == "pili-live-hdl.example.com"
        assert d["playUrl"] == "rtmp://pili-live-rtmp.example.com/myhub/586f00dd5e77b017852a1a7e"
        assert d["hlsUrl"] == "http://pili-live-hls.example.com/myhub/586f00dd5e77b017852a1a7e.m3u8"
        assert d["hdlUrl"] == "http://pili-live-hdl.example.com/myhub/586f00dd5e77b017852a1a7e.flv"

    @pytest_twisted.ensureDeferred
    async def test_publish_url_is_pili_signed(self):
        """The publish URL is Pili's: ?e=<expiry>&token=<AK>:<hmac-sha1 of /hub/stream?e=...>."""
        fake = FakePili("AK-test", "SK-test", "myhub")
        fake.base = "http://unused.invalid"

        class NoHttp:
            async def request(self, *a, **kw):
                class R:
                    code = 200

                    async def content(self):
                        return b"{}"
                return R()

        p = QiniuProvider("AK-test", "SK-test", "myhub", fake.base, NoHttp(),
                          publish_domain="pub.example.com", rtmp_play_domain="r.example.com",
                          hls_play_domain="h.example.com", clock=clock_at(), key_ttl=3600)
        d = (await p.create("streamtitle", "")).description
        url = urlsplit(d["publishUrl"])
        assert (url.scheme, url.netloc, url.path) == ("rtmp", "pub.example.com", "/myhub/streamtitle")
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        assert q["e"] == str(int(T0) + 3600)
        sign = base64.urlsafe_b64encode(hmac.new(b"SK-test", f"/myhub/streamtitle?e={q['e']}".encode(),
                                                 hashlib.sha1).digest()).decode()
        assert q["token"] == f"AK-test:{sign}" == d["publishKey"]
        assert p.check_publish("streamtitle", q)
        assert not p.check_publish("othertitle", q)

    @pytest_twisted.ensureDeferred
    async def test_close_disables_stream(self, pili):
        """close() disables the stream for good through the API."""
        p = qiniu_provider(pili)
        await p.create("abcd1234", "")
        await p.close("abcd1234")
        assert pili.streams["abcd1234"]["disabledTill"] == -1
        assert pili.calls[-1][1] == "/v2/hubs/myhub/streams/YWJjZDEyMzQ=/disabled"

    @pytest_twisted.ensureDeferred
    async def test_wrong_secret_is_refused(self, pili):
        """The local API refuses a wrong signature, and the provider reports it as an error."""
        with pytest.raises(StreamProviderError):
            await qiniu_provider(pili, secret="wrong").create("abcd1234", "")
        assert pili.streams == {}

    @pytest_twisted.ensureDeferred
    async def test_api_error_raises(self, pili):
        """An API error status becomes StreamProviderError."""
        pili.fail_with = 500
        with pytest.raises(StreamProviderError):
            await qiniu_provider(pili).create("abcd1234", "")

    @pytest_twisted.ensureDeferred
    async def test_existing_stream_is_usable(self, pili):
        """614 (stream exists) on create still yields the stream."""
        pili.streams["abcd1234"] = {"disabledTill": 0}
        s = await qiniu_provider(pili).create("abcd1234", "")
        assert s.name == "abcd1234"

    @pytest_twisted.ensureDeferred
    async def test_unreachable_api_raises(self):
        """A refused connection becomes StreamProviderError, not a crash."""
        port = reactor.listenTCP(0, server.Site(resource.Resource()), interface="127.0.0.1")
        base = f"http://127.0.0.1:{port.getHost().port}"
        await port.stopListening()
        fake = FakePili("AK-test", "SK-test", "myhub")
        fake.base = base
        with pytest.raises(StreamProviderError):
            await qiniu_provider(fake).create("abcd1234", "")


# -- LiveRooms on a real Redis ---------------------------------------------------

class Events:
    """Every event on the listened topics, once the subscription is known to work."""

    def __init__(self, bus):
        self.bus = bus
        self.events = []

    async def listen(self, *topics):
        for topic in topics:
            await self.bus.listen(topic, self.events.append).ready
        return self

    async def wait(self, n, timeout=3.0):
        deadline = reactor.seconds() + timeout
        while len(self.events) < n:
            if reactor.seconds() > deadline:
                raise AssertionError(f"expected {n} events, got {self.events!r}")
            await deferLater(reactor, 0.01, lambda: None)
        return [(e.topic, e.kind) for e in self.events]

    async def quiet(self, within=0.1):
        before = len(self.events)
        await deferLater(reactor, within, lambda: None)
        return len(self.events) == before


class RecordingProvider(LocalProvider):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.created, self.closed = [], []

    async def create(self, stream, title):
        self.created.append(stream)
        await deferLater(reactor, 0, lambda: None)   # a real provider waits on the network
        return await super().create(stream, title)

    async def close(self, stream):
        self.closed.append(stream)


def alice():
    return User(id=7, phone="13800000007", nickname="alice")


@pytest.fixture
def clock():
    return clock_at()


@pytest.fixture
def provider(clock):
    return RecordingProvider("rtmp.example.com", "play.example.com", "http://hls.example.com/hls",
                             "s3cret", clock, key_ttl=3600)


@pytest.fixture
def live(store, bus, provider, clock):
    return LiveRooms(store, bus, provider, clock)


class LiveRoomsTests:
    @pytest_twisted.ensureDeferred
    async def test_open_makes_user_live(self, live, bus, store):
        """open() returns the description, the user is live with its play URL, live.started is sent."""
        ev = await Events(bus).listen("user:7")
        desc = await live.open(alice(), "evening show")
        assert desc["roomTitle"] == "evening show" and desc["hub"] == "live"
        assert len(desc["title"]) == 24 and desc["id"] == f"local.live.{desc['title']}"
        assert await live.is_live(7)
        assert await live.live_users([7, 8, 9]) == {7: desc["playUrl"]}
        assert await ev.wait(1) == [("user:7", "live.started")]
        data = ev.events[0].data
        assert data["user_id"] == 7 and data["play_url"] == desc["playUrl"]
        assert data["stream_id"] == desc["id"] and data["title"] == "evening show"
        # state expires with the publish key
        ttl = await store.execute("PTTL", keys.live_user(7))
        assert 0 < ttl <= 3600 * 1000 + 1000
        assert await store.execute("GET", keys.live_stream(desc["title"])) == "7"

    @pytest_twisted.ensureDeferred
    async def test_open_twice_returns_same_room(self, live, bus, provider):
        """A second open() of a live user returns the same stream, no new event."""
        ev = await Events(bus).listen("user:7")
        first = await live.open(alice())
        second = await live.open(alice(), "other title")
        assert first == second and len(provider.created) == 1
        await ev.wait(1)
        assert await ev.quiet()

    @pytest_twisted.ensureDeferred
    async def test_concurrent_opens_make_one_room(self, live, provider):
        """Concurrent open() calls of one user end with one room; extra streams are closed."""
        descs = await defer.gatherResults(
            [defer.ensureDeferred(live.open(alice())) for _ in range(5)])
        assert len({d["id"] for d in descs}) == 1
        kept = descs[0]["title"]
        assert sorted(provider.closed) == sorted(s for s in provider.created if s != kept)

    @pytest_twisted.ensureDeferred
    async def test_close(self, live, bus, provider, store):
        """close() ends the room: not live, live.stopped, stream revoked; a second close is False."""
        ev = await Events(bus).listen("user:7")
        desc = await live.open(alice())
        assert await live.close(alice()) is True
        assert not await live.is_live(7) and await live.live_users([7]) == {}
        assert await ev.wait(2) == [("user:7", "live.started"), ("user:7", "live.stopped")]
        assert ev.events[1].data == {"user_id": 7, "stream": desc["title"], "reason": "closed"}
        assert provider.closed == [desc["title"]]
        assert await store.execute("EXISTS", keys.live_stream(desc["title"])) == 0
        assert await live.close(alice()) is False
        assert not await live.authorize_publish(desc["title"], {"key": desc["publishKey"]}, "live")

    @pytest_twisted.ensureDeferred
    async def test_publish_checks_key(self, live, clock, store):
        """authorize_publish admits only the open room's stream with its unexpired key."""
        desc = await live.open(alice())
        stream, key = desc["title"], desc["publishKey"]
        other = await live.open(User(id=8))
        assert not await live.authorize_publish(stream, {"key": other["publishKey"]}, "live")
        assert not await live.authorize_publish(stream, {"key": key}, "elsewhere")
        assert not await live.authorize_publish("0" * 24, {"key": key}, "live")
        assert not await live.authorize_publish("../../x", {"key": key})
        assert not await live.authorize_publish(stream, {})
        assert await live.authorize_publish(stream, {"key": key}, "live")
        assert await store.execute("HGET", keys.live_user(7), "state") == "publishing"
        clock.advance(3600)
        assert not await live.authorize_publish(stream, {"key": key}, "live")

    @pytest_twisted.ensureDeferred
    async def test_publish_done_then_republish(self, live, bus):
        """publish_done makes the user not live; publishing again with the key makes them live again."""
        ev = await Events(bus).listen("user:7")
        desc = await live.open(alice())
        stream, key = desc["title"], {"key": desc["publishKey"]}
        assert await live.authorize_publish(stream, key, "live")
        assert not await live.publish_done(stream, {"key": "1-00"}, "live")
        assert await live.is_live(7)
        assert await live.publish_done(stream, key, "live")
        assert not await live.is_live(7)
        assert await live.authorize_publish(stream, key, "live")
        assert await live.live_users([7]) == {7: desc["playUrl"]}
        assert await ev.wait(3) == [("user:7", "live.started"), ("user:7", "live.stopped"),
                                    ("user:7", "live.started")]
        assert ev.events[1].data["reason"] == "publish_done"

    @pytest_twisted.ensureDeferred
    async def test_open_after_publish_done_reuses_room(self, live, provider):
        """open() on an idle room makes it live again with the same stream."""
        desc = await live.open(alice())
        await live.publish_done(desc["title"], {"key": desc["publishKey"]}, "live")
        assert not await live.is_live(7)
        assert await live.open(alice()) == desc
        assert await live.is_live(7) and len(provider.created) == 1

    @pytest_twisted.ensureDeferred
    async def test_state_expires_with_key(self, live, store):
        """Without a close, the room's state expires with its publish key."""
        desc = await live.open(alice())
        await store.execute("PEXPIRE", keys.live_user(7), 1)
        await store.execute("PEXPIRE", keys.live_stream(desc["title"]), 1)
        await deferLater(reactor, 0.05, lambda: None)
        assert not await live.is_live(7)
        assert not await live.authorize_publish(desc["title"], {"key": desc["publishKey"]})

    @pytest_twisted.ensureDeferred
    async def test_live_users_many(self, live):
        """live_users reports exactly the live ones of many users."""
        for uid in (1, 3, 5):
            await live.open(User(id=uid))
        got = await live.live_users(range(1, 7))
        assert sorted(got) == [1, 3, 5] and all(u.startswith("rtmp://") for u in got.values())
        assert await live.live_users([]) == {}


class LiveRoomsOnQiniuTests:
    @pytest_twisted.ensureDeferred
    async def test_open_and_close_through_api(self, store, bus, pili, clock):
        """With Qiniu, open() creates the stream by API and close() disables it."""
        live = LiveRooms(store, bus, qiniu_provider(pili, clock), clock)
        desc = await live.open(alice(), "show")
        assert desc["id"] == f"z1.myhub.{desc['title']}" and desc["title"] in pili.streams
        assert await live.live_users([7]) == {7: desc["playUrl"]}
        assert await live.close(alice())
        assert pili.streams[desc["title"]]["disabledTill"] == -1

    @pytest_twisted.ensureDeferred
    async def test_provider_failure_stores_nothing(self, store, bus, pili, clock):
        """When the API fails, open() raises StreamProviderError and the user is not live."""
        pili.fail_with = 500
        live = LiveRooms(store, bus, qiniu_provider(pili, clock), clock)
        with pytest.raises(StreamProviderError):
            await live.open(alice())
        assert not await live.is_live(7)
        assert await store.execute("EXISTS", keys.live_user(7)) == 0

    @pytest_twisted.ensureDeferred
    async def test_close_survives_provider_failure(self, store, bus, pili, clock):
        """close() ends the room even when the API refuses to disable the stream."""
        live = LiveRooms(store, bus, qiniu_provider(pili, clock), clock)
        await live.open(alice())
        pili.fail_with = 500
        assert await live.close(alice())
        assert not await live.is_live(7)


# -- provider selection -------------------------------------------------------------

class MakeProviderTests:
    def test_local_from_base_urls(self):
        """The local provider takes RTMP base URLs: host and application come from them."""
        from imserver.core.live import make_provider
        p = make_provider("local", clock=clock_at(), http_client=None, secret="x",
                          rtmp_publish_url="rtmp://pub.example.com:1935/app1",
                          rtmp_play_url="rtmp://play.example.com/app2",
                          hls_url="https://cdn.example.com/hls/")
        d = run(p.create("abcd1234", "")).description
        assert d["publishUrl"].startswith("rtmp://pub.example.com:1935/app1/abcd1234?key=")
        assert d["playUrl"] == "rtmp://play.example.com/app2/abcd1234"
        assert d["hlsUrl"] == "https://cdn.example.com/hls/abcd1234.m3u8"
        assert d["hub"] == "app1" and d["hosts"]["live"]["hls"] == "cdn.example.com"

    def test_qiniu_needs_domains(self):
        """qiniu without its keys, hub or domains is refused with the missing option names."""
        from imserver.core.live import make_provider
        with pytest.raises(ValueError, match="--qiniu-publish-domain"):
            make_provider("qiniu", clock=clock_at(), http_client=treq, secret="x",
                          qiniu_access_key="a", qiniu_secret_key="b", qiniu_hub="h",
                          qiniu_play_domain="p")
        p = make_provider("qiniu", clock=clock_at(), http_client=treq, secret="x",
                          qiniu_access_key="a", qiniu_secret_key="b", qiniu_hub="h",
                          qiniu_play_domain="p", qiniu_publish_domain="q")
        assert isinstance(p, QiniuProvider)

    @pytest_twisted.ensureDeferred
    async def test_deployment_secret_is_shared(self, store):
        """Without --stream-secret, every process gets the same secret from Redis."""
        from imserver.core.live import deployment_secret
        a, b = await deployment_secret(store), await deployment_secret(store)
        assert a == b and len(a) == 64


# -- the hooks on the real server ------------------------------------------------------

async def open_room(srv, uid=7):
    return await srv.core.live.open(User(id=uid, nickname=f"u{uid}"), "show")


async def post_form(url, fields):
    r = await treq.post(url, data=fields)
    return r.code, (await r.text("utf-8"))


async def post_json(url, obj):
    r = await treq.post(url, json=obj)
    return r.code, json.loads(await r.text("utf-8"))


class StreamHooksTests:
    @pytest_twisted.ensureDeferred
    async def test_nginx_rtmp_publish(self, server):
        """nginx-rtmp's form callback: 2xx for the room's key, 403 for a wrong or missing one."""
        desc = await open_room(server)
        url = server.url + "/live/on_publish"
        base = {"call": "publish", "app": "live", "name": desc["title"], "type": "live",
                "addr": "10.0.0.9", "clientid": "3", "tcUrl": "rtmp://127.0.0.1:1935/live"}
        assert await post_form(url, {**base, "key": desc["publishKey"]}) == (200, "0")
        key = desc["publishKey"]
        forged = key[:-1] + ("1" if key[-1] == "0" else "0")
        assert (await post_form(url, {**base, "key": forged}))[0] == 403
        assert (await post_form(url, base))[0] == 403
        assert (await post_form(url, {**base, "app": "other", "key": desc["publishKey"]}))[0] == 403
        other = await open_room(server, 8)
        assert (await post_form(url, {**base, "key": other["publishKey"]}))[0] == 403
        # the key in the tcUrl's query, or in an args field, works too
        tc = {**base, "tcUrl": f"rtmp://127.0.0.1:1935/live?key={desc['publishKey']}"}
        assert (await post_form(url, tc))[0] == 200
        assert (await post_form(url, {**base, "args": f"key={desc['publishKey']}"}))[0] == 200

    @pytest_twisted.ensureDeferred
    async def test_nginx_rtmp_publish_done(self, server):
        """on_publish_done makes the anchor not live; the next publish makes them live again."""
        desc = await open_room(server)
        live = server.core.live
        fields = {"app": "live", "name": desc["title"], "key": desc["publishKey"]}
        assert (await post_form(server.url + "/live/on_publish", {**fields, "call": "publish"}))[0] == 200
        code, _ = await post_form(server.url + "/live/on_publish_done", {**fields, "call": "publish_done"})
        assert code == 200 and not await live.is_live(7)
        assert (await post_form(server.url + "/live/on_publish_done",
                                {**fields, "key": "1-deadbeef"}))[0] == 403
        assert (await post_form(server.url + "/live/on_publish", fields))[0] == 200
        assert await live.is_live(7)

    @pytest_twisted.ensureDeferred
    async def test_srs_json(self, server):
        """SRS's JSON callback gets {"code":0} to allow, 403 otherwise; on_unpublish ends the publish."""
        desc = await open_room(server)
        url = server.url + "/live/on_publish"
        call = {"action": "on_publish", "client_id": 341, "ip": "10.0.0.9", "vhost": "__defaultVhost__",
                "app": "live", "stream": desc["title"], "param": f"?key={desc['publishKey']}",
                "tcUrl": "rtmp://127.0.0.1/live", "server_id": "vid-1"}
        assert await post_json(url, call) == (200, {"code": 0})
        code, body = await post_json(url, {**call, "param": "?key=0-0"})
        assert code == 403 and body["code"] != 0
        assert await post_json(url, {**call, "action": "on_unpublish"}) == (200, {"code": 0})
        assert not await server.core.live.is_live(7)
        assert await post_json(server.url + "/live/on_publish_done",
                               {**call, "action": "on_unpublish"}) == (200, {"code": 0})

    @pytest_twisted.ensureDeferred
    async def test_closed_room_refused(self, server):
        """After the anchor leaves, the old key no longer publishes."""
        desc = await open_room(server)
        await server.core.live.close(User(id=7))
        code, _ = await post_form(server.url + "/live/on_publish",
                                  {"app": "live", "name": desc["title"], "key": desc["publishKey"]})
        assert code == 403

    @pytest_twisted.ensureDeferred
    async def test_bad_bodies(self, server):
        """Garbage bodies get a 4xx, never a 5xx, and the server keeps answering."""
        url = server.url + "/live/on_publish"
        r = await treq.post(url, data=b"{not json", headers={"Content-Type": ["application/json"]})
        assert r.code == 400
        await r.content()
        r = await treq.post(url, data=b"x" * (70 * 1024))
        assert r.code == 400
        await r.content()
        assert (await post_form(url, {"name": "../../etc", "key": "1-2"}))[0] == 403
        assert (await post_json(url, {"stream": ["a"], "param": 5}))[0] == 403
        r = await treq.get(server.url + "/health")
        assert r.code == 200
        await r.content()

    @pytest_twisted.ensureDeferred
    async def test_server_with_qiniu_provider(self, start_server, pili):
        """--live-provider qiniu: the server's live rooms create streams at the (local) Pili API."""
        srv = await start_server(live_provider="qiniu", qiniu_access_key="AK-test",
                                 qiniu_secret_key="SK-test", qiniu_hub="myhub",
                                 qiniu_api_url=pili.base, qiniu_publish_domain="pub.example.com",
                                 qiniu_play_domain="play.example.com")
        desc = await open_room(srv)
        assert desc["title"] in pili.streams
        assert desc["publishUrl"].startswith(f"rtmp://pub.example.com/myhub/{desc['title']}?e=")
        assert await srv.core.live.live_users([7]) == {7: desc["playUrl"]}


class StreamHooksBadInputTests:
    @pytest_twisted.ensureDeferred
    async def test_random_input_never_publishes(self, server):
        """Random fields, bodies and content types: 4xx only, the open room is untouched."""
        from hypothesis import HealthCheck, given, settings, strategies as st
        from twisted.internet.threads import blockingCallFromThread

        desc = await open_room(server)
        fields = st.dictionaries(
            st.sampled_from(["name", "stream", "app", "key", "param", "args", "action", "call",
                             "tcUrl", "e", "token", ""]),
            st.one_of(st.text(max_size=80), st.sampled_from([desc["title"], "live", "on_unpublish",
                                                             "publish_done", "?key=1-0"])),
            max_size=6)
        ctypes = st.sampled_from(["application/json", "application/x-www-form-urlencoded",
                                  "multipart/form-data; boundary=xx", "text/plain", ""])
        urls = [server.url + "/live/on_publish", server.url + "/live/on_publish_done"]

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.sampled_from(urls), fields, st.one_of(st.binary(max_size=500), fields), ctypes)
        def check(url, query, body, ctype):
            async def one():
                headers = {"Content-Type": [ctype]} if ctype else {}
                data = json.dumps(body).encode() if isinstance(body, dict) else body
                r = await treq.post(url, params=query, data=data, headers=headers)
                await r.content()
                assert r.code in (400, 403, 413), r.code

            blockingCallFromThread(reactor, lambda: defer.ensureDeferred(one()))

        await blocking(check)
        assert await server.core.live.live_users([7]) == {7: desc["playUrl"]}
        assert await server.core.store.execute("HGET", keys.live_user(7), "state") == "open"
