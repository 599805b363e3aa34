"""
``GET /media/<name>``: stored uploads and group pictures, served back.

The router hands this resource the one path segment after ``/media/``;
:meth:`MediaStore.path_for` admits only the names the store produces (no
``..``, no ``/``, no hidden files), so nothing outside the media directory is
reachable and there is no directory listing. Each file is served by
``twisted.web.static.File``, which streams it from disk and answers HTTP
``Range`` requests (video seeking) and ``HEAD``; the content type comes from
the extension, which the store chose from the file's real content.

Names are content-addressed (the same name always means the same bytes), so
responses may be cached for good and the name is a strong ``ETag``.
"""

from __future__ import annotations

from twisted.web import http, resource, static

from imserver.core.errors import InvalidInput
from imserver.core.media import CONTENT_TYPES

CACHE_FOREVER = b"public, max-age=31536000, immutable"


class _NotFound(resource.Resource):
    isLeaf = True

    def render(self, request):
        request.setResponseCode(http.NOT_FOUND)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return b"no such media\n"


class MediaFile(static.File):
    """One stored file; never a directory, never a child."""

    isLeaf = True
    childNotFound = _NotFound()

    def __init__(self, path: str, content_type: str):
        super().__init__(path, defaultType="application/octet-stream")
        self.type = content_type
        self.encoding = None

    def render_GET(self, request):
        if not self.isfile():
            return self.childNotFound.render(request)
        request.setHeader(b"cache-control", CACHE_FOREVER)
        request.setHeader(b"x-content-type-options", b"nosniff")
        # uploaded content must never run as a page of this origin
        request.setHeader(b"content-security-policy", b"default-src 'none'; sandbox")
        if request.setETag(b'"' + self.basename().encode() + b'"') is http.CACHED:
            return b""
        return super().render_GET(request)

    render_HEAD = render_GET


class MediaResource(resource.Resource):
    """The ``/media/`` prefix: one child per stored name."""

    def __init__(self, media):
        super().__init__()
        self.media = media

    def getChild(self, name: bytes, request):
        if request.postpath:          # /media/a/b: nothing lives below a file
            return _NotFound()
        try:
            text = name.decode("ascii")
            path = self.media.path_for(text)
        except (UnicodeDecodeError, InvalidInput):
            return _NotFound()
        ext = path.suffix.lower()
        return MediaFile(str(path), CONTENT_TYPES.get(ext, "application/octet-stream"))

    def render(self, request):        # GET /media/ itself: no listing
        return _NotFound().render(request)
