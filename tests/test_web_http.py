"""
Request parameters (:mod:`imserver.web.http`): one parser for every route,
big bodies parsed off the reactor thread, the fast multipart splitter in
agreement with the e-mail parser it stands in for.
"""

from __future__ import annotations

import io
import json

import pytest
import pytest_twisted
import treq
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.python.threadable import isInIOThread

from imserver.core.errors import InvalidInput
from imserver.web import http
from imserver.web.http import (INLINE_BODY, BodyTooLarge, _parse_multipart, parse_request,
                               read_params, split_multipart)

BOUNDARY = b"b0undary"
FORM = b"multipart/form-data; boundary=" + BOUNDARY


def multipart(parts, boundary=BOUNDARY, eol=b"\r\n"):
    out = b""
    for name, filename, data in parts:
        disposition = b'form-data; name="' + name + b'"'
        if filename is not None:
            disposition += b'; filename="' + filename + b'"'
        out += b"--" + boundary + eol + b"Content-Disposition: " + disposition + eol
        if filename is not None:
            out += b"Content-Type: application/octet-stream" + eol
        out += eol + data + eol
    return out + b"--" + boundary + b"--" + eol


class FakeRequest:
    """What read_params reads of a twisted.web request."""

    def __init__(self, body: bytes | None, ctype: bytes = FORM, uri: bytes = b"/p?q=1",
                 site=None):
        self.uri = uri
        self.content = None if body is None else io.BytesIO(body)
        self.ctype = ctype
        self.site = site

    def getHeader(self, name: bytes):
        return self.ctype if name.lower() == b"content-type" else None


class Runner:
    """A ``blocking`` runner that records what it ran (and runs it at once)."""

    def __init__(self):
        self.ran = []

    def __call__(self, fn, *args):
        self.ran.append(fn)
        return defer.maybeDeferred(fn, *args)


def both(body: bytes, ctype: str = FORM.decode()):
    """(splitter result or None when it declines, e-mail parser result or its error)."""
    try:
        fast = split_multipart(body, ctype)
    except InvalidInput:
        fast = None
    try:
        slow = _parse_multipart(body, ctype.encode("latin-1"))
    except InvalidInput as e:
        slow = e
    return fast, slow


def as_plain(result):
    fields, files = result
    return fields, {k: (f.filename, f.content_type, f.data) for k, f in files.items()}


# -- the splitter ---------------------------------------------------------------------

def test_split_multipart_keeps_bytes_exact():
    """Each file's bytes come back exactly (CRLF and boundary-like bytes inside)."""
    tricky = b"\r\n--b0undar\r\n\r\n--b0undary-not\x00\xff" * 50
    body = multipart([(b"token", None, b"t0k"), (b"file", b"a.mp3", tricky)])
    params = parse_request(b"/upload/writev1?x=1", FORM, io.BytesIO(body))
    assert params.files["file"].data == tricky and params.files["file"].filename == "a.mp3"
    assert params["token"] == "t0k" and params["x"] == "1"
    bare_lf = multipart([(b"file", b"a.bin", b"abc")], eol=b"\n")
    params = parse_request(b"/upload/writev1", FORM, io.BytesIO(bare_lf))
    assert params.files["file"].data == b"abc"


def test_the_splitter_takes_the_common_form():
    """A browser's form (CRLF, plain parts) is cut by the splitter, not the e-mail parser."""
    body = multipart([(b"a", None, "é".encode()), (b"f", b"x.bin", b"\x00\r\n\xff" * 1000),
                      (b"empty", None, b"")])
    fast, slow = both(body)
    assert fast is not None and as_plain(fast) == as_plain(slow)
    assert fast[0] == {"a": "é", "empty": ""} and fast[1]["f"].data == b"\x00\r\n\xff" * 1000


@pytest.mark.parametrize("body", [
    multipart([(b"f", b"x", b"abc")], eol=b"\n"),                              # bare LF
    multipart([(b"f", b"x", b"ab\n--b0undary\r\nContent-Disposition: form-data; name=g"
                b"\r\n\r\nzz")]),                                               # boundary after LF
    b"--b0undary\r\nContent-Disposition: form-data; name=a\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--b0undary--\r\n",   # encoded part
    b"--b0undary\r\nContent-Disposition: form-data; name=a\r\nContent-Type: multipart/mixed;"
    b" boundary=zz\r\n\r\n--zz\r\n\r\nx\r\n--zz--\r\n--b0undary--\r\n",         # nested
    b"--b0undary\r\nContent-Disposition: form-data; name=a\r\n\r\nv\r\n--b0undary--x",
    b"pre--b0undary\r\nContent-Disposition: form-data; name=a\r\n\r\nv\r\n--b0undary--\r\n",
])
def test_what_the_splitter_declines_the_email_parser_reads(body):
    """Unusual but readable forms are declined by the splitter and read the slow way."""
    fast, slow = both(body)
    assert fast is None
    if not isinstance(slow, InvalidInput):
        params = parse_request(b"/", FORM, io.BytesIO(body))
        assert (dict(params), {k: f.data for k, f in params.files.items()}) == (
            slow[0], {k: f.data for k, f in slow[1].items()})


def test_an_encoded_part_is_decoded_as_before():
    """A base64 part still arrives decoded (the e-mail parser's behaviour)."""
    body = (b"--b0undary\r\nContent-Disposition: form-data; name=a\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--b0undary--\r\n")
    assert parse_request(b"/", FORM, io.BytesIO(body))["a"] == "hello"


pieces = st.sampled_from([b"\r\n", b"\n", b"\r", b"--", b"--b0undary", b"--b0undary--",
                          b"\r\n--b0undary", b"\r\n\r\n", b"x", b"\x00\xff", b" ", b"\t"])
payloads = st.lists(st.one_of(pieces, st.binary(max_size=8)), max_size=8).map(b"".join)
headers = st.lists(st.sampled_from([
    b"Content-Type: text/plain", b"Content-Type: image/png", b"Content-Type: multipart/mixed",
    b"Content-Type: message/rfc822", b"Content-Transfer-Encoding: 8bit",
    b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: quoted-printable",
    b"X-Junk", b" folded", b"Content-Disposition: form-data; name=dup"]), max_size=2)
parts = st.tuples(st.sampled_from([b"a", b"b", b"dup", b"\xc3\xa9", b""]),
                  st.one_of(st.none(), st.sampled_from([b"f.bin", b"", b"\xe8\xaf\xad.mp3"])),
                  headers, payloads, st.sampled_from([b"\r\n", b"\r\n", b"\n"]))


def build(part_list, preamble: bytes, epilogue: bytes, closing: bytes) -> bytes:
    out = preamble
    for name, filename, extra, data, eol in part_list:
        disposition = b'Content-Disposition: form-data; name="' + name + b'"'
        if filename is not None:
            disposition += b'; filename="' + filename + b'"'
        out += b"--b0undary" + eol + disposition + eol
        for h in extra:
            out += h + eol
        out += eol + data + b"\r\n"
    return out + b"--b0undary" + closing + epilogue


@settings(max_examples=600, deadline=None)
@given(st.lists(parts, max_size=4), st.sampled_from([b"", b"\r\n", b"pre\r\n", b"pre\n", b"p"]),
       st.sampled_from([b"", b"\r\n", b"epi\r\n--b0undary\r\n"]),
       st.sampled_from([b"--\r\n", b"--", b"--x", b"-- \r\n", b"\r\n", b""]))
def test_where_the_splitter_answers_it_agrees_with_the_email_parser(part_list, preamble,
                                                                     epilogue, closing):
    """Whenever the splitter returns, it returns what the e-mail parser reads."""
    body = build(part_list, preamble, epilogue, closing)
    fast, slow = both(body)
    if fast is not None:
        assert not isinstance(slow, InvalidInput), slow
        assert as_plain(fast) == as_plain(slow)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.sampled_from([b"b0undary", b"x", b""]))
def test_random_bodies_never_crash_the_parser(junk, boundary):
    """Random bodies give parameters or a clear InvalidInput, never another exception."""
    for body in (junk, b"--b0undary\r\n" + junk, multipart([(b"file", b"f", junk)]) + junk):
        try:
            parse_request(b"/upload/writev2", b"multipart/form-data; boundary=" + boundary,
                          io.BytesIO(body))
        except InvalidInput as e:
            assert e.reason


# -- read_params: where the parse runs -------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_small_bodies_are_parsed_inline_big_ones_by_the_runner():
    """Up to INLINE_BODY the parse is inline; past it the given runner (or the site's) does it."""
    runner = Runner()
    small = multipart([(b"a", None, b"1")])
    big = multipart([(b"a", None, b"1"), (b"pad", None, b"x" * INLINE_BODY)])
    params = await read_params(FakeRequest(small), blocking=runner)
    assert params == {"q": "1", "a": "1"} and runner.ran == []
    params = await read_params(FakeRequest(big), blocking=runner)
    assert params["a"] == "1" and len(params["pad"]) == INLINE_BODY
    assert runner.ran == [parse_request]

    class Site:
        blocking = Runner()

    params = await read_params(FakeRequest(big, site=Site))
    assert params["a"] == "1" and Site.blocking.ran == [parse_request]
    js = json.dumps({"k": "v", "pad": "y" * INLINE_BODY}).encode()
    params = await read_params(FakeRequest(js, b"application/json", site=Site))
    assert params["k"] == "v" and len(Site.blocking.ran) == 2
    params = await read_params(FakeRequest(big))          # no runner at all: inline
    assert params["a"] == "1"


@pytest_twisted.ensureDeferred
async def test_too_large_is_refused_before_any_parse():
    """A body past max_body raises BodyTooLarge without reaching the runner."""
    runner = Runner()
    with pytest.raises(BodyTooLarge):
        await read_params(FakeRequest(b"x" * 2000, b"text/plain"), 1000, blocking=runner)
    assert runner.ran == []
    params = await read_params(FakeRequest(None, uri=b"/p?a=1&b="))
    assert params == {"a": "1", "b": ""} and params.files == {}


@pytest_twisted.ensureDeferred
async def test_the_server_parses_big_forms_in_a_worker_thread(server, monkeypatch):
    """Through the real site: a big multipart form is parsed off the reactor, a small one on it."""
    seen = []
    real = http.parse_request

    def spy(*args):
        seen.append(isInIOThread())
        return real(*args)

    monkeypatch.setattr(http, "parse_request", spy)
    await server.core.accounts.register(phone="13800000009", username="u9",
                                        password="secret123")
    for pad in (b"", b"x" * (2 * INLINE_BODY)):
        r = await treq.post(server.url + "/auth/login",
                            data={"user_tel": "13800000009", "user_password": "secret123",
                                  "pad": pad.decode()},
                            files={"unused": ("f.bin", "application/octet-stream",
                                              io.BytesIO(b"\x00"))})
        assert json.loads(await r.text())["res"] == "login successfully"
    assert seen == [True, False]
