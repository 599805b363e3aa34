"""The video/song catalogue, its import command and the synthesised sample tunes."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import wave

import pytest
import pytest_twisted

from imserver.core import tunes
from imserver.core.catalog import Catalog, parse_items, sample
from imserver.core.errors import InvalidInput


def video(i, cate="1"):
    return {"id": str(i), "name": f"clip {i}", "video": f"http://v/{i}.mp4",
            "duration": f"{i % 30} min", "file": f"http://f/{i}.mp4", "cate": cate}


@pytest.fixture
def catalog(store):
    return Catalog(store)


@pytest_twisted.ensureDeferred
async def test_pages_through_1000_videos(catalog):
    """Paging an imported catalogue of 1,000 entries returns every entry once, in file order."""
    items = [video(i, cate=str(i % 3)) for i in range(1000, 0, -1)]
    assert await catalog.replace_videos(items) == 1000
    seen = []
    page = 1
    while True:
        entries, total = await catalog.videos(page, 37)
        assert total == 1000
        if not entries:
            break
        seen += [e["id"] for e in entries]
        page += 1
    assert seen == [str(i) for i in range(1000, 0, -1)]
    entries, total = await catalog.videos(2, 10, cate="0")
    assert total == 333
    assert [e["id"] for e in entries] == [str(i) for i in range(969, 939, -3)]
    assert all(e["cate"] == "0" for e in entries)
    assert await catalog.videos(1, 10, cate="9") == ([], 0)


@pytest_twisted.ensureDeferred
async def test_entries_are_strings_with_exactly_the_fields(catalog):
    """An entry has the document's six fields as strings, whatever the file had."""
    await catalog.replace_videos([{"id": 4620, "name": "A", "duration": "13 min", "extra": 1}])
    assert await catalog.get_video("4620") == {
        "id": "4620", "name": "A", "video": "", "duration": "13 min", "file": "", "cate": ""}
    assert await catalog.get_video(4620) == await catalog.get_video("4620")
    assert await catalog.get_video("nope") is None


@pytest_twisted.ensureDeferred
async def test_replace_replaces_whole_catalogue(catalog, store):
    """An import replaces the previous one; the old generation's keys expire."""
    await catalog.replace_videos([video(1, "a"), video(2, "b")])
    await catalog.replace_videos([video(3, "a"), video(3, "c")])  # repeated id: the later wins
    assert await catalog.videos(1, 10) == ([video(3, "c")], 1)
    assert await catalog.videos(1, 10, cate="a") == ([], 0)
    assert await catalog.get_video("1") is None
    ttls = [await store.execute("TTL", k) for k in await store.execute("KEYS", "im:catalog:*")
            if await store.execute("TYPE", k) != "string"]
    # old: items, order, cates and two categories expire; new: items, order, cates, "c" stay
    assert sorted(t > 0 for t in ttls) == [False] * 4 + [True] * 5


@pytest_twisted.ensureDeferred
async def test_songs(catalog):
    """Songs are found by sid and paged like videos."""
    await catalog.replace_songs([{"sid": "7", "author": "x", "name": "y", "lrc": "l",
                                  "link": "k", "duration": 200}])
    assert await catalog.get_song("7") == {"sid": "7", "author": "x", "name": "y", "lrc": "l",
                                           "link": "k", "duration": "200"}
    assert await catalog.get_song("8") is None
    assert (await catalog.songs(1, 5))[1] == 1


@pytest_twisted.ensureDeferred
async def test_sample_only_on_a_fresh_store(catalog):
    """ensure_sample fills a fresh store once and never overwrites an import."""
    assert await catalog.ensure_sample("http://h:1")
    videos, total = await catalog.videos(1, 100)
    assert total >= 3 and all(v["file"].startswith("https://") for v in videos)
    song = await catalog.get_song("1")
    assert song["link"] == "http://h:1/catalog/sample/twinkle.wav"
    assert song["duration"] == str(tunes.duration("twinkle"))
    assert not await catalog.ensure_sample("http://h:1")
    await catalog.replace_videos([video(1)])
    assert not await catalog.ensure_sample("http://h:1")
    assert (await catalog.videos(1, 100))[1] == 1


@pytest_twisted.ensureDeferred
async def test_import_before_sample_wins(catalog):
    """An import on a fresh store means no sample is added later."""
    await catalog.replace_songs([{"sid": "1", "name": "mine"}])
    assert not await catalog.ensure_sample()
    assert (await catalog.videos())[1] == 0
    assert (await catalog.get_song("1"))["name"] == "mine"


def test_parse_json_forms():
    """A JSON list, a {"videos": [...]} object and a saved video.php reply all parse."""
    items = [video(1), video(2)]
    for doc in (items, {"videos": items}, {"errCode": "0", "info": "", "data": items}):
        assert parse_items("videos", json.dumps(doc), "json") == items


def test_parse_csv():
    """A CSV file with a header row parses; extra columns are ignored."""
    text = "id,name,video,duration,file,cate,junk\n7,a b,http://v,3 min,http://f,2,x\n"
    assert parse_items("videos", text, "csv") == [
        {"id": "7", "name": "a b", "video": "http://v", "duration": "3 min",
         "file": "http://f", "cate": "2"}]


@pytest.mark.parametrize("kind,text,fmt,why", [
    ("videos", "{", "json", "not valid JSON"),
    ("videos", '{"x": 1}', "json", "expected a list"),
    ("videos", '[{"name": "no id"}]', "json", "entry 1"),
    ("videos", '[{"id": "1", "name": {"a": 1}}]', "json", "plain values"),
    ("songs", "name,author\nx,y\n", "csv", "header"),
    ("videos", "[1]", "json", "entry 1"),
])
def test_parse_refuses_bad_files(kind, text, fmt, why):
    """A bad file is refused with a reason naming the problem."""
    with pytest.raises(InvalidInput) as e:
        parse_items(kind, text, fmt)
    assert why in e.value.reason


def test_sample_catalogue_is_valid():
    """The shipped sample parses, with songs whose sids are unique and tunes that exist."""
    data = sample("http://x")
    assert len({s["sid"] for s in data["songs"]}) == len(data["songs"]) >= 3
    for s in data["songs"]:
        name = re.search(r"/catalog/sample/(\w+)\.wav$", s["link"]).group(1)
        assert name in tunes.names() and s["lrc"].endswith(f"/{name}.lrc")


@pytest.mark.parametrize("name", tunes.names())
def test_tune_audio_and_lyrics_agree(name):
    """Each tune's WAV lasts its catalogue duration and every lyric line starts inside it."""
    data = tunes.wav(name)
    with wave.open(io.BytesIO(data)) as w:
        seconds = w.getnframes() / w.getframerate()
    assert seconds == tunes.duration(name)
    stamps = re.findall(r"^\[(\d\d):(\d\d\.\d\d)\]", tunes.lrc(name), re.M)
    times = [int(m) * 60 + float(s) for m, s in stamps]
    assert times == sorted(times) and len(times) >= 4 and times[-1] < seconds


def test_cli_imports_into_redis(redis_url, tmp_path):
    """imserver-catalog imports a CSV file into a given Redis and says how many."""
    path = tmp_path / "v.csv"
    path.write_text("id,name,cate\n" + "".join(f"{i},n{i},1\n" for i in range(50)))
    out = subprocess.run([sys.executable, "-c", "from imserver.catalog_cli import main; main()",
                          "--redis", redis_url, "videos", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "imported 50 videos"
    bad = tmp_path / "bad.json"
    bad.write_text('[{"name": "x"}]')
    out = subprocess.run([sys.executable, "-c", "from imserver.catalog_cli import main; main()",
                          "--redis", redis_url, "videos", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "entry 1" in out.stderr


def test_cli_with_data_dir_starts_its_own_redis(tmp_path):
    """With --data-dir and no server running, the command runs the embedded Redis itself."""
    path = tmp_path / "s.json"
    path.write_text(json.dumps([{"sid": "1", "name": "a"}, {"sid": "2", "name": "b"}]))
    out = subprocess.run([sys.executable, "-c", "from imserver.catalog_cli import main; main()",
                          "--data-dir", str(tmp_path / "data"), "songs", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "imported 2 songs"
    assert (tmp_path / "data" / "redis").is_dir()
    assert not (tmp_path / "data" / "redis" / "redis.sock").exists()
