"""
Uploaded media: recognise, name, store, and compose group pictures.

Every upload path of every dialect (004 ``/upload/writev1..3``, 001's avatar
``/upload``) ends in :meth:`MediaStore.store_upload`: the bytes go to a
worker thread, where :func:`probe` reads the real type from the content
(magic bytes, then a real parse: Pillow for pictures, mutagen or a frame
walk for audio, hachoir for video containers; never the file name or the
declared content type), checks it against what the endpoint accepts and the
size limits, and measures it. The file is then written unchanged under
``<data_dir>/media/`` with the name document 004 shows, which clients
parse:

- audio: ``<hash>-<seconds>.<ext>`` (``…-3.mp3``: the duration, rounded);
- pictures and videos: ``<hash>-<W>x<H>.<ext>`` (``…-746x750.jpg``; for a
  JPEG or WebP with an EXIF orientation the size as displayed).

``<hash>`` is the first 32 hex digits of the content's SHA-256, so the same
bytes always get the same name and storing twice is harmless. Group
pictures (004 ``snap``) are composed by :meth:`MediaStore.compose_grid`,
also off the reactor thread, from avatars already in the store.

The web layer serves the directory back at ``/media/<name>``
(:mod:`imserver.web.media`); :meth:`MediaStore.path_for` is the one place a
name becomes a path, and it admits only names this module can produce.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pathlib
import re
import struct
import tempfile
from dataclasses import dataclass
from urllib.parse import urlsplit

from twisted.internet import defer

from imserver.core.errors import InvalidInput

# hachoir prints its parse warnings and errors to stdout unless told otherwise;
# a damaged upload is refused with a message, not narrated.
from hachoir.core import config as _hachoir_config  # noqa: E402
from hachoir.core.log import log as _hachoir_log  # noqa: E402

_hachoir_config.quiet = True
_hachoir_log.use_print = False

MB = 1024 * 1024

#: what each upload endpoint accepts
KINDS: dict[str, tuple[str, ...]] = {
    "audio": ("audio",),                       # 004 writev1
    "picture_or_audio": ("picture", "audio"),  # 004 writev2
    "video": ("video",),                       # 004 writev3
    "avatar": ("picture",),                    # 001 /upload (img)
}

#: default largest upload per kind, in bytes (004: videos over 20 MB were refused)
DEFAULT_LIMITS: dict[str, int] = {
    "audio": 10 * MB,
    "picture_or_audio": 10 * MB,
    "video": 20 * MB,
    "avatar": 5 * MB,
}

DEFAULT_MAX_PIXELS = 50_000_000   # a picture's width x height (decompression bombs)
MAX_DIMENSION = 16384             # a video's width or height
GRID_SIZE = 300                   # a group picture's side, in pixels
GRID_MAX = 9


# -- errors ------------------------------------------------------------------

class MediaRefused(InvalidInput):
    reason = "file refused"


class EmptyUpload(MediaRefused):
    reason = "empty file"


class UnsupportedMedia(MediaRefused):
    reason = "unsupported file type"


class CorruptMedia(MediaRefused):
    reason = "corrupt or truncated file"


class MediaTooLarge(MediaRefused):
    reason = "file too large"


# -- formats -----------------------------------------------------------------

@dataclass(frozen=True)
class Format:
    media: str          # "picture" | "audio" | "video"
    ext: str
    content_type: str
    label: str          # for messages


FORMATS: dict[str, Format] = {f.ext: f for f in (
    Format("picture", "jpg", "image/jpeg", "JPEG"),
    Format("picture", "png", "image/png", "PNG"),
    Format("picture", "gif", "image/gif", "GIF"),
    Format("picture", "webp", "image/webp", "WebP"),
    Format("picture", "bmp", "image/bmp", "BMP"),
    Format("picture", "avif", "image/avif", "AVIF"),
    Format("audio", "mp3", "audio/mpeg", "MP3"),
    Format("audio", "wav", "audio/wav", "WAV"),
    Format("audio", "m4a", "audio/mp4", "M4A"),
    Format("audio", "aac", "audio/aac", "AAC"),
    Format("audio", "ogg", "audio/ogg", "Ogg Vorbis"),
    Format("audio", "opus", "audio/ogg", "Ogg Opus"),
    Format("audio", "flac", "audio/flac", "FLAC"),
    Format("audio", "amr", "audio/amr", "AMR"),
    Format("audio", "awb", "audio/amr-wb", "AMR-WB"),
    Format("video", "mp4", "video/mp4", "MP4"),
    Format("video", "mov", "video/quicktime", "QuickTime"),
    Format("video", "3gp", "video/3gpp", "3GP"),
    Format("video", "webm", "video/webm", "WebM"),
    Format("video", "mkv", "video/x-matroska", "Matroska"),
    Format("video", "avi", "video/x-msvideo", "AVI"),
)}

# an audio-only 3GP (Android voice notes) is stored as .3gp too
AUDIO_3GP = Format("audio", "3gp", "audio/3gpp", "3GP audio")

#: content type of every extension the store can hold (for the web layer)
CONTENT_TYPES: dict[str, str] = {"." + f.ext: f.content_type for f in FORMATS.values()
                                 if f.media != "video" or f.ext != "3gp"}
CONTENT_TYPES[".3gp"] = "video/3gpp"   # serves audio-only 3GP too: players accept it


def _accepted(media: tuple[str, ...]) -> str:
    words = {"picture": "a picture (JPEG, PNG, GIF, WebP, BMP, AVIF)",
             "audio": "audio (MP3, WAV, M4A, AAC, Ogg, Opus, FLAC, AMR)",
             "video": "a video (MP4, MOV, 3GP, WebM, MKV, AVI)"}
    return " or ".join(words[m] for m in media)


# -- results -----------------------------------------------------------------

@dataclass(frozen=True)
class Probe:
    """What :func:`probe` found in the bytes."""

    format: Format
    width: int | None = None
    height: int | None = None
    duration: float | None = None     # seconds, audio only

    @property
    def media(self) -> str:
        return self.format.media

    @property
    def seconds(self) -> int | None:
        if self.duration is None:
            return None
        return max(1, int(self.duration + 0.5))

    @property
    def suffix(self) -> str:
        """The document's name suffix: ``3`` (seconds) or ``746x750``."""
        if self.media == "audio":
            return str(self.seconds)
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class StoredMedia:
    name: str            # e.g. "f85c0e8786bbc2d12db8d4f941f3dbd8-3.mp3"
    url: str             # public_url + "/media/" + name
    path: str            # "/media/" + name (what 001's reply calls the stored path)
    content_type: str
    media: str           # "picture" | "audio" | "video"
    ext: str
    size: int
    width: int | None = None
    height: int | None = None
    seconds: int | None = None


# -- sniffing: the candidate format from the first bytes ----------------------

_ISO_PICTURE_BRANDS = {b"avif": "avif", b"avis": "avif"}
_ISO_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}


def _id3_end(data: bytes) -> int:
    """Offset after a leading ID3v2 tag (0 if none)."""
    if len(data) < 10 or data[:3] != b"ID3" or any(b & 0x80 for b in data[6:10]):
        return 0
    size = (data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9]
    end = 10 + size + (10 if data[5] & 0x10 else 0)
    return end


def _sniff(data: bytes) -> str | None:
    """The format key the magic bytes announce, or None. Not yet a verdict."""
    head = data[:64]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and len(head) >= 12:
        return {b"WEBP": "webp", b"WAVE": "wav", b"AVI ": "avi"}.get(head[8:12])
    if (head[:2] == b"BM" and len(head) >= 18
            and struct.unpack("<I", head[14:18])[0] in (12, 40, 52, 56, 64, 108, 124)):
        return "bmp"
    if head[4:8] == b"ftyp" and len(head) >= 12:
        brand = head[8:12]
        if brand in _ISO_PICTURE_BRANDS:
            return _ISO_PICTURE_BRANDS[brand]
        if brand in _ISO_HEIF_BRANDS:
            # a generic HEIF brand (mif1) may announce AVIF among its compatible brands
            size = min(struct.unpack(">I", head[:4])[0], len(head))
            compatible = {head[i:i + 4] for i in range(16, size - 3, 4)}
            return "avif" if compatible & set(_ISO_PICTURE_BRANDS) else "heif"
        return "isobmff"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"OggS"):
        if b"\x01vorbis" in data[:256]:
            return "ogg"
        if b"OpusHead" in data[:256]:
            return "opus"
        return None
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"#!AMR-WB\n"):
        return "awb"
    if head.startswith(b"#!AMR\n"):
        return "amr"
    start = _id3_end(data)
    if start and data[start:start + 4] == b"fLaC":
        return "flac"
    body = data[start:start + 4]
    if len(body) >= 2 and body[0] == 0xFF and body[1] & 0xE0 == 0xE0:
        layer = (body[1] >> 1) & 3
        if layer == 1:
            return "mp3"
        if layer == 0 and body[1] & 0xF6 == 0xF0:
            return "aac"
    return None


# -- audio frame walkers -------------------------------------------------------

_MP3_BITRATES = {
    3: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),   # MPEG-1
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),       # MPEG-2
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _mp3_frame_length(data: bytes, pos: int) -> int | None:
    """Length of the MPEG audio layer III frame starting at ``pos``, or None."""
    h = data[pos:pos + 4]
    if len(h) < 4 or h[0] != 0xFF or h[1] & 0xE0 != 0xE0:
        return None
    version = (h[1] >> 3) & 3
    if version == 1 or (h[1] >> 1) & 3 != 1:
        return None
    bitrate_index, rate_index = h[2] >> 4, (h[2] >> 2) & 3
    if bitrate_index in (0, 15) or rate_index == 3:
        return None
    bitrate = _MP3_BITRATES[3 if version == 3 else 2][bitrate_index] * 1000
    rate = _MP3_RATES[version][rate_index]
    padding = (h[2] >> 1) & 1
    return (144 if version == 3 else 72) * bitrate // rate + padding


def _adts_frame_length(data: bytes, pos: int) -> int | None:
    h = data[pos:pos + 7]
    if len(h) < 7 or h[0] != 0xFF or h[1] & 0xF6 != 0xF0 or (h[2] >> 2) & 0xF > 12:
        return None
    length = ((h[3] & 3) << 11) | (h[4] << 3) | (h[5] >> 5)
    return length if length >= 7 else None


def _check_frames(data: bytes, start: int, frame_length, label: str, want: int = 3) -> None:
    """A run of ``want`` well-formed frames from ``start`` (or fewer up to the end)."""
    pos, count = start, 0
    # encoders may pad the ID3 tag with zero bytes
    while pos < len(data) and pos - start < 4096 and data[pos] == 0:
        pos += 1
    while count < want and pos < len(data):
        n = frame_length(data, pos)
        if n is None:
            break
        count += 1
        pos += n
    if count == 0 or (count < want and pos < len(data)):
        raise CorruptMedia(f"corrupt {label} file: no valid audio frames")


def _wav_duration(data: bytes) -> float:
    """Walk the RIFF chunks: the data chunk's size over the format's byte rate."""
    pos, byte_rate = 12, None
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = pos + 8
        if chunk == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise CorruptMedia("corrupt WAV file: short format chunk")
            byte_rate = struct.unpack("<I", data[body + 8:body + 12])[0]
            if not byte_rate:
                raise CorruptMedia("corrupt WAV file: no byte rate")
        elif chunk == b"data":
            if byte_rate is None:
                raise CorruptMedia("corrupt WAV file: audio data before its format")
            available = len(data) - body
            if size in (0, 0xFFFFFFFF):   # written while streaming: length unknown
                size = available
            elif size > available:
                raise CorruptMedia("truncated WAV file: less audio than its header announces")
            return size / byte_rate
        pos = body + size + (size & 1)
    raise CorruptMedia("corrupt WAV file: no audio data")


_AMR_NB_SIZES = (13, 14, 16, 18, 20, 21, 27, 32, 6, None, None, None, None, None, None, 1)
_AMR_WB_SIZES = (18, 24, 33, 37, 41, 47, 51, 59, 61, 6, None, None, None, None, 1, 1)


def _amr_duration(data: bytes, wideband: bool) -> float:
    """AMR storage format (RFC 4867 §5): one TOC byte per 20 ms frame."""
    sizes = _AMR_WB_SIZES if wideband else _AMR_NB_SIZES
    pos = 9 if wideband else 6
    frames = 0
    while pos < len(data):
        toc = data[pos]
        size = sizes[(toc >> 3) & 0xF]
        if toc & 0x83 or size is None:
            raise CorruptMedia(f"corrupt AMR file: bad frame header at byte {pos}")
        if pos + size > len(data):
            break   # a recording cut short: keep the whole frames
        pos += size
        frames += 1
    if not frames:
        raise CorruptMedia("corrupt AMR file: no audio frames")
    return frames * 0.02


# -- container headers: bounded walks before the real parsers -------------------
#
# The metadata parsers are pure Python and slow per element; a crafted file of
# millions of tiny boxes would hold a worker for minutes. So each container is
# first walked here (a struct loop with hard caps on how many elements it may
# have), and the parser is given only the header it needs: ftyp + moov of an
# MP4, the EBML header + Info + Tracks of a Matroska file, the hdrl list of an
# AVI, the metadata blocks of a FLAC. A box that runs past the end of the
# data means the file was cut short.

MAX_ELEMENTS = 100_000        # top-level boxes/elements/chunks walked
MAX_HEADER_ELEMENTS = 5_000   # inside the header handed to a parser
MAX_HEADER_BYTES = 8 * MB     # the header itself (an MP4 moov, an AVI hdrl)

_ISO_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"mvex"}


def _iso_boxes(data: bytes, start: int, end: int, label: str):
    """(type, start, end) of each box in data[start:end]."""
    pos = start
    count = 0
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1:
            if pos + 16 > end:
                raise CorruptMedia(f"corrupt {label} file: cut-off box header")
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
            header = 16
        elif size == 0:            # "to the end of the file"
            size = end - pos
        if size < header:
            raise CorruptMedia(f"corrupt {label} file: bad box size")
        if pos + size > end:
            raise CorruptMedia(f"truncated {label} file: a box runs past the end")
        count += 1
        if count > MAX_ELEMENTS:
            raise CorruptMedia(f"unreadable {label} file: too many boxes")
        yield kind, pos, pos + size, pos + header
        pos += size


def _iso_header(data: bytes, label: str = "MP4") -> bytes:
    """ftyp + moov of an ISO media file, after checking its box structure."""
    ftyp = moov = None
    for kind, start, end, body in _iso_boxes(data, 0, len(data), label):
        if kind == b"ftyp" and ftyp is None:
            ftyp = data[start:end]
        elif kind == b"moov" and moov is None:
            if end - start > MAX_HEADER_BYTES:
                raise CorruptMedia(f"unreadable {label} file: movie header too large")
            moov = (start, end, body)
    if ftyp is None or moov is None:
        raise CorruptMedia(f"corrupt {label} file: no movie header (moov)")
    inner = 0
    stack = [moov]
    while stack:
        _, end, body = stack.pop()
        for kind, start, child_end, child_body in _iso_boxes(data, body, end, label):
            inner += 1
            if inner > MAX_HEADER_ELEMENTS:
                raise CorruptMedia(f"unreadable {label} file: too many boxes in its header")
            if kind in _ISO_CONTAINERS:
                stack.append((start, child_end, child_body))
    return ftyp + data[moov[0]:moov[1]]


_EBML_HEADER, _SEGMENT, _CLUSTER = 0x1A45DFA3, 0x18538067, 0x1F43B675
_INFO, _TRACKS = 0x1549A966, 0x1654AE6B
# master elements inside Tracks, whose children are counted too
_TRACK_MASTERS = {0xAE, 0xE0, 0xE1, 0x6D80, 0x6240, 0x5034, 0x5035, 0xE2, 0xE3, 0xE4, 0xE9,
                  0x55B0, 0x55D0, 0x7670, 0x41E4, 0x6624, 0x7E5B, 0x7E7B}


def _ebml_vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int, int, bool]:
    """(value, length, all-ones) of the EBML variable-length integer at ``pos``."""
    if pos >= len(data) or data[pos] == 0:
        raise CorruptMedia("corrupt Matroska file: bad element header")
    length = 9 - data[pos].bit_length()
    if pos + length > len(data):
        raise CorruptMedia("truncated Matroska file")
    raw = int.from_bytes(data[pos:pos + length], "big")
    value = raw if keep_marker else raw & ((1 << (7 * length)) - 1)
    return value, length, raw & ((1 << (7 * length)) - 1) == (1 << (7 * length)) - 1


def _ebml_elements(data: bytes, start: int, end: int):
    """(id, start, body, end, unknown-size) of each element in data[start:end]."""
    pos, count = start, 0
    while pos < end:
        element, n, _ = _ebml_vint(data, pos, keep_marker=True)
        size, m, unknown = _ebml_vint(data, pos + n, keep_marker=False)
        body = pos + n + m
        element_end = end if unknown else body + size
        if element_end > end:
            raise CorruptMedia("truncated Matroska file: an element runs past the end")
        count += 1
        if count > MAX_ELEMENTS:
            raise CorruptMedia("unreadable Matroska file: too many elements")
        yield element, pos, body, element_end, unknown
        if unknown:
            return
        pos = element_end


def _matroska_header(data: bytes) -> bytes:
    """EBML header + a Segment holding only Info and Tracks."""
    elements = _ebml_elements(data, 0, len(data))
    first = next(elements, None)
    if first is None or first[0] != _EBML_HEADER:
        raise CorruptMedia("corrupt Matroska file: no EBML header")
    ebml = data[first[1]:first[3]]
    segment = next(elements, None)
    if segment is None or segment[0] != _SEGMENT:
        raise CorruptMedia("corrupt Matroska file: no segment")
    kept: dict[int, bytes] = {}
    for element, start, body, end, unknown in _ebml_elements(data, segment[2], segment[3]):
        if element in (_INFO, _TRACKS) and element not in kept:
            if unknown or end - start > MAX_HEADER_BYTES:
                raise CorruptMedia("unreadable Matroska file: track header too large")
            kept[element] = data[start:end]
            if element == _TRACKS:
                _count_ebml(data, body, end)
        if _TRACKS in kept and (_INFO in kept or element == _CLUSTER):
            break
    if _TRACKS not in kept:
        raise CorruptMedia("corrupt Matroska file: no track list")
    payload = kept.get(_INFO, b"") + kept[_TRACKS]
    size = (1 << 56 | len(payload)).to_bytes(8, "big")   # an 8-byte size vint
    return ebml + _SEGMENT.to_bytes(4, "big") + size + payload


def _count_ebml(data: bytes, start: int, end: int) -> None:
    count, stack = 0, [(start, end)]
    while stack:
        start, end = stack.pop()
        for element, _, body, element_end, _ in _ebml_elements(data, start, end):
            count += 1
            if count > MAX_HEADER_ELEMENTS:
                raise CorruptMedia("unreadable Matroska file: too many track elements")
            if element in _TRACK_MASTERS:
                stack.append((body, element_end))


def _riff_chunks(data: bytes, start: int, end: int, label: str):
    pos, count = start, 0
    while pos + 8 <= end:
        kind, size = struct.unpack("<4sI", data[pos:pos + 8])
        if pos + 8 + size > end:
            raise CorruptMedia(f"truncated {label} file: a chunk runs past the end")
        count += 1
        if count > MAX_ELEMENTS:
            raise CorruptMedia(f"unreadable {label} file: too many chunks")
        yield kind, pos, pos + 8, pos + 8 + size
        pos += 8 + size + (size & 1)


def _avi_header(data: bytes) -> bytes:
    """A RIFF AVI holding only its header list (hdrl)."""
    for kind, start, body, end in _riff_chunks(data, 12, len(data), "AVI"):
        if kind == b"LIST" and data[body:body + 4] == b"hdrl":
            if end - start > MAX_HEADER_BYTES:
                raise CorruptMedia("unreadable AVI file: header too large")
            count, stack = 0, [(body + 4, end)]
            while stack:
                inner_start, inner_end = stack.pop()
                for inner, _, inner_body, inner_stop in _riff_chunks(data, inner_start,
                                                                     inner_end, "AVI"):
                    count += 1
                    if count > MAX_HEADER_ELEMENTS:
                        raise CorruptMedia("unreadable AVI file: too many header chunks")
                    if inner == b"LIST":
                        stack.append((inner_body + 4, inner_stop))
            chunk = data[start:end]
            return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"AVI " + chunk
    raise CorruptMedia("corrupt AVI file: no header list")


def _flac_metadata(data: bytes) -> bytes:
    """'fLaC' and its metadata blocks, checked to be followed by audio frames."""
    start = _id3_end(data) if not data.startswith(b"fLaC") else 0
    pos, count = start + 4, 0
    while True:
        if pos + 4 > len(data):
            raise CorruptMedia("truncated FLAC file")
        last = data[pos] & 0x80
        pos += 4 + int.from_bytes(data[pos + 1:pos + 4], "big")
        count += 1
        if count > 1000:
            raise CorruptMedia("unreadable FLAC file: too many metadata blocks")
        if last:
            break
    if pos + 2 > len(data) or data[pos] != 0xFF or data[pos + 1] & 0xFE != 0xF8:
        raise CorruptMedia("corrupt FLAC file: no audio frames after its header")
    return data[start:pos]


# -- the real parses -----------------------------------------------------------

_PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP", "bmp": "BMP",
                "avif": "AVIF"}


def _probe_picture(data: bytes, key: str, max_pixels: int) -> Probe:
    from PIL import Image

    fmt = FORMATS[key]
    try:
        im = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[key]])
        width, height = im.size
    except Image.DecompressionBombError:
        raise MediaTooLarge(f"picture too large (more than {max_pixels} pixels)") from None
    except Exception:
        raise CorruptMedia(f"corrupt {fmt.label} picture") from None
    if width <= 0 or height <= 0:
        raise CorruptMedia(f"corrupt {fmt.label} picture: no size")
    if width * height > max_pixels:
        raise MediaTooLarge(f"picture too large ({width}x{height}; at most {max_pixels} pixels)")
    try:
        im.load()      # decode it all: a truncated or damaged picture fails here
        orientation = im.getexif().get(0x0112) if key in ("jpg", "webp", "png", "avif") else None
    except Exception:
        raise CorruptMedia(f"corrupt or truncated {fmt.label} picture") from None
    finally:
        im.close()
    if orientation in (5, 6, 7, 8):   # rotated a quarter turn when displayed
        width, height = height, width
    return Probe(fmt, width=width, height=height)


def _mutagen_length(data: bytes, cls, label: str) -> float:
    try:
        info = cls(io.BytesIO(data)).info
        return float(info.length)
    except Exception:
        raise CorruptMedia(f"corrupt {label} file") from None


def _probe_audio(data: bytes, key: str) -> Probe:
    fmt = FORMATS[key]
    if key == "mp3":
        from mutagen.mp3 import MPEGInfo

        start = _id3_end(data)
        _check_frames(data, start, _mp3_frame_length, "MP3")
        try:
            info = MPEGInfo(io.BytesIO(data), start)
            length, bitrate = float(info.length), int(info.bitrate or 0)
        except Exception:
            raise CorruptMedia("corrupt MP3 file") from None
        # a VBR header announces the frame count: a file cut short would
        # otherwise be named by the length it was meant to have
        if bitrate and (len(data) - start) * 8 < 0.5 * length * bitrate:
            raise CorruptMedia("truncated MP3 file: less audio than its header announces")
    elif key == "aac":
        from mutagen.aac import AACInfo

        _check_frames(data, _id3_end(data), _adts_frame_length, "AAC")
        try:
            length = float(AACInfo(io.BytesIO(data)).length)
        except Exception:
            raise CorruptMedia("corrupt AAC file") from None
    elif key == "wav":
        length = _wav_duration(data)
    elif key == "ogg":
        from mutagen.oggvorbis import OggVorbis

        length = _mutagen_length(data, OggVorbis, "Ogg Vorbis")
    elif key == "opus":
        from mutagen.oggopus import OggOpus

        length = _mutagen_length(data, OggOpus, "Ogg Opus")
    elif key == "flac":
        from mutagen.flac import FLAC

        length = _mutagen_length(_flac_metadata(data), FLAC, "FLAC")
    elif key in ("amr", "awb"):
        length = _amr_duration(data, wideband=key == "awb")
    else:
        raise UnsupportedMedia(f"{fmt.label} is not audio")
    return _audio_probe(fmt, length)


def _audio_probe(fmt: Format, length: float) -> Probe:
    if not math.isfinite(length) or length <= 0:
        raise CorruptMedia(f"{fmt.label} file has no audio (duration {length:g} s)")
    return Probe(fmt, duration=length)


def _probe_iso_audio(data: bytes) -> Probe:
    """An MPEG-4/3GPP file holding sound only (m4a, or an Android voice note)."""
    from mutagen.mp4 import MP4

    header = _iso_header(data)
    try:
        info = MP4(io.BytesIO(header)).info
    except Exception:
        raise CorruptMedia("corrupt MP4 audio file") from None
    if not info.codec:
        raise UnsupportedMedia("this MP4 file has no audio track")
    fmt = AUDIO_3GP if data[8:11] in (b"3gp", b"3g2") else FORMATS["m4a"]
    return _audio_probe(fmt, float(info.length))


def _video_dimensions(data: bytes, key: str) -> tuple[Format, int, int] | None:
    """(format, width, height) of a video container's picture track, or None if it has none."""
    from hachoir.metadata import extractMetadata
    from hachoir.metadata.metadata import MultipleMetadata
    from hachoir.parser.container import MkvFile, MP4File, RiffFile
    from hachoir.stream import InputIOStream

    parser_class = {"isobmff": MP4File, "matroska": MkvFile, "avi": RiffFile}[key]
    label = {"isobmff": "MP4", "matroska": "Matroska", "avi": "AVI"}[key]
    header = {"isobmff": _iso_header, "matroska": _matroska_header, "avi": _avi_header}[key](data)
    try:
        stream = InputIOStream(io.BytesIO(header), source="<upload>", tags=[])
        parser = parser_class(stream, validate=True)
        metadata = extractMetadata(parser)
    except Exception:
        raise CorruptMedia(f"corrupt {label} video") from None
    if metadata is None:
        raise CorruptMedia(f"corrupt {label} video: unreadable")

    def dims(md):
        if md.has("width") and md.has("height"):
            return int(md.get("width")), int(md.get("height"))
        if isinstance(md, MultipleMetadata):
            for group in md.iterGroups():
                found = dims(group)
                if found:
                    return found
        return None

    try:
        found = dims(metadata)
    except Exception:
        raise CorruptMedia(f"corrupt {label} video") from None
    if key == "isobmff":
        brand = data[8:12]
        fmt = FORMATS["mov" if brand == b"qt  " else "3gp" if brand[:3] in (b"3gp", b"3g2")
                      else "mp4"]
    elif key == "matroska":
        fmt = FORMATS["webm" if b"webm" in data[:64] else "mkv"]
    else:
        fmt = FORMATS[key]
    if found is None:
        return None
    width, height = found
    if not (0 < width <= MAX_DIMENSION and 0 < height <= MAX_DIMENSION):
        raise CorruptMedia(f"corrupt {fmt.label} video: impossible size {width}x{height}")
    return fmt, width, height


def _probe_video(data: bytes, key: str) -> Probe:
    found = _video_dimensions(data, key)
    if found is None:
        raise UnsupportedMedia("this file has no video track")
    fmt, width, height = found
    return Probe(fmt, width=width, height=height)


def probe(data: bytes, kind: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Probe:
    """
    Read what ``data`` really is and check it is acceptable for ``kind``.

    Returns a :class:`Probe`; raises a :class:`MediaRefused` subclass with a
    message fit for the client otherwise. Blocking: call it off the reactor.
    """
    try:
        accepted = KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown upload kind {kind!r}") from None
    if not data:
        raise EmptyUpload()
    key = _sniff(data)
    if key is None:
        raise UnsupportedMedia(f"unsupported file type: expected {_accepted(accepted)}")
    if key == "heif":
        raise UnsupportedMedia("HEIF/HEIC pictures are not supported: send JPEG or PNG")
    if key == "isobmff":
        if "video" in accepted:
            return _probe_video(data, key)
        if _video_dimensions(data, key) is not None:
            raise UnsupportedMedia(f"this is a video; expected {_accepted(accepted)}")
        if "audio" not in accepted:
            raise UnsupportedMedia(f"this is MP4 audio; expected {_accepted(accepted)}")
        return _probe_iso_audio(data)
    media = FORMATS[key].media if key in FORMATS else "video"
    if media not in accepted:
        label = FORMATS[key].label if key in FORMATS else "WebM/Matroska"
        raise UnsupportedMedia(
            f"{label} {media} is not accepted here: expected {_accepted(accepted)}")
    if media == "picture":
        return _probe_picture(data, key, max_pixels)
    if media == "audio":
        return _probe_audio(data, key)
    return _probe_video(data, key)


# -- names and paths -------------------------------------------------------------

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,100}(\.[a-z0-9]{1,5})?$")


def upload_name(data: bytes, found: Probe) -> str:
    digest = hashlib.sha256(data).hexdigest()[:32]
    return f"{digest}-{found.suffix}.{found.format.ext}"


def _write_once(directory: pathlib.Path, name: str, data: bytes) -> None:
    """Write ``data`` as ``name`` atomically; a file of that name has the same bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    try:
        if path.stat().st_size == len(data):
            return
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=".up-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# -- group pictures ---------------------------------------------------------------

# WeChat-style: 1 tile alone, 2-4 on a 2x2 grid, 5-9 on a 3x3 grid; the
# first row takes the remainder, rows and partial rows are centred.
_PALETTE = ((0x5B, 0x8F, 0xF9), (0x61, 0xDD, 0xAA), (0xF6, 0xBD, 0x16), (0xE8, 0x68, 0x4A),
            (0x6D, 0xC8, 0xEC), (0x92, 0x70, 0xCA), (0xFF, 0x9D, 0x4D), (0x26, 0x9A, 0x99),
            (0xFF, 0x99, 0xC3), (0x7D, 0x8A, 0x9E))


def grid_layout(n: int, size: int = GRID_SIZE) -> list[tuple[int, int, int]]:
    """(x, y, side) of each of ``n`` (1..9) tiles on a ``size`` square."""
    n = max(1, min(GRID_MAX, n))
    cols = 1 if n == 1 else 2 if n <= 4 else 3
    gap = max(2, size // 50)
    side = (size - (cols + 1) * gap) // cols
    if n == 1:
        side = size - 2 * gap
    rows = -(-n // cols)
    first = n - (rows - 1) * cols
    top = (size - rows * side - (rows - 1) * gap) // 2
    boxes = []
    for row in range(rows):
        in_row = first if row == 0 else cols
        left = (size - in_row * side - (in_row - 1) * gap) // 2
        for i in range(in_row):
            boxes.append((left + i * (side + gap), top + row * (side + gap), side))
    return boxes


def placeholder_tile(ref: str, side: int):
    """A generated avatar for a member whose picture we do not hold."""
    from PIL import Image, ImageDraw

    seed = hashlib.sha256(ref.encode("utf-8", "replace")).digest()
    colour = _PALETTE[seed[0] % len(_PALETTE)]
    tile = Image.new("RGB", (side, side), colour)
    draw = ImageDraw.Draw(tile)
    light = tuple(min(255, c + (255 - c) * 3 // 5) for c in colour)
    r = side * 0.19
    cx, cy = side / 2, side * 0.38
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=light)
    draw.ellipse((side * 0.18, side * 0.62, side * 0.82, side * 1.25), fill=light)
    return tile


# -- the store --------------------------------------------------------------------

class MediaStore:
    """
    Uploaded files and composed pictures under ``<data_dir>/media``.

    ``blocking(fn, *args)`` runs ``fn`` in a worker thread and returns a
    Deferred (the composition root passes its bounded thread pool); at most
    ``concurrency`` media jobs hold a worker at once, so big uploads never
    starve password hashing of threads.

    Size limits: ``limits`` per endpoint kind (:data:`DEFAULT_LIMITS`), all
    capped by ``max_upload``, which is also video's by default;
    ``per_media`` (``--max-upload-audio/-picture/-video``) the largest file
    of each media whichever endpoint takes it (a picture posted to
    ``writev2`` is held to the picture limit; an avatar to the smaller of its
    own and the picture limit), at most ``max_upload``; ``None`` there keeps
    the default.
    """

    def __init__(self, data_dir, public_url: str, blocking, *, limits: dict | None = None,
                 max_upload: int | None = None, per_media: dict | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, concurrency: int = 2):
        self.directory = pathlib.Path(data_dir) / "media"
        self.public_url = public_url.rstrip("/")
        self.blocking = blocking
        self.limits = dict(DEFAULT_LIMITS)
        if max_upload is not None:     # --max-upload: the video limit, and a cap on all
            self.limits = {k: min(v, max_upload) for k, v in self.limits.items()}
            self.limits["video"] = max_upload
        given = {m: n for m, n in (per_media or {}).items() if n is not None}
        if max_upload is not None:
            given = {m: min(n, max_upload) for m, n in given.items()}
        #: the largest file of each media, whichever endpoint takes it (the
        #: picture default is writev2's, which took pictures and audio alike)
        self.per_media = {"audio": given.get("audio", self.limits["audio"]),
                          "picture": given.get("picture", self.limits["picture_or_audio"]),
                          "video": given.get("video", self.limits["video"])}
        self.limits["audio"] = self.per_media["audio"]
        self.limits["picture_or_audio"] = max(self.per_media["audio"], self.per_media["picture"])
        self.limits["avatar"] = min(self.limits["avatar"], self.per_media["picture"])
        self.limits["video"] = self.per_media["video"]
        self.limits.update(limits or {})
        self.max_pixels = max_pixels
        self.slots = defer.DeferredSemaphore(concurrency)   # shared by every media job

    # names, paths, URLs

    def url_for(self, name: str) -> str:
        return f"{self.public_url}/media/{name}"

    def path_for(self, name: str) -> pathlib.Path:
        """The file of a media name; refuses anything that is not a plain media name."""
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise InvalidInput("invalid media name")
        return self.directory / name

    def name_from_ref(self, ref: str) -> str | None:
        """The media name in a reference (our URL, ``/media/<name>``, or a bare name)."""
        if not ref:
            return None
        ref = ref.strip()
        path = urlsplit(ref).path if "/" in ref else ref
        if "/" in path:
            head, _, name = path.rpartition("/")
            if not head.endswith("/media") and head != "/media":
                return None
        else:
            name = path
        return name if NAME_RE.match(name) else None

    def limit_for(self, kind: str) -> int:
        return self.limits[kind]

    # uploads

    async def store_upload(self, data: bytes, kind: str) -> StoredMedia:
        """Check, name and store an upload of ``kind``; raises :class:`MediaRefused`."""
        if kind not in KINDS:
            raise ValueError(f"unknown upload kind {kind!r}")
        limit = self.limits[kind]
        if len(data) > limit:
            raise MediaTooLarge(f"file too large: {len(data)} bytes, at most {limit}")
        if not data:
            raise EmptyUpload()
        return await self.slots.run(self.blocking, self._store_upload, data, kind)

    def _store_upload(self, data: bytes, kind: str) -> StoredMedia:
        found = probe(data, kind, self.max_pixels)
        limit = self.per_media[found.media]
        if len(data) > limit:    # writev2 takes both: hold each to its own limit
            raise MediaTooLarge(f"{found.media} too large: {len(data)} bytes, at most {limit}")
        name = upload_name(data, found)
        _write_once(self.directory, name, data)
        return StoredMedia(name=name, url=self.url_for(name), path="/media/" + name,
                           content_type=found.format.content_type, media=found.media,
                           ext=found.format.ext, size=len(data), width=found.width,
                           height=found.height, seconds=found.seconds)

    # group pictures

    async def compose_grid(self, avatar_refs: list[str], key: str) -> str:
        """
        A group picture from up to nine avatars; returns its public URL.

        An avatar we store (our ``/media/`` URL or name) is drawn from disk;
        anything else (an external URL, an empty string) becomes a generated
        tile. The name is ``<key>_<8 hex of the picture's hash>.jpg`` (the
        document's ``26_144fab26.jpg``), so a new membership gives a new URL.
        """
        refs = [r if isinstance(r, str) else "" for r in list(avatar_refs)[:GRID_MAX]]
        safe_key = re.sub(r"[^A-Za-z0-9]", "", str(key))[:40] or "group"
        name = await self.slots.run(self.blocking, self._compose_grid, refs, safe_key)
        return self.url_for(name)

    def _load_tile(self, ref: str, side: int):
        from PIL import Image, ImageOps

        name = self.name_from_ref(ref)
        if name is not None:
            path = self.path_for(name)
            try:
                with Image.open(path, formats=list(_PIL_FORMATS.values())) as im:
                    if im.size[0] * im.size[1] <= self.max_pixels:
                        im.draft("RGB", (side * 2, side * 2))
                        im = ImageOps.exif_transpose(im)
                        if im.mode in ("RGBA", "LA", "P", "PA"):
                            rgba = im.convert("RGBA")
                            im = Image.new("RGB", rgba.size, (255, 255, 255))
                            im.paste(rgba, mask=rgba.getchannel("A"))
                        return ImageOps.fit(im.convert("RGB"), (side, side),
                                            Image.Resampling.LANCZOS)
            except Exception:
                pass   # not ours, gone, or not a picture: draw a placeholder
        return placeholder_tile(ref, side)

    def _compose_grid(self, refs: list[str], key: str) -> str:
        from PIL import Image

        refs = refs or [key]
        canvas = Image.new("RGB", (GRID_SIZE, GRID_SIZE), (0xDD, 0xDE, 0xE0))
        for ref, (x, y, side) in zip(refs, grid_layout(len(refs))):
            canvas.paste(self._load_tile(ref, side), (x, y))
        out = io.BytesIO()
        canvas.save(out, "JPEG", quality=88, optimize=True)
        data = out.getvalue()
        name = f"{key}_{hashlib.sha256(data).hexdigest()[:8]}.jpg"
        _write_once(self.directory, name, data)
        return name
