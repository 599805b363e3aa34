"""
Real media files made on the spot for the media and upload tests.

Pictures come from Pillow, WAV from the ``wave`` module, and the compressed
audio and video kinds from the ffmpeg binary that the ``imageio-ffmpeg``
wheel bundles (a test dependency), so every sample is what a phone or a
browser would actually send. :func:`ffmpeg_sample` caches by arguments for
the test session.
"""

from __future__ import annotations

import functools
import io
import math
import os
import struct
import subprocess
import tempfile
import wave


def picture(fmt: str = "JPEG", size=(746, 750), colour=(200, 30, 40), exif_orientation=None) -> bytes:
    from PIL import Image

    im = Image.new("RGB", size, colour)
    # some detail, so the encoders have something to encode
    for x in range(0, size[0], 7):
        im.putpixel((x, (x * 3) % size[1]), (0, 0, 0))
    out = io.BytesIO()
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    im.save(out, fmt, **kwargs)
    return out.getvalue()


def wav(seconds: float = 3.0, rate: int = 8000) -> bytes:
    frames = int(seconds * rate)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 6)))
                               for i in range(frames)))
    return out.getvalue()


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.lru_cache(maxsize=None)
def ffmpeg_sample(ext: str, *args: str) -> bytes:
    """Run ffmpeg with ``args`` (inputs and codecs) into a file of ``ext``; its bytes."""
    with tempfile.TemporaryDirectory(prefix="imserver-media-") as tmp:
        path = os.path.join(tmp, "out." + ext)
        subprocess.run([ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", *args, path],
                       check=True, timeout=60)
        with open(path, "rb") as f:
            return f.read()


def tone(seconds: int = 3) -> tuple[str, ...]:
    return ("-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}")


def pattern(size: str = "64x48", seconds: int = 1) -> tuple[str, ...]:
    return ("-f", "lavfi", "-i", f"testsrc=size={size}:rate=10:duration={seconds}")


def mp3(seconds: int = 3) -> bytes:
    return ffmpeg_sample("mp3", *tone(seconds), "-c:a", "libmp3lame", "-b:a", "32k")


def m4a(seconds: int = 3) -> bytes:
    return ffmpeg_sample("m4a", *tone(seconds), "-c:a", "aac")


def amr(seconds: int = 3) -> bytes:
    return ffmpeg_sample("amr", *tone(seconds), "-ar", "8000", "-ac", "1",
                         "-c:a", "libopencore_amrnb", "-b:a", "12.2k")


def ogg(seconds: int = 3) -> bytes:
    return ffmpeg_sample("ogg", *tone(seconds), "-c:a", "libvorbis")


def opus(seconds: int = 3) -> bytes:
    return ffmpeg_sample("opus", *tone(seconds), "-c:a", "libopus")


def flac(seconds: int = 3) -> bytes:
    return ffmpeg_sample("flac", *tone(seconds), "-c:a", "flac")


def aac(seconds: int = 3) -> bytes:
    return ffmpeg_sample("aac", *tone(seconds), "-c:a", "aac")


def mp4(size: str = "64x48", seconds: int = 1, with_audio: bool = False) -> bytes:
    if with_audio:
        return ffmpeg_sample("mp4", *pattern(size, seconds), *tone(seconds), "-shortest",
                             "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac")
    return ffmpeg_sample("mp4", *pattern(size, seconds), "-c:v", "libx264", "-pix_fmt", "yuv420p")


def video(ext: str, size: str = "64x48") -> bytes:
    codec = {"mp4": "libx264", "mov": "libx264", "3gp": "libx264", "mkv": "libx264",
             "webm": "libvpx", "avi": "mpeg4"}[ext]
    extra = ("-pix_fmt", "yuv420p") if codec == "libx264" else ()
    return ffmpeg_sample(ext, *pattern(size), "-c:v", codec, *extra)
