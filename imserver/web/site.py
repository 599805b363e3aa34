"""
The ``twisted.web`` site every endpoint serves: request bodies and logging.

``IMRequest`` leaves body parsing to the routes (:func:`imserver.web.http.read_params`):
Twisted would otherwise parse form and multipart bodies itself and answer a
malformed one with a bare 400 before any route could reply in its dialect's
form. It also caps the body: past its path's cap (``IMSite.limit_for``:
``upload_request`` for the upload paths, ``max_request`` for every other)
nothing more is buffered and the request is answered 413 in the refusal form
its path's dialect registered with the router
(:meth:`imserver.web.router.Router.refuse`).

``IMSite`` carries ``blocking``, the thread runner :func:`read_params` parses
big bodies with, and writes an access log line without the query string,
which may carry tokens.
"""

from twisted.logger import Logger
from twisted.web import server

log = Logger()


class IMRequest(server.Request):
    _im_ctype = None
    _im_size = 0
    _im_too_large = False
    _im_limit = None

    def gotLength(self, length):
        site = self.channel.site
        # the request line's path, known before the body (the request's own
        # ``path`` is set only once the body is in)
        limit = self._im_limit = site.limit_for(getattr(self.channel, "_path", None))
        if limit is not None and length is not None and length > limit:
            self._im_too_large = True
        super().gotLength(0 if self._im_too_large else length)

    def handleContentChunk(self, data):
        if self._im_too_large:
            return
        self._im_size += len(data)
        limit = self._im_limit
        if limit is not None and self._im_size > limit:
            self._im_too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command, path, version):
        ctype = self.requestHeaders.getRawHeaders(b"content-type")
        if ctype is not None:
            self._im_ctype = ctype
            self.requestHeaders.removeHeader(b"content-type")
        super().requestReceived(command, path, version)

    def process(self):
        if self._im_ctype is not None:
            self.requestHeaders.setRawHeaders(b"content-type", self._im_ctype)
        if self._im_too_large:
            self.site = self.channel.site
            self.write(self.site.resource.refuse(self, 413, "request body too large"))
            self.finish()
            return
        super().process()


class IMSite(server.Site):
    """``resource``: the :class:`~imserver.web.router.Router` (or a
    ``SingleResource``), which also answers the site's refusals (``refuse``)."""

    requestFactory = IMRequest
    displayTracebacks = False

    def __init__(self, resource, max_request: int, blocking=None, *,
                 upload_request: int | None = None, upload_paths=(), **kw):
        super().__init__(resource, **kw)
        self.max_request = max_request
        self.upload_request = upload_request or max_request
        self.upload_paths = frozenset(p.encode() if isinstance(p, str) else p
                                      for p in upload_paths)
        self.blocking = blocking    # fn, *args -> Deferred, run in a worker thread

    def limit_for(self, target) -> int:
        """The body cap for a request line's target (path and query, bytes).

        An upload path gets ``upload_request``; any other path, or a target
        that cannot be read, ``max_request`` (a variant spelling of an
        upload path is thus refused early, never given the larger cap).
        """
        if target and self.upload_paths and target.partition(b"?")[0] in self.upload_paths:
            return self.upload_request
        return self.max_request

    def log(self, request):
        log.debug("{method} {path} {code}", method=request.method.decode(),
                  path=request.path.decode("utf-8", "replace"), code=request.code)
