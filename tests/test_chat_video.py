"""GET /video.php (000) and the sample tunes, over a real server."""

from __future__ import annotations

import io
import json
import wave

import pytest_twisted
import treq


def entry(i, cate):
    return {"id": str(i), "name": f"clip {i}", "video": f"http://cdn/{i}.mp4",
            "duration": "13 min", "file": f"download/{i}.mp4", "cate": cate}


@pytest_twisted.ensureDeferred
async def test_fresh_server_serves_the_sample(server, http):
    """A fresh data directory answers with the sample catalogue in the document's shape."""
    status, body = await http.get_json(server.url + "/video.php")
    assert status == 200 and body["errCode"] == "0" and body["info"] == ""
    assert len(body["data"]) >= 3 and body["total"] == len(body["data"])
    for v in body["data"]:
        assert set(v) == {"id", "name", "video", "duration", "file", "cate"}
        assert all(isinstance(x, str) for x in v.values())


@pytest_twisted.ensureDeferred
async def test_pages_through_an_imported_catalogue(server, http):
    """1,000 imported entries page correctly, and cate filters."""
    await server.core.catalog.replace_videos(
        [entry(i, "1" if i % 4 else "2") for i in range(5000, 4000, -1)])
    ids = []
    for page in range(1, 12):
        _, body = await http.get_json(server.url + "/video.php",
                                      params={"page": page, "size": 100})
        assert body["total"] == 1000 and body["page"] == page and body["size"] == 100
        ids += [v["id"] for v in body["data"]]
    assert ids == [str(i) for i in range(5000, 4000, -1)]
    _, body = await http.get_json(server.url + "/video.php",
                                  params={"page": 3, "size": 5, "cate": "2"})
    assert body["total"] == 250
    assert [v["id"] for v in body["data"]] == ["4960", "4956", "4952", "4948", "4944"]
    _, body = await http.get_json(server.url + "/video.php", params={"page": 2})
    assert len(body["data"]) == 20 and body["data"][0]["id"] == "4980"
    _, body = await http.post_json(server.url + "/video.php", data={"size": "3"})
    assert [v["id"] for v in body["data"]] == ["5000", "4999", "4998"]


@pytest_twisted.ensureDeferred
async def test_jsonp(server):
    """With callback the body is callback(<json>)."""
    r = await treq.get(server.url + "/video.php", params={"callback": "jQuery123_cb",
                                                          "size": "1"})
    text = await r.text("utf-8")
    assert text.startswith("jQuery123_cb(") and text.endswith(")")
    body = json.loads(text[len("jQuery123_cb("):-1])
    assert body["errCode"] == "0" and len(body["data"]) == 1
    assert r.headers.getRawHeaders("content-type")[0].startswith("application/javascript")


@pytest_twisted.ensureDeferred
async def test_errors(server, http):
    """Bad paging or a bad callback name: errCode "1", info 数据请求失败, data the reason."""
    _, body = await http.get_json(server.url + "/video.php", params={"page": "x"})
    assert body == {"errCode": "1", "info": "数据请求失败",
                    "data": "page must be a positive integer"}
    _, body = await http.get_json(server.url + "/video.php", params={"size": "0"})
    assert body["errCode"] == "1"
    _, body = await http.get_json(server.url + "/video.php",
                                  params={"callback": "alert(1);x"})
    assert body == {"errCode": "1", "info": "数据请求失败", "data": "invalid callback"}


@pytest_twisted.ensureDeferred
async def test_sample_songs_are_playable(server):
    """The sample songs' link and lrc URLs answer with a WAV of the song's length and lyrics."""
    song = await server.core.catalog.get_song("1")
    path = song["link"].split("://", 1)[1].split("/", 1)[1]
    r = await treq.get(f"{server.url}/{path}")
    assert r.code == 200 and r.headers.getRawHeaders("content-type") == ["audio/wav"]
    with wave.open(io.BytesIO(await r.content())) as w:
        assert round(w.getnframes() / w.getframerate()) == int(song["duration"])
    r = await treq.get(f"{server.url}/{song['lrc'].split('/', 3)[3]}")
    assert r.code == 200 and "[00:01.00]" in await r.text("utf-8")
    r = await treq.get(server.url + "/catalog/sample/nope.wav")
    assert r.code == 404
