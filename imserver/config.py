"""
Every setting of imserver, in one table, read from three places.

A setting comes from (highest first) the command line, an ``IMSERVER_<NAME>``
environment variable, a TOML config file (``--config FILE`` or
``IMSERVER_CONFIG``), or its default. Each value is parsed and checked when it
is read: a bad value raises :class:`ConfigError` with a one-line reason naming
the setting and where it came from, and twistd prints just that line.

The result is a frozen :class:`Config` that the composition root
(:mod:`imserver.service`) hands to whatever needs a value.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit


class ConfigError(Exception):
    """A setting has a value imserver cannot use; ``str()`` is one line."""


DIALECT_NAMES = ("signal", "chat", "ktv", "chatroom")


# -- value parsers: str -> value, raising ValueError with a short reason ------

def _endpoint(text: str) -> str:
    text = text.strip()
    if not text:
        raise ValueError("empty endpoint")
    from twisted.internet import endpoints, reactor

    try:
        endpoints.serverFromString(reactor, text)
    except Exception as e:  # serverFromString raises several kinds
        raise ValueError(f"not a Twisted server endpoint ({e})") from None
    return text


def _dialect_endpoint(text: str) -> tuple[str, str]:
    name, sep, endpoint = text.partition("=")
    name = name.strip()
    if not sep or name not in DIALECT_NAMES:
        raise ValueError(f"expected NAME=ENDPOINT with NAME one of {', '.join(DIALECT_NAMES)}")
    return (name, _endpoint(endpoint))


def _redis_url(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme == "redis":
        if not parts.hostname:
            raise ValueError("redis:// URL needs a host")
        try:
            parts.port
        except ValueError:
            raise ValueError("bad port") from None
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            raise ValueError("the database must be a number: redis://host:port/N")
    elif parts.scheme == "unix":
        if not parts.path:
            raise ValueError("unix:// URL needs a socket path")
    else:
        raise ValueError("use redis://host:port/db or unix:///path.sock?db=N")
    return text


def _public_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an absolute http(s) URL")
    return text.strip().rstrip("/")


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("expected a number") from None
    if not value > 0:
        raise ValueError("must be greater than 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("expected a whole number") from None
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.strip() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text.strip()

    return parse


def _capacity(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("expected a whole number (0: no limit)") from None
    if not 0 <= value <= 1_000_000:
        raise ValueError("must be between 0 (no limit) and 1000000")
    return value


def _heart_type(text: str) -> int:
    if text.strip() not in ("1", "2"):
        raise ValueError("expected 1 or 2")
    return int(text)


def _ok_code(text: str) -> int:
    if text.strip() not in ("0", "1"):
        raise ValueError("expected 0 or 1")
    return int(text)


def _text(text: str) -> str:
    return text.strip()


def _url_or_empty(text: str) -> str:
    text = text.strip()
    if text:
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an absolute http(s) URL")
    return text


@dataclass(frozen=True)
class Setting:
    name: str  # python name; option is --name-with-dashes, env IMSERVER_NAME
    parse: Callable[[str], Any]
    default: Any
    help: str
    flag: bool = False
    repeat: bool = False  # may be given several times; value is a tuple

    @property
    def option(self) -> str:
        return self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "IMSERVER_" + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("listen", _endpoint, ("tcp:8080",),
            "Twisted endpoint to serve everything on (repeatable).", repeat=True),
    Setting("dialect_listen", _dialect_endpoint, (),
            "NAME=ENDPOINT: also serve one WebSocket dialect (signal, chat, ktv,"
            " chatroom) at every path of its own endpoint (repeatable).", repeat=True),
    Setting("redis", _redis_url, None,
            "External Redis (redis://host:port/db or unix:///path.sock?db=N);"
            " without it an embedded redis-server runs in the data directory."),
    Setting("data_dir", lambda t: pathlib.Path(t.strip()).expanduser(),
            pathlib.Path("imserver-data"),
            "Directory for the embedded Redis files and uploaded media."),
    Setting("public_url", _public_url, "http://127.0.0.1:8080",
            "Base URL of this server as clients reach it (media URLs)."),
    Setting("legacy_auth", _bool, False,
            "Admit the documents' unauthenticated forms (bare login_<userid>,"
            " 003 join without a token).", flag=True),
    Setting("sms_echo", _bool, False,
            "Development only: put SMS codes in responses and the log.", flag=True),
    Setting("signal_group_ok_code", _ok_code, 1,
            "Success code of the 004 group API: 1 (the document) or 0 (the"
            " original server and its Android client)."),
    Setting("sms_sender", _choice("log", "http"), "log",
            "How SMS codes are sent: log (write to the log) or http (POST to"
            " --sms-gateway-url)."),
    Setting("sms_gateway_url", _url_or_empty, "",
            "SMS gateway URL for --sms-sender http: receives a form POST with"
            " phone and code."),
    Setting("token_max_age", _positive_int, 30 * 24 * 3600,
            "Longest lifetime of a login token, in seconds; also the default."),
    Setting("ping_interval", _positive_float, 30.0,
            "Seconds between heartbeats (000 ping, 004 heartbeat_, WebSocket pings)."),
    Setting("idle_timeout", _positive_float, 75.0,
            "Seconds of silence after which a connection is dropped."),
    Setting("max_frame", _positive_int, 64 * 1024,
            "Largest accepted WebSocket message, in bytes."),
    Setting("max_body", _positive_int, 1024 * 1024,
            "Largest accepted HTTP request body (except uploads), in bytes."),
    Setting("max_upload", _positive_int, 20 * 1024 * 1024,
            "Largest accepted upload, in bytes: the video limit unless"
            " --max-upload-video, and a cap on every upload limit."),
    Setting("max_upload_audio", _positive_int, None,
            "Largest audio upload (004 writev1, writev2), in bytes; default 10 MiB"
            " (or --max-upload if smaller)."),
    Setting("max_upload_picture", _positive_int, None,
            "Largest picture upload (004 writev2), in bytes; default 10 MiB (or"
            " --max-upload if smaller). 001 avatars: 5 MiB, or this if smaller."),
    Setting("max_upload_video", _positive_int, None,
            "Largest video upload (004 writev3), in bytes; default --max-upload."),
    Setting("argon2_time_cost", _positive_int, 2,
            "argon2id time cost (iterations) for password hashes."),
    Setting("argon2_memory_cost", _positive_int, 19 * 1024,
            "argon2id memory cost in KiB for password hashes."),
    Setting("messages_per_second", _positive_int, 20,
            "Messages one connection may send per second before being refused."),
    Setting("history_length", _positive_int, 1000,
            "Messages kept per conversation or room (capped log)."),
    Setting("history_days", _positive_int, 30,
            "Days a stored message is kept."),
    Setting("ktv_ask_timeout", _positive_float, 15.0,
            "KTV: seconds the queue head has to answer the mic ask."),
    Setting("ktv_rest", _positive_float, 30.0,
            "KTV: seconds of rest between two singers."),
    Setting("ktv_heart_type", _heart_type, 1,
            "KTV: the type of the heart reply, 1 (the document) or 2 (the original"
            " server and its clients)."),
    Setting("chatroom_capacity", _capacity, 10,
            "Places in a room created over 003 (/chatroom/create or a first"
            " WebSocket join); 0: no limit. 000 rooms have none, KTV rooms 12."),
    Setting("room_reserve_ttl", _positive_float, 120.0,
            "Seconds a 003 /chatroom/room entry holds its place while the user has"
            " no connection in the room."),
    Setting("chat_max_message", _positive_int, 4000,
            "Longest room chat message in characters (000 send, 003 msg, 002 chat)."),
    Setting("gold_per_unit", _positive_int, 10,
            "001: gold credited per unit of money refilled."),
    Setting("live_provider", _choice("local", "qiniu"), "local",
            "Live stream provider for 001 rooms: local (RTMP/HLS hosts below) or qiniu."),
    Setting("rtmp_publish_url", _text, "rtmp://127.0.0.1:1935/live",
            "local provider: RTMP base URL streamers publish to."),
    Setting("rtmp_play_url", _text, "rtmp://127.0.0.1:1935/live",
            "local provider: RTMP base URL viewers play from."),
    Setting("hls_url", _text, "http://127.0.0.1:8081/hls",
            "local provider: HLS base URL viewers play from."),
    Setting("stream_secret", _text, "",
            "Secret that signs publish keys (local provider); when empty, one is"
            " made once and kept in Redis, shared by every process."),
    Setting("qiniu_access_key", _text, "", "qiniu provider: access key."),
    Setting("qiniu_secret_key", _text, "", "qiniu provider: secret key."),
    Setting("qiniu_hub", _text, "", "qiniu provider: Pili hub name."),
    Setting("qiniu_api_url", _url_or_empty, "https://pili.qiniuapi.com",
            "qiniu provider: Pili API base URL."),
    Setting("qiniu_publish_domain", _text, "", "qiniu provider: RTMP publish domain."),
    Setting("qiniu_play_domain", _text, "", "qiniu provider: RTMP/HLS play domain."),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Config:
    listen: tuple[str, ...] = ("tcp:8080",)
    dialect_listen: tuple[tuple[str, str], ...] = ()
    redis: str | None = None
    data_dir: pathlib.Path = pathlib.Path("imserver-data")
    public_url: str = "http://127.0.0.1:8080"
    legacy_auth: bool = False
    sms_echo: bool = False
    signal_group_ok_code: int = 1
    sms_sender: str = "log"
    sms_gateway_url: str = ""
    token_max_age: int = 30 * 24 * 3600
    ping_interval: float = 30.0
    idle_timeout: float = 75.0
    max_frame: int = 64 * 1024
    max_body: int = 1024 * 1024
    max_upload: int = 20 * 1024 * 1024
    max_upload_audio: int | None = None      # None: 10 MiB, at most max_upload
    max_upload_picture: int | None = None    # None: 10 MiB, at most max_upload
    max_upload_video: int | None = None      # None: max_upload
    argon2_time_cost: int = 2
    argon2_memory_cost: int = 19 * 1024
    messages_per_second: int = 20
    history_length: int = 1000
    history_days: int = 30
    ktv_ask_timeout: float = 15.0
    ktv_rest: float = 30.0
    ktv_heart_type: int = 1
    chatroom_capacity: int = 10          # 0: no limit
    room_reserve_ttl: float = 120.0
    chat_max_message: int = 4000         # characters
    gold_per_unit: int = 10
    live_provider: str = "local"
    rtmp_publish_url: str = "rtmp://127.0.0.1:1935/live"
    rtmp_play_url: str = "rtmp://127.0.0.1:1935/live"
    hls_url: str = "http://127.0.0.1:8081/hls"
    stream_secret: str = ""
    qiniu_access_key: str = ""
    qiniu_secret_key: str = ""
    qiniu_hub: str = ""
    qiniu_api_url: str = "https://pili.qiniuapi.com"
    qiniu_publish_domain: str = ""
    qiniu_play_domain: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def check(self) -> "Config":
        """Cross-setting checks; returns self or raises ConfigError."""
        if self.sms_sender == "http" and not self.sms_gateway_url:
            raise ConfigError("--sms-sender http needs --sms-gateway-url")
        if self.live_provider == "qiniu":
            missing = [s for s in ("qiniu_access_key", "qiniu_secret_key", "qiniu_hub",
                                   "qiniu_publish_domain", "qiniu_play_domain")
                       if not getattr(self, s)]
            if missing:
                raise ConfigError("--live-provider qiniu needs " + ", ".join(
                    "--" + m.replace("_", "-") for m in missing))
        if self.idle_timeout <= self.ping_interval:
            raise ConfigError("--idle-timeout must be longer than --ping-interval")
        for name in ("max_upload_audio", "max_upload_picture", "max_upload_video"):
            value = getattr(self, name)
            if value is not None and value > self.max_upload:
                raise ConfigError(
                    f"--{name.replace('_', '-')} ({value}) is larger than --max-upload"
                    f" ({self.max_upload}), the largest upload the server reads")
        if self.chat_max_message > self.max_frame:
            raise ConfigError(
                f"--chat-max-message ({self.chat_max_message} characters) is longer than"
                f" --max-frame ({self.max_frame} bytes): no frame could carry such a message")
        names = [n for n, _ in self.dialect_listen]
        if len(names) != len(set(names)):
            raise ConfigError("--dialect-listen names a dialect twice")
        return self


def _from_text(setting: Setting, raw: str, where: str) -> Any:
    try:
        return setting.parse(raw)
    except ValueError as e:
        raise ConfigError(f"{where}: {raw!r} is not valid for --{setting.option}: {e}") from None


def _split_env(raw: str) -> list[str]:
    return [p for p in re.split(r"[\s,]+", raw.strip()) if p]


def load_file(path: pathlib.Path) -> dict[str, Any]:
    """Read a TOML config file: keys are option names with - or _."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    section = data.get("imserver", data)
    return {k.replace("-", "_"): v for k, v in section.items()}


def resolve(given: dict[str, list[str] | bool], environ: dict[str, str] | None = None,
            config_file: str | None = None) -> Config:
    """
    Build the Config from command-line values (``given``: setting name -> the
    raw strings given, or True for a flag), the environment and a config file.
    """
    environ = os.environ if environ is None else environ
    config_file = config_file or environ.get("IMSERVER_CONFIG")
    from_file = load_file(pathlib.Path(config_file)) if config_file else {}
    unknown = set(from_file) - set(_BY_NAME)
    if unknown:
        raise ConfigError(f"config file {config_file}: unknown setting(s) "
                          + ", ".join(sorted(unknown)))
    values: dict[str, Any] = {}
    for s in SETTINGS:
        if s.name in given:
            raw = given[s.name]
            where = "command line"
            if s.flag:
                values[s.name] = True
                continue
        elif s.env in environ:
            raw = _split_env(environ[s.env]) if s.repeat else [environ[s.env]]
            where = f"environment {s.env}"
        elif s.name in from_file:
            value = from_file[s.name]
            where = f"config file {config_file}"
            if s.repeat:
                if isinstance(value, dict):  # dialect-listen = {chatroom = "tcp:2333"}
                    value = [f"{k}={v}" for k, v in value.items()]
                raw = [str(v) for v in (value if isinstance(value, list) else [value])]
            elif isinstance(value, bool):
                raw = ["true" if value else "false"]
            else:
                raw = [str(value)]
        else:
            continue
        if s.repeat:
            values[s.name] = tuple(_from_text(s, r, where) for r in raw)
        else:
            values[s.name] = _from_text(s, raw[-1], where)
    return Config(**values).check()
