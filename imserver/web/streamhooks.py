"""
The RTMP server's callbacks: may this stream be published, and it has stopped.

An RTMP server of our own (the ``local`` live provider) is configured to
ask us before it accepts a publish:

- nginx-rtmp: ``on_publish http://imserver/live/on_publish;`` and
  ``on_publish_done http://imserver/live/on_publish_done;``. It POSTs a form
  with ``call``, ``app``, ``name`` (the stream) and the publish URL's query
  arguments appended as fields (our ``key``); any 2xx lets the publish go
  ahead, anything else drops the publisher.
- SRS: ``on_publish`` / ``on_unpublish`` hooks pointing at the same two URLs.
  It POSTs JSON ``{"action": "on_publish", "app", "stream", "param":
  "?key=…", …}`` and wants HTTP 200 with ``{"code": 0}`` to allow it.

Both shapes are accepted on both URLs; an explicit ``call``/``action`` of
``publish_done``/``on_unpublish`` marks the end of a publish whichever URL
it came to. The decision is :class:`imserver.core.live.LiveRooms`'s: only
the stream of an open room with its valid, unexpired key may publish (403
otherwise); the end of a publish (key genuine, expiry not checked) makes
the anchor not live until they publish again.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from klein import Klein
from twisted.logger import Logger

from imserver.core.errors import CoreError
from imserver.web.http import json_body, read_params

log = Logger()

_DONE_ACTIONS = ("publish_done", "on_unpublish", "unpublish")
_QUERY_FIELDS = ("key", "e", "token")


def hook_call(params) -> tuple[str, str, str | None, dict[str, str]]:
    """(action, stream, app, publish query) of an nginx-rtmp or SRS callback."""
    srs = isinstance(params.json, dict)
    action = params.get("action") or params.get("call") or ""
    stream = params.get("stream") if srs else params.get("name")
    stream = stream or params.get("name") or params.get("stream") or ""
    query: dict[str, str] = {}

    def merge(text: str) -> None:
        for k, v in parse_qsl(text.lstrip("?"), keep_blank_values=True):
            query.setdefault(k, v)

    # the stream name may still carry the URL's query (some publishers)
    stream, _, in_name = stream.partition("?")
    for name in _QUERY_FIELDS:
        if params.get(name):
            query[name] = params[name]
    merge(params.get("param", ""))
    merge(params.get("args", ""))
    merge(in_name)
    tc_url = params.get("tcUrl") or params.get("tcurl") or ""
    if tc_url:
        merge(urlsplit(tc_url).query)
    app = params.get("app")
    if app is not None:
        app = app.partition("?")[0]
    return action, stream, app, query


class StreamHooks:
    """``POST /live/on_publish`` and ``/live/on_publish_done`` over a LiveRooms."""

    app = Klein()

    def __init__(self, live, max_body: int = 64 * 1024):
        self.live = live
        self.max_body = max_body

    def _reply(self, request, srs: bool, allowed: bool):
        if allowed:
            if srs:
                return json_body(request, {"code": 0})
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"0"
        if srs:
            return json_body(request, {"code": 403, "msg": "forbidden"}, status=403)
        request.setResponseCode(403)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"forbidden"

    async def _handle(self, request, done: bool):
        try:
            params = await read_params(request, self.max_body)
        except CoreError as e:
            return json_body(request, {"code": 400, "msg": e.reason}, status=400)
        srs = isinstance(params.json, dict)
        action, stream, app, query = hook_call(params)
        if action in _DONE_ACTIONS:
            done = True
        if done:
            ok = await self.live.publish_done(stream, query, app)
        else:
            ok = await self.live.authorize_publish(stream, query, app)
        if not ok:
            log.info("refused {what} of stream {stream!r} (app {app!r})",
                     what="publish_done" if done else "publish", stream=stream[:64],
                     app=(app or "")[:64])
        return self._reply(request, srs, ok)

    @app.route("/live/on_publish", methods=["POST", "GET"])
    async def on_publish(self, request):
        return await self._handle(request, done=False)

    @app.route("/live/on_publish_done", methods=["POST", "GET"])
    async def on_publish_done(self, request):
        return await self._handle(request, done=True)
