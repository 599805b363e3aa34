"""
Requests the site refuses before a route sees them (a body over the site's
cap: 413; no route: 404) are answered in the envelope of the path's dialect.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq

from imserver.web.router import Router, plain_refusal

TOO_LARGE = "request body too large"
BIG = b"x" * 100_000   # over max(max_body, max_upload) + 64 KiB below


async def post_big(url: str, ctype: str = "application/x-www-form-urlencoded"):
    r = await treq.post(url, data=BIG, headers={"Content-Type": [ctype]})
    return r.code, json.loads(await r.text("utf-8"))


@pytest_twisted.ensureDeferred
async def test_413_in_each_dialects_envelope(start_server):
    """Past the site's cap every dialect's client reads a 413 in its own envelope."""
    srv = await start_server(max_body=1000, max_upload=2000)
    expected = {
        # 001 account: result code 0009 (bad request)
        "/log": {"result": "0009", "message": TOO_LARGE},
        "/register": {"result": "0009", "message": TOO_LARGE},
        "/upload": {"result": "0009", "message": TOO_LARGE},
        # 003 chatroom
        "/auth/login": {"res": TOO_LARGE},
        "/auth/register": {"res": TOO_LARGE},
        "/chatroom/create": {"res": TOO_LARGE},
        # 004 uploads: -7, too large
        "/upload/writev1": {"code": -7, "message": TOO_LARGE},
        "/wsim/upload/writev3": {"code": -7, "message": TOO_LARGE},
        # 004 group API: -1
        "/creategrp": {"code": -1, "message": TOO_LARGE},
        "/wsim/editgrp": {"code": -1, "message": TOO_LARGE},
        # 000 video list
        "/video.php": {"errCode": "1", "info": "数据请求失败", "data": TOO_LARGE},
        # no dialect's
        "/health": {"error": TOO_LARGE},
    }
    for path, body in expected.items():
        for ctype in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=b"):
            code, got = await post_big(srv.url + path, ctype)
            assert (code, got) == (413, body), path
    r = await treq.get(srv.url + "/health")
    assert r.code == 200


@pytest_twisted.ensureDeferred
async def test_only_upload_paths_take_upload_sized_bodies(start_server):
    """The site buffers an upload-sized body only on the upload paths: elsewhere it stops
    at the body cap (plus room for a form), so no route can be made to hold megabytes."""
    srv = await start_server(max_body=1000, max_upload=400_000)
    mid = b"x" * 200_000          # over 1000 + 64 KiB, under 400,000 + 64 KiB
    for path in ("/creategrp", "/auth/login", "/register", "/health", "/upload/writev2x",
                 "/upload/../upload/writev2"):
        r = await treq.post(srv.url + path, data=mid,
                            headers={"Content-Type": ["application/x-www-form-urlencoded"]})
        assert r.code == 413, path
        await r.content()
    for path in ("/upload/writev2", "/wsim/upload/writev3", "/upload?token=x"):
        r = await treq.post(srv.url + path, data=mid,
                            headers={"Content-Type": ["multipart/form-data; boundary=b"]})
        # read by the route, which refuses it as a form without a file (not 413)
        body = json.loads(await r.text("utf-8"))
        assert r.code == 200 and body not in (
            {"code": -7, "message": TOO_LARGE}, {"result": "0009", "message": TOO_LARGE}), path


@pytest_twisted.ensureDeferred
async def test_404_in_the_envelope_of_the_prefix(server):
    """An unknown path below a dialect's prefix gets a 404 in that dialect's form."""
    expected = {
        "/chatroom/nope": {"res": "not found"},
        "/auth/nope": {"res": "not found"},
        "/wsim/nope": {"code": -1, "message": "not found"},
        "/upload/writev9": {"code": -1, "message": "not found"},
        "/nope": {"error": "not found"},
    }
    for path, body in expected.items():
        r = await treq.get(server.url + path)
        assert (r.code, json.loads(await r.text("utf-8"))) == (404, body), path


def test_the_form_is_picked_like_the_resource():
    """Exact paths (with or without a trailing slash) win over prefixes; longest prefix wins."""
    router = Router()

    def a(status, reason):
        return {"a": reason}

    def b(status, reason):
        return {"b": reason}

    router.add_refusal(a, paths=["/upload"], prefixes=["/w/"])
    router.add_refusal(b, prefixes=["/upload/", "/w/up/"])
    assert router.refusal_form("/upload") is a
    assert router.refusal_form("/upload/") is a
    assert router.refusal_form("/upload/writev1") is b
    assert router.refusal_form("/w/x") is a
    assert router.refusal_form("/w/up/x") is b
    assert router.refusal_form("/other") is plain_refusal
    router.add_refusal(a, paths=["/upload"])          # the same form again is fine
    with pytest.raises(ValueError):
        router.add_refusal(b, paths=["/upload"])
