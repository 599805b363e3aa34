"""
Live rooms: a user opens a live stream, friends see who is live and where to
watch, the anchor closes it.

Data flow. ``LiveRooms.open(user)`` asks a **stream provider** for a new
stream (a random 24-hex-digit stream name), stores the room in Redis and
publishes ``live.started`` on ``user:<id>``. The provider decides where the
anchor publishes and where viewers play:

- :class:`LocalProvider` (default) serves an RTMP server of our own
  (nginx-rtmp or SRS): it builds the RTMP publish/play and HLS URLs from the
  configured hosts, and the publish key is an HMAC of the stream name and an
  expiry, signed with a server secret. The RTMP server calls our
  ``on_publish`` hook (:mod:`imserver.web.streamhooks`), which lets the
  publish through only with a valid, unexpired key of an open room
  (:meth:`LiveRooms.authorize_publish`).
- :class:`QiniuProvider` creates the stream through Qiniu Pili's v2 HTTP API
  (signed "Qiniu <AK>:<sign>" requests) and builds Pili's signed publish URL
  and the play URLs from the hub's domains. Qiniu checks the publish token
  itself.

Both describe the stream in the shape of document 001's example (Pili's
stream JSON: ``id``, ``hub``, ``title``, ``publishKey``, ``hosts`` …), so an
old client that builds ``rtmp://<hosts.publish.rtmp>/<hub>/<title>?key=
<publishKey>`` (as the Pili v1 client SDKs did) publishes to the right place
with the local provider; every client may also use the ready-made
``publishUrl``, ``playUrl`` and ``hlsUrl``.

State in Redis (see :mod:`imserver.store.keys`, section "live"):

- ``live_user(uid)``: hash ``stream, id, play, hls, title, desc, opened,
  state`` while the user's room is open; ``state`` is ``open`` (just opened),
  ``publishing`` (the RTMP server confirmed a publish) or ``idle`` (the
  publisher went away: not live until it publishes again);
- ``live_stream(stream)``: the owner's user id, for the hooks.

Both expire with the stream's publish key. A user is *live* while the room
exists and is not ``idle``; state changes are Lua scripts, so two processes
(or a hook and a ``leave``) never interleave halfway.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from typing import Mapping, Protocol
from urllib.parse import urlsplit

from twisted.logger import Logger

from imserver.core.errors import CoreError, InvalidInput
from imserver.store import keys
from imserver.store.scripts import Script

log = Logger()

STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{4,200}$")


class StreamProviderError(CoreError):
    """The stream provider (e.g. Qiniu's API) refused or failed."""
    reason = "stream provider failed"


@dataclass(frozen=True)
class Stream:
    """A stream a provider made: its name, the 001-style description, the
    viewers' URLs and when its publish key expires (epoch seconds)."""
    name: str
    description: dict
    play_url: str
    hls_url: str
    expires_at: float


class StreamProvider(Protocol):
    name: str

    async def create(self, stream: str, title: str) -> Stream: ...

    async def close(self, stream: str) -> None: ...

    def check_publish(self, stream: str, query: Mapping[str, str],
                      app: str | None = None, *, allow_expired: bool = False) -> bool: ...


# -- shared helpers ---------------------------------------------------------

def iso_time(ts: float) -> str:
    """Epoch seconds as the ISO 8601 form Pili used (milliseconds, UTC offset)."""
    dt = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    return dt.isoformat(timespec="milliseconds")


def _host_of(url_or_host: str) -> str:
    if "://" in url_or_host:
        return urlsplit(url_or_host).netloc
    return url_or_host.strip("/")


def _path_of(url_or_host: str) -> str:
    if "://" in url_or_host:
        return urlsplit(url_or_host).path.strip("/")
    return ""


def describe(*, stream_id: str, hub: str, title: str, publish_key: str,
             publish_security: str, publish_host: str, rtmp_play_host: str,
             hls_host: str, hdl_host: str, snapshot_host: str, playback_host: str,
             created: float, expires: float, publish_url: str, play_url: str,
             hls_url: str, room_title: str) -> dict:
    """The stream description of document 001 (Pili's stream JSON), with the
    ready-made URLs added."""
    return {
        "id": stream_id,
        "hub": hub,
        "title": title,
        "publishKey": publish_key,
        "publishSecurity": publish_security,
        "nonce": 0,
        "disabled": False,
        "disabledTill": 0,
        "nropEnable": None,
        "hosts": {
            "publish": {"rtmp": publish_host},
            "play": {"rtmp": rtmp_play_host, "http": hls_host},
            "live": {"rtmp": rtmp_play_host, "http": hls_host, "hls": hls_host,
                     "hdl": hdl_host, "snapshot": snapshot_host},
            "playback": {"http": playback_host, "hls": playback_host},
        },
        "createdAt": iso_time(created),
        "updatedAt": iso_time(created),
        "expireAt": iso_time(expires),
        "publishUrl": publish_url,
        "playUrl": play_url,
        "hlsUrl": hls_url,
        "roomTitle": room_title,
    }


def urlsafe_b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def hmac_sha1_b64(secret: str, data: str | bytes) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return urlsafe_b64(hmac.new(secret.encode("utf-8"), data, hashlib.sha1).digest())


# -- local RTMP server ------------------------------------------------------

class LocalProvider:
    """Streams on our own RTMP server (nginx-rtmp or SRS).

    ``rtmp_publish_host`` and ``rtmp_play_host`` are ``host[:port]`` or RTMP
    base URLs (``rtmp://host:1935/live``, whose path then is the application);
    ``hls_base`` is the URL under which the server serves ``<stream>.m3u8``
    (e.g. ``http://media.example.com:8088/hls``); ``app`` is the RTMP
    application (the path before the stream name, Pili's "hub") when the
    publish address does not name one.

    The publish key is ``<expiry>-<signature>``: the signature is an
    HMAC-SHA256 over the application, the stream name and the expiry, with
    the server's ``secret``, so the hook can check it without a lookup and no
    key works for another stream or after its expiry.
    """

    name = "local"

    def __init__(self, rtmp_publish_host: str, rtmp_play_host: str, hls_base: str,
                 secret: str, clock, *, app: str = "live", key_ttl: int = 86400):
        if not secret:
            raise ValueError("LocalProvider needs a non-empty secret")
        if key_ttl <= 0:
            raise ValueError("key_ttl must be positive")
        self.publish_host = _host_of(rtmp_publish_host)
        self.play_host = _host_of(rtmp_play_host)
        self.hls_base = hls_base.rstrip("/")
        self.hls_host = _host_of(self.hls_base)
        self.app = _path_of(rtmp_publish_host) or app.strip("/")
        self.play_app = _path_of(rtmp_play_host) or self.app
        if not (self.publish_host and self.play_host and self.hls_host and self.app):
            raise ValueError("LocalProvider needs RTMP publish/play hosts, an HLS URL and an app")
        self._secret = secret.encode("utf-8")
        self.clock = clock
        self.key_ttl = key_ttl

    def _signature(self, stream: str, expires: int) -> str:
        msg = f"publish\n{self.app}\n{stream}\n{expires}".encode("utf-8")
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()[:32]

    def publish_key(self, stream: str, expires: int) -> str:
        return f"{expires}-{self._signature(stream, expires)}"

    def check_key(self, stream: str, key: str, *, allow_expired: bool = False) -> bool:
        """Is ``key`` this server's publish key for ``stream``, unexpired
        (or, with ``allow_expired``, merely genuine)?"""
        expires_text, sep, signature = (key or "").partition("-")
        if not sep or not expires_text.isdigit() or len(expires_text) > 12:
            return False
        expires = int(expires_text)
        if not hmac.compare_digest(signature, self._signature(stream, expires)):
            return False
        return allow_expired or expires > self.clock.seconds()

    def check_publish(self, stream: str, query: Mapping[str, str],
                      app: str | None = None, *, allow_expired: bool = False) -> bool:
        if app is not None and app.strip("/") != self.app:
            return False
        return self.check_key(stream, query.get("key", ""), allow_expired=allow_expired)

    async def create(self, stream: str, title: str) -> Stream:
        now = self.clock.seconds()
        expires = int(now) + self.key_ttl
        key = self.publish_key(stream, expires)
        publish_url = f"rtmp://{self.publish_host}/{self.app}/{stream}?key={key}"
        play_url = f"rtmp://{self.play_host}/{self.play_app}/{stream}"
        hls_url = f"{self.hls_base}/{stream}.m3u8"
        desc = describe(
            stream_id=f"local.{self.app}.{stream}", hub=self.app, title=stream,
            publish_key=key, publish_security="static",
            publish_host=self.publish_host, rtmp_play_host=self.play_host,
            hls_host=self.hls_host, hdl_host=self.hls_host,
            snapshot_host=self.hls_host, playback_host=self.hls_host,
            created=now, expires=expires, publish_url=publish_url,
            play_url=play_url, hls_url=hls_url, room_title=title)
        return Stream(stream, desc, play_url, hls_url, float(expires))

    async def close(self, stream: str) -> None:
        # Nothing to tell a server of our own: the room's record is gone, so
        # the on_publish hook refuses the stream from now on.
        return None


# -- Qiniu Pili -------------------------------------------------------------

def qiniu_authorization(access_key: str, secret_key: str, *, method: str, path: str,
                        query: str, host: str, content_type: str | None,
                        body: bytes | str | None,
                        qiniu_headers: Mapping[str, str] | None = None) -> str:
    """The ``Authorization`` header value of a Qiniu-signed API request.

    The signed data is ``<METHOD> <path>[?<query>]\\nHost: <host>\\n``, then
    ``Content-Type: <type>\\n`` when there is one, then the ``X-Qiniu-*``
    headers sorted by name, a blank line, and the body unless there is no
    content type or it is ``application/octet-stream``; the signature is the
    URL-safe base64 of its HMAC-SHA1 with the secret key.
    """
    data = f"{method.upper()} {path}" + (f"?{query}" if query else "")
    data += f"\nHost: {host}\n"
    if content_type:
        data += f"Content-Type: {content_type}\n"
    for name in sorted(qiniu_headers or {}):
        if name.startswith("X-Qiniu-") and len(name) > len("X-Qiniu-"):
            data += f"{name}: {qiniu_headers[name]}\n"
    data += "\n"
    raw = data.encode("utf-8")
    if body and content_type and content_type != "application/octet-stream":
        raw += body.encode("utf-8") if isinstance(body, str) else body
    return f"Qiniu {access_key}:{hmac_sha1_b64(secret_key, raw)}"


class QiniuProvider:
    """Streams on Qiniu Pili, created through its v2 API.

    ``http_client`` is treq or anything with its ``request(method, url,
    data=, headers=, timeout=)`` returning a response with ``code`` and
    ``content()``. ``api_base`` is ``https://pili.qiniuapi.com`` in
    production (a local server in tests). The domains are the hub's:
    ``publish_domain`` (RTMP publish), ``rtmp_play_domain``,
    ``hls_play_domain``, ``hdl_play_domain``, ``snapshot_domain`` and
    ``playback_domain`` (the last three default to the HLS one).

    The publish URL is Pili's expiring one: ``rtmp://<publish>/<hub>/<stream>
    ?e=<expiry>&token=<AK>:<sign>`` where ``sign`` signs ``/<hub>/<stream>
    ?e=<expiry>``; ``publishKey`` carries that token.
    """

    name = "qiniu"

    def __init__(self, access_key: str, secret_key: str, hub: str, api_base: str,
                 http_client, *, publish_domain: str, rtmp_play_domain: str,
                 hls_play_domain: str, hdl_play_domain: str = "",
                 snapshot_domain: str = "", playback_domain: str = "",
                 clock, zone: str = "z1", key_ttl: int = 86400,
                 timeout: float = 10.0, scheme: str = "http"):
        if not (access_key and secret_key and hub):
            raise ValueError("QiniuProvider needs an access key, a secret key and a hub")
        self.access_key = access_key
        self._secret_key = secret_key
        self.hub = hub
        self.api_base = api_base.rstrip("/")
        parts = urlsplit(self.api_base)
        self._api_host = parts.netloc
        self._api_prefix = parts.path
        self.http = http_client
        self.publish_domain = publish_domain
        self.rtmp_play_domain = rtmp_play_domain
        self.hls_play_domain = hls_play_domain
        self.hdl_play_domain = hdl_play_domain or hls_play_domain
        self.snapshot_domain = snapshot_domain or hls_play_domain
        self.playback_domain = playback_domain or hls_play_domain
        self.clock = clock
        self.zone = zone
        self.key_ttl = key_ttl
        self.timeout = timeout
        self.scheme = scheme

    def _publish_token(self, stream: str, expires: int) -> str:
        return f"{self.access_key}:{hmac_sha1_b64(self._secret_key, f'/{self.hub}/{stream}?e={expires}')}"

    def check_publish(self, stream: str, query: Mapping[str, str],
                      app: str | None = None, *, allow_expired: bool = False) -> bool:
        if app is not None and app.strip("/") != self.hub:
            return False
        e, token = query.get("e", ""), query.get("token", "")
        if not e.isdigit() or len(e) > 12:
            return False
        if not hmac.compare_digest(token, self._publish_token(stream, int(e))):
            return False
        return allow_expired or int(e) > self.clock.seconds()

    async def _call(self, method: str, path: str, payload: dict) -> tuple[int, dict]:
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        full_path = self._api_prefix + path
        auth = qiniu_authorization(self.access_key, self._secret_key, method=method,
                                   path=full_path, query="", host=self._api_host,
                                   content_type="application/json", body=body)
        headers = {"Host": [self._api_host], "Content-Type": ["application/json"],
                   "Authorization": [auth]}
        try:
            response = await self.http.request(method, self.api_base + path, data=body,
                                               headers=headers, timeout=self.timeout)
            raw = await response.content()
        except Exception as e:
            log.warn("qiniu {method} {path} failed: {error!r}", method=method, path=path, error=e)
            raise StreamProviderError("stream provider unreachable") from e
        try:
            reply = json.loads(raw) if raw.strip() else {}
        except ValueError:
            reply = {}
        if not isinstance(reply, dict):
            reply = {}
        return response.code, reply

    async def create(self, stream: str, title: str) -> Stream:
        if not STREAM_NAME.match(stream):
            raise InvalidInput("bad stream name")
        code, reply = await self._call("POST", f"/v2/hubs/{self.hub}/streams", {"key": stream})
        # 614: a stream of that name exists already; ours are random, so it
        # can only be ours from an earlier attempt, and it is usable.
        if code != 200 and code != 614:
            log.warn("qiniu refused stream creation: {code} {error}", code=code,
                     error=reply.get("error", ""))
            raise StreamProviderError(f"stream provider refused: {reply.get('error') or code}")
        now = self.clock.seconds()
        expires = int(now) + self.key_ttl
        token = self._publish_token(stream, expires)
        publish_url = f"rtmp://{self.publish_domain}/{self.hub}/{stream}?e={expires}&token={token}"
        play_url = f"rtmp://{self.rtmp_play_domain}/{self.hub}/{stream}"
        hls_url = f"{self.scheme}://{self.hls_play_domain}/{self.hub}/{stream}.m3u8"
        desc = describe(
            stream_id=f"{self.zone}.{self.hub}.{stream}", hub=self.hub, title=stream,
            publish_key=token, publish_security="dynamic",
            publish_host=self.publish_domain, rtmp_play_host=self.rtmp_play_domain,
            hls_host=self.hls_play_domain, hdl_host=self.hdl_play_domain,
            snapshot_host=self.snapshot_domain, playback_host=self.playback_domain,
            created=now, expires=expires, publish_url=publish_url,
            play_url=play_url, hls_url=hls_url, room_title=title)
        desc["hdlUrl"] = f"{self.scheme}://{self.hdl_play_domain}/{self.hub}/{stream}.flv"
        desc["snapshotUrl"] = f"{self.scheme}://{self.snapshot_domain}/{self.hub}/{stream}.jpg"
        return Stream(stream, desc, play_url, hls_url, float(expires))

    async def close(self, stream: str) -> None:
        """Disable the stream for good, which also cuts off its publisher."""
        encoded = urlsafe_b64(stream.encode("utf-8"))
        code, reply = await self._call(
            "POST", f"/v2/hubs/{self.hub}/streams/{encoded}/disabled", {"disabledTill": -1})
        if code != 200:
            raise StreamProviderError(f"stream provider refused: {reply.get('error') or code}")


# -- choosing a provider --------------------------------------------------------

def make_provider(kind: str, *, clock, http_client, secret: str,
                  rtmp_publish_url: str = "rtmp://127.0.0.1:1935/live",
                  rtmp_play_url: str = "rtmp://127.0.0.1:1935/live",
                  hls_url: str = "http://127.0.0.1:8081/hls",
                  qiniu_access_key: str = "", qiniu_secret_key: str = "", qiniu_hub: str = "",
                  qiniu_api_url: str = "https://pili.qiniuapi.com",
                  qiniu_publish_domain: str = "", qiniu_play_domain: str = "",
                  key_ttl: int = 86400) -> StreamProvider:
    """The provider the settings name (``local`` or ``qiniu``); ValueError
    with a one-line reason when a setting it needs is missing."""
    if kind == "local":
        return LocalProvider(rtmp_publish_url, rtmp_play_url, hls_url, secret, clock,
                             key_ttl=key_ttl)
    if kind == "qiniu":
        missing = [name for name, value in (
            ("--qiniu-access-key", qiniu_access_key), ("--qiniu-secret-key", qiniu_secret_key),
            ("--qiniu-hub", qiniu_hub), ("--qiniu-publish-domain", qiniu_publish_domain),
            ("--qiniu-play-domain", qiniu_play_domain)) if not value]
        if missing:
            raise ValueError("--live-provider qiniu needs " + ", ".join(missing))
        return QiniuProvider(qiniu_access_key, qiniu_secret_key, qiniu_hub, qiniu_api_url,
                             http_client, publish_domain=qiniu_publish_domain,
                             rtmp_play_domain=qiniu_play_domain, hls_play_domain=qiniu_play_domain,
                             clock=clock, key_ttl=key_ttl)
    raise ValueError(f"unknown live provider {kind!r}")


async def deployment_secret(store) -> str:
    """The publish-key secret shared by every process of the deployment:
    made once, kept in Redis (for when no ``--stream-secret`` is set)."""
    await store.execute("SET", keys.live_secret(), secrets.token_hex(32), "NX")
    return await store.execute("GET", keys.live_secret())


# -- the live rooms -----------------------------------------------------------

# KEYS: live_user, live_stream. ARGV: stream ('' = only look), id, play, hls,
# title, desc, opened, time to live (ms), user id. An existing room is returned as
# it is (an idle one becomes open again); otherwise the new one is installed.
# Returns {stream, desc, previous state}; previous state '' means created,
# and nil means there was no room and nothing to install.
OPEN = Script("live_open", """
local cur = redis.call('HGET', KEYS[1], 'stream')
if cur then
  local state = redis.call('HGET', KEYS[1], 'state')
  if state == 'idle' then redis.call('HSET', KEYS[1], 'state', 'open') end
  return {cur, redis.call('HGET', KEYS[1], 'desc'), state}
end
if ARGV[1] == '' then return nil end
redis.call('HSET', KEYS[1], 'stream', ARGV[1], 'id', ARGV[2], 'play', ARGV[3], 'hls', ARGV[4],
           'title', ARGV[5], 'desc', ARGV[6], 'opened', ARGV[7], 'state', 'open')
redis.call('PEXPIRE', KEYS[1], ARGV[8])
redis.call('SET', KEYS[2], ARGV[9], 'PX', ARGV[8])
return {ARGV[1], ARGV[6], ''}
""")

# KEYS: live_user, live_stream. ARGV: stream. Deletes the room if it is still
# that stream's; returns its last state, or nil.
CLOSE = Script("live_close", """
if redis.call('HGET', KEYS[1], 'stream') ~= ARGV[1] then return nil end
local state = redis.call('HGET', KEYS[1], 'state')
redis.call('DEL', KEYS[1], KEYS[2])
return state
""")

# KEYS: live_user. ARGV: stream, new state. Moves the room of that stream to
# the new state; returns the previous state, or nil if the room is not (or no
# longer) that stream's.
SET_STATE = Script("live_set_state", """
if redis.call('HGET', KEYS[1], 'stream') ~= ARGV[1] then return nil end
local state = redis.call('HGET', KEYS[1], 'state')
redis.call('HSET', KEYS[1], 'state', ARGV[2])
return state
""")

# KEYS: live_user of each user. Returns, per key, the play URL when the user
# is live, else ''.
LIVE_PLAYS = Script("live_plays", """
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 'state', 'play')
  if v[1] and v[1] ~= 'idle' then out[i] = v[2] or '' else out[i] = '' end
end
return out
""")

LIVE = ("open", "publishing")


class LiveRooms:
    """Users' live rooms on one stream provider; state in Redis, events on
    ``user:<id>`` (``live.started`` and ``live.stopped``)."""

    def __init__(self, store, bus, provider: StreamProvider, clock):
        self.store = store
        self.bus = bus
        self.provider = provider
        self.clock = clock

    async def open(self, user, title: str = "") -> dict:
        """Open (or return the already open) live room of ``user``; returns
        the stream description of document 001."""
        uid = user.id
        title = (title or "").strip()[:200]
        found = await self.store.eval(OPEN, keys=[keys.live_user(uid)], args=[""])
        if found:
            return await self._reopened(uid, found)
        stream = secrets.token_hex(12)
        made = await self.provider.create(stream, title)
        now = self.clock.seconds()
        result = await self.store.eval(
            OPEN, keys=[keys.live_user(uid), keys.live_stream(stream)],
            args=[stream, made.description["id"], made.play_url, made.hls_url, title,
                  json.dumps(made.description, separators=(",", ":")), repr(now),
                  str(max(1, int((made.expires_at - now) * 1000))), str(uid)])
        if result[0] != stream:
            # another request of this user opened a room meanwhile: keep that one
            await self._provider_close(stream)
            return await self._reopened(uid, result)
        log.info("user {uid} went live on stream {stream}", uid=uid, stream=stream)
        await self._started(uid, made.description)
        return made.description

    async def _reopened(self, uid: int, found) -> dict:
        stream, desc_text, previous = found
        desc = json.loads(desc_text)
        if previous == "idle":
            await self._started(uid, desc)
        return desc

    async def close(self, user) -> bool:
        """Close the user's live room; False if there was none."""
        uid = user.id
        stream = await self.store.execute("HGET", keys.live_user(uid), "stream")
        if not stream:
            return False
        previous = await self.store.eval(
            CLOSE, keys=[keys.live_user(uid), keys.live_stream(stream)], args=[stream])
        if previous is None:
            return False
        log.info("user {uid} closed live stream {stream}", uid=uid, stream=stream)
        if previous in LIVE:
            await self._stopped(uid, stream, "closed")
        await self._provider_close(stream)
        return True

    async def is_live(self, user_id: int) -> bool:
        return user_id in await self.live_users([user_id])

    async def live_users(self, user_ids) -> dict[int, str]:
        """Of ``user_ids``, those live now, with their play URL."""
        ids = [int(u) for u in user_ids]
        if not ids:
            return {}
        plays = await self.store.eval(LIVE_PLAYS, keys=[keys.live_user(u) for u in ids])
        return {u: p for u, p in zip(ids, plays or []) if p}

    async def room_of(self, user_id: int) -> dict | None:
        """The stream description of the user's open room (live or idle), or None."""
        desc = await self.store.execute("HGET", keys.live_user(user_id), "desc")
        return json.loads(desc) if desc else None

    # -- the RTMP server's callbacks (imserver.web.streamhooks) --

    async def _owner(self, stream: str) -> int | None:
        if not STREAM_NAME.match(stream or ""):
            return None
        owner = await self.store.execute("GET", keys.live_stream(stream))
        return int(owner) if owner and str(owner).isdigit() else None

    async def authorize_publish(self, stream: str, query: Mapping[str, str],
                                app: str | None = None) -> bool:
        """May this publish of ``stream`` go ahead? Only for an open room's
        stream with a valid, unexpired key; the room becomes ``publishing``
        (and live again if it was idle)."""
        uid = await self._owner(stream)
        if uid is None or not self.provider.check_publish(stream, query, app):
            return False
        previous = await self.store.eval(SET_STATE, keys=[keys.live_user(uid)],
                                         args=[stream, "publishing"])
        if previous is None:
            return False
        if previous == "idle":
            desc = await self.room_of(uid)
            if desc is not None:
                await self._started(uid, desc)
        return True

    async def publish_done(self, stream: str, query: Mapping[str, str],
                           app: str | None = None) -> bool:
        """The publisher of ``stream`` went away: the room stays open (the
        anchor may publish again with the same key) but is not live."""
        uid = await self._owner(stream)
        if uid is None or not self.provider.check_publish(stream, query, app, allow_expired=True):
            return False
        previous = await self.store.eval(SET_STATE, keys=[keys.live_user(uid)],
                                         args=[stream, "idle"])
        if previous is None:
            return False
        if previous in LIVE:
            await self._stopped(uid, stream, "publish_done")
        return True

    # -- helpers --

    async def _started(self, uid: int, desc: dict) -> None:
        await self.bus.publish(f"user:{uid}", "live.started", {
            "user_id": uid, "stream": desc["title"], "stream_id": desc["id"],
            "title": desc.get("roomTitle", ""), "play_url": desc["playUrl"],
            "hls_url": desc["hlsUrl"]})

    async def _stopped(self, uid: int, stream: str, reason: str) -> None:
        await self.bus.publish(f"user:{uid}", "live.stopped", {
            "user_id": uid, "stream": stream, "reason": reason})

    async def _provider_close(self, stream: str) -> None:
        try:
            await self.provider.close(stream)
        except Exception as e:
            # the room is closed here whatever the provider says; its publish
            # key still expires by itself
            log.warn("closing stream {stream} at the provider failed: {error!r}",
                     stream=stream, error=e)
