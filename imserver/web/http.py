"""
What every HTTP route needs: its parameters, its caller's token, a JSON reply.

The documents' clients sent the same parameters as a GET query, a form, a
multipart form or a JSON body (``ORIGINALS.md``); :func:`read_params` merges
them into one mapping of strings, and keeps uploaded files apart with their
file names and declared types (which nobody trusts: media checks content).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP

from imserver.core.errors import InvalidInput


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


def read_params(request, max_body: int = 1024 * 1024) -> Params:
    """GET query + POST body (form, multipart, JSON), later sources win."""
    params = Params()
    query = request.uri.split(b"?", 1)[1] if b"?" in request.uri else b""
    from urllib.parse import parse_qsl

    for k, v in parse_qsl(_decode(query), keep_blank_values=True):
        params[k] = v
    content = request.content
    if content is None:
        return params
    content.seek(0, 2)
    size = content.tell()
    content.seek(0)
    if size > max_body:
        raise BodyTooLarge()
    if not size:
        return params
    body = content.read()
    content.seek(0)
    ctype = _decode(request.getHeader(b"content-type") or b"").lower()
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
        header = b"Content-Type: " + (request.getHeader(b"content-type") or b"") + b"\r\n\r\n"
        msg = BytesParser(policy=HTTP).parsebytes(header + body)
        if not msg.is_multipart():
            raise InvalidInput("malformed multipart body")
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if not name:
                continue
            payload = part.get_payload(decode=True) or b""
            filename = part.get_filename()
            if filename is not None:
                params.files[name] = UploadedFile(filename, part.get_content_type(), payload)
            else:
                params[name] = _decode(payload)
    else:  # form-encoded, or a client that forgot the header
        for k, v in parse_qsl(_decode(body), keep_blank_values=True):
            params[k] = v
    return params


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
