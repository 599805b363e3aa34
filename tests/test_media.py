"""The media core: type from content, the document's names, limits, storage, group pictures."""

from __future__ import annotations

import hashlib
import io
import threading

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import threads

import media_samples as samples
from imserver.core.errors import InvalidInput
from imserver.core.media import (
    GRID_SIZE, KINDS, CorruptMedia, EmptyUpload, MediaRefused, MediaStore, MediaTooLarge, Probe,
    UnsupportedMedia, grid_layout, probe)


class ProbeTests:
    @pytest.mark.parametrize("fmt, ext", [("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"),
                                          ("WEBP", "webp"), ("BMP", "bmp"), ("AVIF", "avif")])
    def test_pictures(self, fmt, ext):
        """Each picture format is recognised, with its real extension and W x H."""
        found = probe(samples.picture(fmt, (746, 750)), "picture_or_audio")
        assert (found.media, found.format.ext, found.suffix) == ("picture", ext, "746x750")
        assert probe(samples.picture(fmt, (31, 17)), "avatar").suffix == "31x17"

    def test_exif_rotation_gives_displayed_size(self):
        """A JPEG that is displayed rotated a quarter turn is named by its displayed size."""
        data = samples.picture("JPEG", (80, 60), exif_orientation=6)
        assert probe(data, "avatar").suffix == "60x80"

    @pytest.mark.parametrize("make, ext", [
        (samples.wav, "wav"), (samples.mp3, "mp3"), (samples.m4a, "m4a"), (samples.amr, "amr"),
        (samples.ogg, "ogg"), (samples.opus, "opus"), (samples.flac, "flac"),
        (samples.aac, "aac")])
    def test_audio_duration(self, make, ext):
        """Each audio format is recognised and its duration read from the file (3 s -> "3")."""
        for kind in ("audio", "picture_or_audio"):
            found = probe(make(3), kind)
            assert (found.media, found.format.ext, found.suffix) == ("audio", ext, "3")
        assert probe(make(5), "audio").seconds == 5

    @pytest.mark.parametrize("ext", ["mp4", "mov", "3gp", "webm", "mkv", "avi"])
    def test_video_dimensions(self, ext):
        """Each video container is recognised and its picture size read from the file."""
        found = probe(samples.video(ext, "64x48"), "video")
        assert (found.media, found.format.ext, found.suffix) == ("video", ext, "64x48")

    def test_video_with_sound(self):
        """An MP4 with sound and picture is a video of the picture's size."""
        found = probe(samples.mp4("96x64", with_audio=True), "video")
        assert (found.format.ext, found.suffix) == ("mp4", "96x64")

    def test_text_named_like_a_picture_is_refused(self):
        """Text is no picture, whatever its name: a clear refusal naming what is accepted."""
        with pytest.raises(UnsupportedMedia) as e:
            probe(b"hello, this is a text file\n" * 20, "picture_or_audio")
        assert "expected a picture" in e.value.reason and "audio" in e.value.reason

    @pytest.mark.parametrize("kind, data", [
        ("audio", lambda: samples.picture()),
        ("audio", lambda: samples.mp4()),
        ("video", lambda: samples.mp3()),
        ("video", lambda: samples.picture("PNG")),
        ("video", lambda: samples.m4a()),
        ("avatar", lambda: samples.wav()),
        ("avatar", lambda: samples.m4a()),
        ("picture_or_audio", lambda: samples.mp4()),
    ])
    def test_wrong_kind_is_refused(self, kind, data):
        """Each endpoint takes only its kinds: a valid file of another kind is refused."""
        with pytest.raises(UnsupportedMedia):
            probe(data(), kind)

    @pytest.mark.parametrize("make", [
        lambda: samples.picture("JPEG"), lambda: samples.picture("PNG"),
        lambda: samples.picture("GIF"), lambda: samples.mp3(), lambda: samples.mp4(),
        lambda: samples.wav()[:44], lambda: samples.wav()[:5000], lambda: samples.m4a()])
    def test_truncated_is_corrupt(self, make):
        """A file cut short (headers intact) is refused as corrupt, not accepted."""
        data = make()
        cut = data if len(data) <= 44 else data[:max(40, len(data) // 40)]
        kind = "video" if cut[4:8] == b"ftyp" else "picture_or_audio"
        with pytest.raises((CorruptMedia, UnsupportedMedia)):
            probe(cut, kind)

    def test_cut_amr_keeps_its_whole_frames(self):
        """AMR has no length header: a recording cut short is named by what it holds."""
        data = samples.amr(5)
        assert probe(data, "audio").seconds == 5
        assert probe(data[:len(data) * 2 // 5 + 3], "audio").seconds == 2

    def test_mp3_header_then_garbage(self):
        """An MPEG frame header followed by junk is not an MP3."""
        with pytest.raises(CorruptMedia):
            probe(b"\xff\xfb\x90\x64" + b"junk" * 500, "audio")

    def test_empty_and_pixel_bomb(self):
        """Nothing is refused as empty; a picture past the pixel limit as too large."""
        with pytest.raises(EmptyUpload):
            probe(b"", "avatar")
        with pytest.raises(MediaTooLarge):
            probe(samples.picture("PNG", (200, 200)), "avatar", max_pixels=10_000)

    def test_streamed_and_fragmented_containers(self):
        """A browser-style WebM (unknown sizes) and a fragmented MP4 are read like any other."""
        live = samples.ffmpeg_sample("webm", *samples.pattern("320x240", 2), "-c:v", "libvpx",
                                     "-live", "1")
        assert probe(live, "video").suffix == "320x240"
        frag = samples.ffmpeg_sample("mp4", *samples.pattern("320x240", 2), "-c:v", "libx264",
                                     "-pix_fmt", "yuv420p", "-g", "5",
                                     "-movflags", "frag_keyframe+empty_moov")
        assert probe(frag, "video").suffix == "320x240"
        voice = samples.ffmpeg_sample("3gp", *samples.tone(3), "-ar", "8000", "-ac", "1",
                                      "-c:a", "libopencore_amrnb", "-b:a", "12.2k")
        found = probe(voice, "audio")
        assert (found.format.ext, found.format.content_type, found.suffix) == (
            "3gp", "audio/3gpp", "3")

    def test_crafted_swarms_of_tiny_elements_are_refused_fast(self):
        """Millions of empty boxes/elements/chunks/blocks: refused quickly, never parsed."""
        import struct
        import time

        free = struct.pack(">I", 8) + b"free"
        ftyp = struct.pack(">I", 16) + b"ftypisom" + b"\0" * 4
        junk = b"JUNK" + struct.pack("<I", 0)
        flac = samples.flac()
        cases = [
            (ftyp + free * 500_000, "video"),
            (ftyp + struct.pack(">I", 8 + 8 * 500_000) + b"moov" + free * 500_000, "video"),
            (ftyp + free * 500_000, "audio"),
            (samples.video("mkv")[:40] + b"\x18\x53\x80\x67\x01\xff\xff\xff\xff\xff\xff\xff"
             + b"\xec\x80" * 1_000_000, "video"),
            (b"RIFF" + struct.pack("<I", 4 + 8 * 500_000) + b"AVI " + junk * 500_000, "video"),
            (flac[:42] + b"\x01\0\0\0" * 500_000 + flac[42:], "audio"),
        ]
        for data, kind in cases:
            started = time.monotonic()
            with pytest.raises(CorruptMedia, match="too many"):
                probe(data, kind)
            assert time.monotonic() - started < 2.0

    def test_heic_refused_clearly(self):
        """An iPhone HEIC picture gets a message saying what to send instead."""
        data = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 100
        with pytest.raises(UnsupportedMedia, match="HEIC"):
            probe(data, "picture_or_audio")


# -- property-based: no input crashes the prober ------------------------------------

MAGICS = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\x00\x10\x00\x00WEBP",
          b"RIFF\x00\x10\x00\x00WAVE", b"RIFF\x00\x10\x00\x00AVI ", b"BM", b"ID3\x03\x00",
          b"\xff\xfb", b"\xff\xf1", b"OggS", b"fLaC", b"#!AMR\n", b"#!AMR-WB\n",
          b"\x00\x00\x00\x18ftypisom", b"\x00\x00\x00\x18ftypqt  ", b"\x00\x00\x00\x18ftyp3gp4",
          b"\x00\x00\x00\x18ftypM4A ", b"\x00\x00\x00\x18ftypavif", b"\x1a\x45\xdf\xa3"]


def _probe_outcome(data: bytes, kind: str):
    try:
        found = probe(data, kind)
    except MediaRefused as e:
        assert e.reason and isinstance(e.reason, str)
        return None
    assert isinstance(found, Probe) and found.media in KINDS[kind] + (
        ("picture",) if kind == "avatar" else ())
    if found.media == "audio":
        assert found.seconds >= 1
    else:
        assert found.width > 0 and found.height > 0
    return found


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048), st.sampled_from(sorted(KINDS)))
def test_random_bytes_never_crash(data, kind):
    """Random bytes get a clear refusal or a valid result, never another exception."""
    _probe_outcome(data, kind)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(MAGICS), st.binary(max_size=4096), st.sampled_from(sorted(KINDS)))
def test_magic_then_random_never_crash(magic, rest, kind):
    """A real magic number followed by junk reaches the real parsers and is refused cleanly."""
    _probe_outcome(magic + rest, kind)


_SEEDS = {}


def _seed(name):
    if name not in _SEEDS:
        _SEEDS[name] = {"jpg": lambda: samples.picture("JPEG", (40, 30)),
                        "png": lambda: samples.picture("PNG", (40, 30)),
                        "gif": lambda: samples.picture("GIF", (40, 30)),
                        "webp": lambda: samples.picture("WEBP", (40, 30)),
                        "wav": lambda: samples.wav(1), "mp3": samples.mp3, "m4a": samples.m4a,
                        "amr": samples.amr, "ogg": samples.ogg, "flac": samples.flac,
                        "mp4": samples.mp4, "webm": lambda: samples.video("webm"),
                        "avi": lambda: samples.video("avi")}[name]()
    return _SEEDS[name]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["jpg", "png", "gif", "webp", "wav", "mp3", "m4a", "amr", "ogg",
                        "flac", "mp4", "webm", "avi"]),
       st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                max_size=12),
       st.floats(0.05, 1.0), st.sampled_from(sorted(KINDS)))
def test_damaged_real_files_never_crash(name, flips, keep, kind):
    """Real files with bytes changed and cut short: a clear refusal or a valid result."""
    data = bytearray(_seed(name))
    for where, value in flips:
        data[int(where * len(data))] = value
    _probe_outcome(bytes(data[:max(1, int(len(data) * keep))]), kind)


# -- the store -------------------------------------------------------------------------

class _Blocking:
    """deferToThread that remembers which threads the work ran in."""

    def __init__(self):
        self.threads = set()

    def __call__(self, fn, *args):
        def run():
            self.threads.add(threading.get_ident())
            return fn(*args)
        return threads.deferToThread(run)


@pytest.fixture
def blocking():
    return _Blocking()


@pytest.fixture
def media(tmp_path, blocking):
    return MediaStore(tmp_path, "http://media.test:8080/", blocking)


class StoreTests:
    @pytest_twisted.ensureDeferred
    async def test_store_names_and_bytes(self, media, blocking, tmp_path):
        """Stored unchanged as <hash>-<suffix>.<ext>, off the reactor thread, URL under /media/."""
        data = samples.mp3(3)
        stored = await media.store_upload(data, "audio")
        digest = hashlib.sha256(data).hexdigest()[:32]
        assert stored.name == f"{digest}-3.mp3"
        assert stored.url == f"http://media.test:8080/media/{digest}-3.mp3"
        assert stored.path == f"/media/{digest}-3.mp3"
        assert (stored.content_type, stored.media, stored.seconds) == ("audio/mpeg", "audio", 3)
        assert (tmp_path / "media" / stored.name).read_bytes() == data
        assert blocking.threads and threading.get_ident() not in blocking.threads
        again = await media.store_upload(data, "picture_or_audio")
        assert again.name == stored.name
        assert [p.name for p in (tmp_path / "media").iterdir()] == [stored.name]

    @pytest_twisted.ensureDeferred
    async def test_picture_and_video(self, media):
        """Pictures and videos are named by their size in pixels."""
        pic = await media.store_upload(samples.picture("PNG", (120, 90)), "avatar")
        assert pic.name.endswith("-120x90.png") and pic.content_type == "image/png"
        vid = await media.store_upload(samples.mp4("160x96"), "video")
        assert vid.name.endswith("-160x96.mp4") and (vid.width, vid.height) == (160, 96)

    @pytest_twisted.ensureDeferred
    async def test_limits_per_kind(self, tmp_path, blocking):
        """Each kind has its own size limit; --max-upload sets video's and caps the rest."""
        media = MediaStore(tmp_path, "http://x", blocking, max_upload=5000)
        assert media.limit_for("video") == 5000 and media.limit_for("audio") == 5000
        with pytest.raises(MediaTooLarge, match="at most 5000"):
            await media.store_upload(samples.wav(1), "audio")
        assert not (tmp_path / "media").exists()
        default = MediaStore(tmp_path, "http://x", blocking)
        assert default.limit_for("video") == 20 * 1024 * 1024
        assert default.limit_for("avatar") < default.limit_for("video")

    @pytest_twisted.ensureDeferred
    async def test_refusal_stores_nothing(self, media, tmp_path):
        """A refused file leaves nothing behind."""
        with pytest.raises(UnsupportedMedia):
            await media.store_upload(b"plain text, named photo.jpg" * 10, "avatar")
        assert not (tmp_path / "media").exists() or not any((tmp_path / "media").iterdir())

    def test_path_for_is_safe(self, media, tmp_path):
        """Only plain media names map to paths, all inside the media directory."""
        name = "0123456789abcdef0123456789abcdef-3.mp3"
        assert media.path_for(name) == tmp_path / "media" / name
        assert media.path_for("26_144fab26.jpg").parent == tmp_path / "media"
        for bad in ["", "..", "../x.jpg", "a/b.jpg", ".hidden", "x..jpg", "a\\b", "/etc/passwd",
                    "a.jpg/", "x" * 200, "é.jpg", "a.b.c", "a\x00.jpg", None]:
            with pytest.raises(InvalidInput):
                media.path_for(bad)

    def test_name_from_ref(self, media):
        """Our URLs, /media/ paths and bare names name stored media; other URLs do not."""
        name = "0123456789abcdef0123456789abcdef-40x40.png"
        assert media.name_from_ref(f"http://media.test:8080/media/{name}") == name
        assert media.name_from_ref(f"/media/{name}") == name
        assert media.name_from_ref(name) == name
        for ref in ["", "https://imgcdn.example/imagesu/avatar_temp/default.jpg",
                    "http://x/media/../../etc/passwd", "http://x/other/" + name]:
            assert media.name_from_ref(ref) is None


class GridTests:
    def test_layout(self):
        """1..9 tiles: WeChat rows (the first takes the remainder), inside, not overlapping."""
        rows = {1: [1], 2: [2], 3: [1, 2], 4: [2, 2], 5: [2, 3], 6: [3, 3], 7: [1, 3, 3],
                8: [2, 3, 3], 9: [3, 3, 3]}
        for n, expected in rows.items():
            boxes = grid_layout(n)
            assert len(boxes) == n
            ys = sorted({y for _, y, _ in boxes})
            assert [sum(1 for b in boxes if b[1] == y) for y in ys] == expected
            for i, (x, y, s) in enumerate(boxes):
                assert 0 <= x and 0 <= y and x + s <= GRID_SIZE and y + s <= GRID_SIZE
                for (x2, y2, s2) in boxes[i + 1:]:
                    assert x + s <= x2 or x2 + s2 <= x or y + s <= y2 or y2 + s2 <= y

    @pytest_twisted.ensureDeferred
    async def test_grid_from_stored_avatars_and_placeholders(self, media, tmp_path):
        """Stored avatars are drawn from disk, others are generated; same members, same URL."""
        from PIL import Image

        red = await media.store_upload(samples.picture("PNG", (50, 50), (255, 0, 0)), "avatar")
        blue = await media.store_upload(samples.picture("JPEG", (64, 40), (0, 0, 255)), "avatar")
        refs = [red.url, "/media/" + blue.name, "https://cdn.example/default.jpg", ""]
        url = await media.compose_grid(refs, "26")
        assert url.startswith("http://media.test:8080/media/26_") and url.endswith(".jpg")
        name = url.rsplit("/", 1)[1]
        im = Image.open(media.path_for(name))
        assert (im.format, im.size) == ("JPEG", (GRID_SIZE, GRID_SIZE))
        (x0, y0, s), (x1, y1, _), (x2, y2, _), _ = grid_layout(4)
        r, g, b = im.getpixel((x0 + s // 2, y0 + s // 4))
        assert r > 200 and g < 60 and b < 60
        r, g, b = im.getpixel((x1 + s // 2, y1 + s // 4))
        assert b > 200 and r < 60 and g < 60
        assert await media.compose_grid(refs, "26") == url
        assert await media.compose_grid(refs[:3], "26") != url
        assert (await media.compose_grid(refs, "27")).split("/")[-1].startswith("27_")

    @pytest_twisted.ensureDeferred
    async def test_grid_bounds(self, media):
        """No members gives one placeholder; more than nine draws nine; odd keys are cleaned."""
        from PIL import Image

        one = await media.compose_grid([], "../7")
        assert one.split("/")[-1].startswith("7_")
        many = await media.compose_grid([f"https://x/{i}.jpg" for i in range(15)], "8")
        nine = await media.compose_grid([f"https://x/{i}.jpg" for i in range(9)], "8")
        assert many == nine
        with Image.open(media.path_for(nine.split("/")[-1])) as im:
            assert im.size == (GRID_SIZE, GRID_SIZE)


def test_placeholder_is_deterministic():
    """The generated tile depends only on its reference."""
    from imserver.core.media import placeholder_tile

    a, b = placeholder_tile("u1", 90), placeholder_tile("u1", 90)
    assert a.tobytes() == b.tobytes()
    assert io.BytesIO(a.tobytes()).getvalue() != placeholder_tile("another", 90).tobytes()
