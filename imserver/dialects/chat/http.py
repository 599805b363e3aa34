"""
000's HTTP side: ``GET /video.php`` (the video list) and the sample tunes.

``/video.php`` answers ``{"errCode":"0","info":"","data":[…]}`` with the
document's entries (``errCode`` a string, as the original sent it), plus
``total``, ``page`` and ``size``. The document left paging "to be decided";
imserver pages with ``page`` (from 1) and ``size`` (up to 1000), filters
with ``cate``, and without ``page`` or ``size`` returns the first 1000
entries, which is the whole list for the catalogues the original served.
With ``callback`` (JSONP, how the original's web client called it) the body
is ``callback(<json>)``. A failure is ``{"errCode":"1","info":"数据请求失败",
"data":"<reason>"}``.

``GET /catalog/sample/<tune>.wav|.lrc`` serves the synthesised tunes the
sample song catalogue links to (:mod:`imserver.core.tunes`).
"""

from __future__ import annotations

import json
import re

from klein import Klein
from twisted.logger import Logger

from imserver import metrics
from imserver.core import tunes
from imserver.core.errors import CoreError
from imserver.web.http import read_params

log = Logger()

MAX_SIZE = 1000
DEFAULT_SIZE = 20
FAILED = "数据请求失败"
_CALLBACK = re.compile(r"^[A-Za-z_$][\w$]{0,63}(\.[A-Za-z_$][\w$]{0,63}){0,3}$")


class BadRequest(Exception):
    pass


def _positive(params, name: str, default: int) -> int:
    raw = params.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise BadRequest(f"{name} must be a positive integer")
    return int(raw)


class VideoApi:
    app = Klein()

    def __init__(self, catalog, blocking, max_body: int):
        self.catalog = catalog
        self.blocking = blocking
        self.max_body = max_body
        self._tunes: dict[str, bytes] = {}

    def _reply(self, request, obj, callback: str | None = None) -> bytes:
        metrics.HTTP_REQUESTS.labels("chat").inc()
        body = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if callback:
            request.setHeader(b"content-type", b"application/javascript; charset=utf-8")
            return f"{callback}({body})".encode("utf-8")
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        return body.encode("utf-8")

    @app.route("/video.php", methods=["GET", "POST"])
    async def videos(self, request):
        callback = None
        try:
            params = await read_params(request, self.max_body)
            callback = params.get("callback", "").strip() or None
            if callback is not None and not _CALLBACK.match(callback):
                callback = None
                raise BadRequest("invalid callback")
            paged = bool(params.get("page", "").strip() or params.get("size", "").strip())
            page = _positive(params, "page", 1)
            size = min(_positive(params, "size", DEFAULT_SIZE if paged else MAX_SIZE), MAX_SIZE)
            cate = params.get("cate", "").strip() or None
            entries, total = await self.catalog.videos(page, size, cate)
        except (BadRequest, CoreError) as e:
            reason = e.reason if isinstance(e, CoreError) else str(e)
            return self._reply(request, {"errCode": "1", "info": FAILED, "data": reason},
                               callback)
        except Exception as e:
            log.failure("video.php failed")
            return self._reply(request, {"errCode": "1", "info": FAILED,
                                         "data": e.__class__.__name__}, callback)
        return self._reply(request, {"errCode": "0", "info": "", "data": entries,
                                     "total": total, "page": page, "size": size}, callback)

    @app.route("/catalog/sample/<name>", methods=["GET", "HEAD"])
    async def sample(self, request, name):
        tune, _, ext = name.partition(".")
        if tune not in tunes.TUNES or ext not in ("wav", "lrc"):
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"application/json; charset=utf-8")
            return json.dumps({"error": "not found"}).encode()
        request.setHeader(b"cache-control", b"public, max-age=86400")
        if ext == "lrc":
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return tunes.lrc(tune).encode("utf-8")
        data = self._tunes.get(tune)
        if data is None:
            data = self._tunes[tune] = await self.blocking(tunes.wav, tune)
        request.setHeader(b"content-type", b"audio/wav")
        return data
