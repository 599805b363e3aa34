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
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.web import resource, server

from imserver.core.live import (
    LocalProvider, QiniuProvider, StreamProviderError, qiniu_authorization,
)

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
