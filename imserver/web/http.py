"""
What every HTTP route needs: its parameters, its caller's token, a JSON reply.

The documents' clients sent the same parameters as a GET query, a form, a
multipart form or a JSON body (``ORIGINALS.md``); :func:`read_params` merges
them into one mapping of strings, and keeps uploaded files apart with their
file names and declared types (which nobody trusts: media checks content).

Parsing is :func:`parse_request`, a plain function of the request's URI,
content type and body file, so it can run in a worker thread: a body over
``INLINE_BODY`` bytes is parsed off the reactor (in the thread pool the site
carries as ``blocking``, or one the route passes), a small one inline, where
a thread hop would cost more than the parse. Multipart bodies are cut at
their boundaries by :func:`split_multipart` (``bytes.find``, so a 20 MB
upload costs milliseconds); a body it does not take (bare LF line ends,
encoded parts, the boundary inside a part) goes through the e-mail parser,
which gives the same parameters, only slower.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from urllib.parse import parse_qsl

from imserver.core.errors import InvalidInput

#: bodies up to this size are parsed on the reactor thread
INLINE_BODY = 64 * 1024


class BodyTooLarge(InvalidInput):
    reason = "request body too large"


@dataclass
class UploadedFile:
    filename: str
    content_type: str
    data: bytes


class Params(dict):
    """str -> str parameters; ``files`` holds uploads by field name."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.files: dict[str, UploadedFile] = {}
        self.json: object = None

    def text(self, name: str, default: str = "") -> str:
        return self.get(name, default)


def _decode(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _scalar(v) -> str:
    if isinstance(v, str):
        return v
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(v, ensure_ascii=False)


async def read_params(request, max_body: int = 1024 * 1024, *, blocking=None) -> Params:
    """
    GET query + POST body (form, multipart, JSON), later sources win.

    Raises :class:`BodyTooLarge` past ``max_body`` bytes and InvalidInput for
    a body that cannot be read. A body over ``INLINE_BODY`` is parsed by
    ``blocking(fn, *args)`` (a Deferred-returning thread runner), by default
    the site's (:class:`imserver.web.site.IMSite`); without either, inline.
    """
    content = request.content
    size = 0
    if content is not None:
        content.seek(0, 2)
        size = content.tell()
        content.seek(0)
        if size > max_body:
            raise BodyTooLarge()
    ctype = request.getHeader(b"content-type") or b""
    if size > INLINE_BODY:
        run = blocking or getattr(getattr(request, "site", None), "blocking", None)
        if run is not None:
            return await run(parse_request, request.uri, ctype, content)
    return parse_request(request.uri, ctype, content)


def parse_request(uri: bytes, content_type: bytes, content) -> Params:
    """The parameters of a request's URI and body file; safe in a worker thread."""
    params = Params()
    query = uri.split(b"?", 1)[1] if b"?" in uri else b""
    for k, v in parse_qsl(_decode(query), keep_blank_values=True):
        params[k] = v
    if content is None:
        return params
    content.seek(0)
    body = content.read()
    content.seek(0)
    if not body:
        return params
    ctype = _decode(content_type).lower()
    if ctype.startswith("application/json") or (not ctype and body[:1] in (b"{", b"[")):
        try:
            data = json.loads(body)
        except ValueError:
            raise InvalidInput("body is not valid JSON") from None
        params.json = data
        if isinstance(data, dict):
            for k, v in data.items():
                params[str(k)] = _scalar(v)
    elif ctype.startswith("multipart/form-data"):
        try:
            fields, files = split_multipart(body, content_type.decode("latin-1"))
        except InvalidInput:
            fields, files = _parse_multipart(body, content_type)
        params.update(fields)
        params.files.update(files)
    else:  # form-encoded, or a client that forgot the header
        for k, v in parse_qsl(_decode(body), keep_blank_values=True):
            params[k] = v
    return params


def split_multipart(body: bytes, content_type: str) -> tuple[dict[str, str], dict[str, UploadedFile]]:
    """
    Fields and files of a ``multipart/form-data`` body, cut at its boundaries.

    The part bodies are sliced out by boundary search (C speed); only the
    small part headers go through the e-mail parser. It takes only the form
    browsers and HTTP libraries send (CRLF line ends, plain parts, the
    boundary nowhere but on its own lines) and raises InvalidInput for
    anything else, which :func:`_parse_multipart` then reads the slow way:
    where this returns, the two agree.
    """
    header = Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise InvalidInput("multipart body without a boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    fields: dict[str, str] = {}
    files: dict[str, UploadedFile] = {}
    pos = body.find(delimiter)
    if pos < 0 or (pos > 0 and body[pos - 2:pos] != b"\r\n"):
        raise InvalidInput("malformed multipart body")
    first = True
    while True:
        pos += len(delimiter)
        if body[pos:pos + 2] == b"--":
            if first or body[pos + 2:pos + 4] not in (b"", b"\r\n"):
                raise InvalidInput("malformed multipart body")
            return fields, files
        first = False
        if body[pos:pos + 2] != b"\r\n":
            raise InvalidInput("malformed multipart body")
        # the next delimiter, wherever it is, must be the end of this part
        nxt = body.find(delimiter, pos)
        if nxt < 0 or body[nxt - 2:nxt] != b"\r\n":
            raise InvalidInput("malformed multipart body")
        end = nxt - 2
        head_end = body.find(b"\r\n\r\n", pos, end + 4)
        if head_end < 0:
            raise InvalidInput("malformed multipart body")
        part = BytesParser(policy=HTTP).parsebytes(body[pos + 2:head_end + 4])
        if part.get_payload() or part.get_content_maintype() in ("multipart", "message"):
            raise InvalidInput("multipart part the splitter does not take")
        cte = part.get("content-transfer-encoding")
        if cte is not None and str(cte).strip().lower() not in ("7bit", "8bit", "binary"):
            raise InvalidInput("encoded multipart part")
        data = body[head_end + 4:end] if end >= head_end + 4 else b""
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str) and name:
            filename = part.get_filename()
            if filename is not None:
                files[name] = UploadedFile(filename, part.get_content_type(), data)
            else:
                fields[name] = _decode(data)
        pos = nxt


def _parse_multipart(body: bytes, content_type: bytes):
    """Any multipart body the e-mail parser reads (slow: Python per line)."""
    header = b"Content-Type: " + content_type + b"\r\n\r\n"
    msg = BytesParser(policy=HTTP).parsebytes(header + body)
    if not msg.is_multipart():
        raise InvalidInput("malformed multipart body")
    fields: dict[str, str] = {}
    files: dict[str, UploadedFile] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            files[name] = UploadedFile(filename, part.get_content_type(), payload)
        else:
            fields[name] = _decode(payload)
    return fields, files


def token_from(request, params) -> str | None:
    token = params.get("token") or params.get("access_token")
    if token:
        return token
    auth = _decode(request.getHeader(b"authorization") or b"")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return None


def json_body(request, obj, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def client_address(request) -> str:
    peer = request.getClientAddress()
    return getattr(peer, "host", None) or "unix"
