"""Document 004's uploads and /media/ over real HTTP against the real server."""

from __future__ import annotations

import hashlib
import io
import json
import os

import pytest_twisted
import treq

import media_samples as samples


async def user_token(server, phone="13800000001") -> str:
    user = await server.core.accounts.register(phone=phone, password="secret12")
    return (await server.core.accounts.issue_token(user.id)).token


async def upload(server, endpoint, data, filename="f.bin", ctype="application/octet-stream",
                 token=None, field="file", prefix="/upload/", data_fields=None, headers=None):
    fields = dict(data_fields or {})
    if token is not None:
        fields["token"] = token
    r = await treq.post(server.url + prefix + endpoint, data=fields,
                        files={field: (filename, ctype, io.BytesIO(data))}, headers=headers)
    return r.code, json.loads(await r.text("utf-8"))


def media_path(url: str) -> str:
    return "/media/" + url.rsplit("/media/", 1)[1]


async def fetch(server, url, headers=None, method="GET"):
    r = await treq.request(method, server.url + media_path(url), headers=headers)
    return r, await r.content()


@pytest_twisted.ensureDeferred
async def test_writev1_audio_named_by_duration_and_served_back(server):
    """writev1: a real 3 s MP3 and WAV give -3.mp3 / -3.wav URLs that serve the same bytes."""
    token = await user_token(server)
    for data, ext, ctype in [(samples.mp3(3), "mp3", "audio/mpeg"),
                             (samples.wav(3), "wav", "audio/wav")]:
        code, body = await upload(server, "writev1", data, "voice." + ext, token=token)
        assert code == 200 and body["code"] == 0 and body["message"] == "OK", body
        digest = hashlib.sha256(data).hexdigest()[:32]
        assert body["data"] == f"{server.config.public_url}/media/{digest}-3.{ext}"
        r, served = await fetch(server, body["data"])
        assert r.code == 200 and served == data
        assert r.headers.getRawHeaders(b"content-type") == [ctype.encode()]
        assert r.headers.getRawHeaders(b"accept-ranges") == [b"bytes"]


@pytest_twisted.ensureDeferred
async def test_writev2_picture_or_audio(server):
    """writev2: a 746x750 JPEG is named -746x750.jpg; audio is accepted there too."""
    token = await user_token(server)
    jpeg = samples.picture("JPEG", (746, 750))
    code, body = await upload(server, "writev2", jpeg, "a.png", "image/png", token=token)
    assert body["code"] == 0 and body["message"] == "OK"
    assert body["data"].endswith("-746x750.jpg")
    r, served = await fetch(server, body["data"])
    assert served == jpeg and r.headers.getRawHeaders(b"content-type") == [b"image/jpeg"]
    assert b"immutable" in r.headers.getRawHeaders(b"cache-control")[0]
    code, body = await upload(server, "writev2", samples.amr(3), "a.amr", token=token)
    assert body["code"] == 0 and body["data"].endswith("-3.amr")


@pytest_twisted.ensureDeferred
async def test_writev3_video_succeeded_and_ranges(server):
    """writev3: "Succeeded", -WxH.mp4, and Range requests answer 206 with the right slice."""
    token = await user_token(server)
    video = samples.mp4("160x96", seconds=2, with_audio=True)
    code, body = await upload(server, "writev3", video, "clip.mov", "video/quicktime", token=token)
    assert (code, body["code"], body["message"]) == (200, 0, "Succeeded"), body
    assert body["data"].endswith("-160x96.mp4")
    url = body["data"]
    r, served = await fetch(server, url)
    assert served == video and r.headers.getRawHeaders(b"content-type") == [b"video/mp4"]
    r, part = await fetch(server, url, {b"range": [b"bytes=100-1099"]})
    assert r.code == 206 and part == video[100:1100]
    assert r.headers.getRawHeaders(b"content-range") == [f"bytes 100-1099/{len(video)}".encode()]
    r, tail = await fetch(server, url, {b"range": [b"bytes=-500"]})
    assert r.code == 206 and tail == video[-500:]
    r, _ = await fetch(server, url, {b"range": [f"bytes={len(video) + 10}-".encode()]})
    assert r.code == 416
    r, empty = await fetch(server, url, method="HEAD")
    assert r.code == 200 and empty == b""
    assert r.headers.getRawHeaders(b"content-length") == [str(len(video)).encode()]
    etag = r.headers.getRawHeaders(b"etag")[0]
    r, empty = await fetch(server, url, {b"if-none-match": [etag]})
    assert r.code == 304 and empty == b""


@pytest_twisted.ensureDeferred
async def test_wsim_aliases_and_android_form(server):
    """/wsim/upload/... works; the token also comes as access_token or a Bearer header."""
    token = await user_token(server)
    png = samples.picture("PNG", (20, 10))
    code, body = await upload(server, "writev2", png, prefix="/wsim/upload/",
                              data_fields={"access_token": token})
    assert body["code"] == 0 and body["data"].endswith("-20x10.png")
    code, body = await upload(server, "writev3", samples.video("webm"), prefix="/wsim/upload/",
                              headers={b"authorization": [b"Bearer " + token.encode()]})
    assert body["code"] == 0 and body["data"].endswith("-64x48.webm")


@pytest_twisted.ensureDeferred
async def test_text_renamed_jpg_is_refused(server):
    """A text file named .jpg and sent as image/jpeg is refused; nothing is stored."""
    token = await user_token(server)
    text = b"definitely not a picture\n" * 40
    code, body = await upload(server, "writev2", text, "photo.jpg", "image/jpeg", token=token)
    assert code == 200 and body["code"] == -1
    assert "unsupported file type" in body["message"] and "JPEG" in body["message"]
    assert "data" not in body
    media_dir = server.config.data_dir / "media"
    assert not media_dir.exists() or not any(media_dir.iterdir())


@pytest_twisted.ensureDeferred
async def test_wrong_kind_corrupt_and_missing_file(server):
    """Audio to writev3, a video to writev1, a cut picture, or no file: code -1, a reason."""
    token = await user_token(server)
    _, body = await upload(server, "writev3", samples.mp3(), token=token)
    assert body["code"] == -1 and "expected a video" in body["message"]
    _, body = await upload(server, "writev1", samples.mp4(), token=token)
    assert body["code"] == -1 and "video" in body["message"]
    jpeg = samples.picture("JPEG")
    _, body = await upload(server, "writev2", jpeg[:len(jpeg) // 3], token=token)
    assert body["code"] == -1 and "corrupt" in body["message"]
    r = await treq.post(server.url + "/upload/writev1", data={"token": token})
    body = json.loads(await r.text())
    assert body["code"] == -1 and "field 'file'" in body["message"]
    r = await treq.get(server.url + "/upload/writev2", params={"token": token})
    assert json.loads(await r.text())["code"] == -1


@pytest_twisted.ensureDeferred
async def test_a_big_body_is_split_in_a_media_slot(server, monkeypatch):
    """A big upload's multipart body is split off the reactor, holding a media slot."""
    from twisted.python.threadable import isInIOThread

    from imserver.web import http as web_http

    seen = []
    real = web_http.parse_request
    slots = server.core.media.slots

    def spy(*args):
        seen.append((isInIOThread(), slots.tokens < slots.limit))
        return real(*args)

    monkeypatch.setattr(web_http, "parse_request", spy)
    token = await user_token(server)
    code, body = await upload(server, "writev1", samples.wav(seconds=10, rate=8000),
                              token=token)
    assert code == 200 and body["code"] == 0
    assert seen == [(False, True)]


@pytest_twisted.ensureDeferred
async def test_oversized_is_refused(start_server):
    """Past the kind's limit: HTTP 413, code -7, the limit in the message, nothing stored."""
    server = await start_server(max_upload=100_000)
    token = await user_token(server)
    big = samples.wav(seconds=10, rate=8000)       # 160 kB
    assert len(big) > 100_000
    code, body = await upload(server, "writev1", big, token=token)
    assert code == 413 and body["code"] == -7 and "100000" in body["message"]
    code, body = await upload(server, "writev3", os.urandom(120_000), token=token)
    assert code == 413 and body["code"] == -7
    code, body = await upload(server, "writev1", samples.wav(seconds=2), token=token)
    assert body["code"] == 0


@pytest_twisted.ensureDeferred
async def test_token_required(start_server):
    """No token or a bad one: code -2, nothing stored; --legacy-auth admits tokenless uploads."""
    server = await start_server()
    wav = samples.wav(1)
    code, body = await upload(server, "writev1", wav)
    assert body == {"code": -2, "message": "login required: pass a valid token"}
    code, body = await upload(server, "writev1", wav, token="not-a-token")
    assert body["code"] == -2
    media_dir = server.config.data_dir / "media"
    assert not media_dir.exists() or not any(media_dir.iterdir())
    legacy = await start_server(legacy_auth=True)
    code, body = await upload(legacy, "writev1", wav)
    assert body["code"] == 0 and body["data"].endswith("-1.wav")
    code, body = await upload(legacy, "writev1", wav, token="not-a-token")
    assert body["code"] == -2


@pytest_twisted.ensureDeferred
async def test_media_paths_are_confined(server):
    """/media/ lists nothing, reaches nothing outside the media directory, and is read-only."""
    token = await user_token(server)
    _, body = await upload(server, "writev2", samples.picture("GIF", (8, 8)), token=token)
    name = media_path(body["data"])[len("/media/"):]
    (server.config.data_dir / "secret.txt").write_text("secret")
    for path in ["/media/", "/media/..%2Fsecret.txt", "/media/%2e%2e/secret.txt",
                 "/media/.." + "/secret.txt", "/media/" + name + "/x",
                 "/media/0123456789abcdef0123456789abcdef-1x1.jpg", "/media/.up-x"]:
        r = await treq.get(server.url + path)
        text = await r.content()
        assert r.code == 404 and b"secret" not in text and name.encode() not in text, path
    r = await treq.post(server.url + "/media/" + name, data={"x": "1"})
    assert r.code == 405
    await r.content()
    r = await treq.delete(server.url + "/media/" + name)
    assert r.code in (405, 501)     # twisted.web: 501 for methods it does not know
    await r.content()
    assert (server.config.data_dir / "media" / name).exists()


@pytest_twisted.ensureDeferred
async def test_too_many_uploads(server):
    """Past 60 uploads a minute a user is refused with code -5 (counted in Redis)."""
    from imserver.dialects.signal.upload import UPLOADS_PER_MINUTE

    token = await user_token(server)
    user = await server.core.accounts.user_for_token(token)
    for _ in range(2):   # a second go if the minute's window turned in between
        for _ in range(UPLOADS_PER_MINUTE):
            await server.core.limits.count("upload", str(user.id), 60)
        _, body = await upload(server, "writev1", samples.wav(1), token=token)
        if body["code"] != 0:
            break
    assert body["code"] == -5 and "too many" in body["message"]


@pytest_twisted.ensureDeferred
async def test_disk_failure_is_an_envelope(server):
    """If the media directory cannot be written, the client gets code -6, not a 500 page."""
    token = await user_token(server)
    (server.config.data_dir / "media").write_text("a file where the directory should be")
    code, body = await upload(server, "writev1", samples.wav(1), token=token)
    assert code == 503 and body == {"code": -6, "message": "could not store the file; try again"}
