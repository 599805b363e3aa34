"""
Document 004's uploads: ``POST /upload/writev1`` (audio), ``writev2``
(picture or audio), ``writev3`` (video), each also under ``/wsim/``.

The client posts a multipart form whose ``file`` field holds the file (a
form with one file under another name is accepted too) and its token
(``token``, ``access_token`` or ``Authorization: Bearer``; with
``--legacy-auth`` a request without any token is admitted, as the document
shows it). The body is split (:func:`imserver.web.http.read_params`, in one
of the media store's worker slots when it is big) and the file checked,
named and written off the reactor thread
(:class:`imserver.core.media.MediaStore`); the reply is the document's::

    {"code": 0, "message": "OK", "data": "<public URL>"}       writev1, writev2
    {"code": 0, "message": "Succeeded", "data": "<public URL>"}  writev3

Refusals come in the same envelope with the group API's negative codes
(:mod:`.envelope`): -1 no file, or a file that is empty, corrupt or of a
type the endpoint does not take (the message says which types it takes), -2
no valid token, -5 too many uploads, -6 service unavailable, -7 file too
large (HTTP status 413; the message gives the limit).
"""

from __future__ import annotations

from klein import Klein
from twisted.logger import Logger

from imserver import metrics
from imserver.core.errors import CoreError, InvalidInput, RateLimited
from imserver.core.media import MediaTooLarge
from imserver.dialects.signal.envelope import (BAD_REQUEST, TOO_LARGE, UNAVAILABLE, NoToken,
                                               refusal_code)
from imserver.store.redis import StoreError, StoreTimeout
from imserver.web.http import client_address, json_body, read_params, token_from

log = Logger()

UPLOADS_PER_MINUTE = 60
MULTIPART_OVERHEAD = 64 * 1024   # room for the form's other fields and part headers

#: endpoint -> (MediaStore kind, success message)
ENDPOINTS = {
    "writev1": ("audio", "OK"),
    "writev2": ("picture_or_audio", "OK"),
    "writev3": ("video", "Succeeded"),
}


class NoFile(InvalidInput):
    reason = "no file: post a multipart form with the file in field 'file'"


def refusal(status: int, reason: str) -> dict:
    """A request the site refused before the route: too large is -7, anything else -1."""
    return {"code": TOO_LARGE if status == 413 else BAD_REQUEST, "message": reason}


_PREFIXES = ("/upload/", "/wsim/upload/")


def _routes(app: Klein, endpoint: str):
    assert endpoint in ENDPOINTS

    def decorate(f):
        for prefix in _PREFIXES:
            f = app.route(prefix + endpoint, methods=["GET", "POST"])(f)
        return f
    return decorate


class UploadApi:
    app = Klein()
    # the paths that take files: the site buffers bodies up to the upload cap there
    PATHS = tuple(prefix + e for prefix in _PREFIXES for e in ENDPOINTS)

    def __init__(self, *, media, accounts, limits, blocking, legacy_auth: bool = False,
                 per_minute: int = UPLOADS_PER_MINUTE):
        self.media = media
        self.accounts = accounts
        self.limits = limits
        self.blocking = blocking
        self.legacy_auth = legacy_auth
        self.per_minute = per_minute

    def mount(self, router) -> None:
        router.add_klein(self.app, refusal=refusal)
        router.add_refusal(refusal, prefixes=("/upload/", "/wsim/upload/"))

    # -- the envelope ----------------------------------------------------------------

    @staticmethod
    def _refused(request, exc: Exception):
        reason = getattr(exc, "reason", None) or "service unavailable; try again"
        status = 413 if isinstance(exc, MediaTooLarge) else 200
        return json_body(request, {"code": refusal_code(exc), "message": reason}, status)

    @app.handle_errors(CoreError)
    def _domain_error(self, request, failure):
        return self._refused(request, failure.value)

    @app.handle_errors(StoreTimeout, StoreError)
    def _store_error(self, request, failure):
        log.warn("upload refused: store unavailable ({error})", error=failure.value)
        return self._refused(request, failure.value)

    @app.handle_errors(OSError)
    def _disk_error(self, request, failure):
        log.failure("upload could not be stored", failure)
        return json_body(request, {"code": UNAVAILABLE,
                                   "message": "could not store the file; try again"}, 503)

    # -- the routes ----------------------------------------------------------------------

    @_routes(app, "writev1")
    async def writev1(self, request):
        return await self._upload(request, "writev1")

    @_routes(app, "writev2")
    async def writev2(self, request):
        return await self._upload(request, "writev2")

    @_routes(app, "writev3")
    async def writev3(self, request):
        return await self._upload(request, "writev3")

    async def _upload(self, request, endpoint: str):
        metrics.HTTP_REQUESTS.labels("signal").inc()
        kind, ok_message = ENDPOINTS[endpoint]
        limit = self.media.limit_for(kind)
        content = request.content
        if request.method != b"POST" or content is None:
            raise NoFile()
        content.seek(0, 2)
        if content.tell() > limit + MULTIPART_OVERHEAD:
            raise MediaTooLarge(f"file too large: at most {limit} bytes")
        params = await read_params(request, limit + MULTIPART_OVERHEAD, blocking=self._media_job)
        who = await self._caller(request, params)
        if not await self.limits.allow("upload", who, self.per_minute, 60):
            raise RateLimited("too many uploads: wait a minute")
        upload = params.files.get("file")
        if upload is None and len(params.files) == 1:
            upload = next(iter(params.files.values()))
        if upload is None:
            raise NoFile()
        stored = await self.media.store_upload(upload.data, kind)
        log.info("upload {name} ({size} bytes) by {who}", name=stored.name,
                 size=stored.size, who=who)
        return json_body(request, {"code": 0, "message": ok_message, "data": stored.url})

    def _media_job(self, fn, *args):
        # splitting a 20 MB body is media work: it takes one of the media store's slots
        return self.media.slots.run(self.blocking, fn, *args)

    async def _caller(self, request, params) -> str:
        """Who uploads: the token's user id, or (legacy, no token) the address."""
        token = token_from(request, params)
        if token:
            user = await self.accounts.user_for_token(token)
            if user is not None:
                return str(user.id)
        elif self.legacy_auth:
            return "addr:" + client_address(request)
        raise NoToken()
