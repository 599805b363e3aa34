"""
Per-media upload limits: ``--max-upload-audio``, ``--max-upload-picture``,
``--max-upload-video``, checked against ``--max-upload`` when read and held
by the media store whichever endpoint a file arrives at.
"""

from __future__ import annotations

import io
import json

import pytest
import pytest_twisted
import treq
from twisted.internet import threads

import media_samples as samples
from imserver.config import Config, ConfigError, resolve
from imserver.core.media import MB, MediaStore, MediaTooLarge
from imserver.tap import Options


def blocking(fn, *args):
    return threads.deferToThread(fn, *args)


# -- settings -----------------------------------------------------------------------

def test_defaults_are_todays_limits():
    """Unset, the three settings leave every endpoint at its old limit."""
    c = resolve({}, environ={})
    assert (c.max_upload_audio, c.max_upload_picture, c.max_upload_video) == (None, None, None)
    media = MediaStore("/nonexistent", "http://x", blocking, max_upload=c.max_upload,
                       per_media={"audio": None, "picture": None, "video": None})
    assert media.limits == {"audio": 10 * MB, "picture_or_audio": 10 * MB,
                            "video": 20 * MB, "avatar": 5 * MB}
    small = MediaStore("/nonexistent", "http://x", blocking, max_upload=5000,
                       per_media={"audio": None, "picture": None, "video": None})
    assert set(small.limits.values()) == {5000}


def test_given_on_every_channel(tmp_path):
    """Command line, environment and config file all set them."""
    o = Options()
    o.parseOptions(["--max-upload-audio", "2000000", "--max-upload-video", "30000000",
                    "--max-upload", "40000000"])
    assert (o.config.max_upload_audio, o.config.max_upload_video) == (2_000_000, 30_000_000)
    c = resolve({}, environ={"IMSERVER_MAX_UPLOAD_PICTURE": "123456"})
    assert c.max_upload_picture == 123456
    f = tmp_path / "im.toml"
    f.write_text("max-upload-video = 1000000\n")
    assert resolve({}, environ={}, config_file=str(f)).max_upload_video == 1_000_000


@pytest.mark.parametrize("name", ["max_upload_audio", "max_upload_picture",
                                  "max_upload_video"])
def test_above_max_upload_is_refused(name):
    """A per-media limit over --max-upload (which the server would never read) is an error."""
    option = "--" + name.replace("_", "-")
    with pytest.raises(ConfigError) as e:
        resolve({name: ["30000000"]}, environ={})
    assert option in str(e.value) and "--max-upload" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError):
        Config(max_upload=1000, **{name: 1001}).check()
    assert getattr(Config(max_upload=1000, **{name: 1000}).check(), name) == 1000
    with pytest.raises(ConfigError, match=option):
        resolve({name: ["0"]}, environ={})


# -- the media store ---------------------------------------------------------------------

def test_endpoint_limits_follow_the_media_limits():
    """writev1 = audio, writev3 = video, writev2 = the larger of picture and audio,
    the avatar = the smaller of its own and the picture limit."""
    media = MediaStore("/nonexistent", "http://x", blocking, max_upload=20 * MB,
                       per_media={"audio": 3 * MB, "picture": 1 * MB, "video": 7 * MB})
    assert media.limits == {"audio": 3 * MB, "picture_or_audio": 3 * MB, "video": 7 * MB,
                            "avatar": 1 * MB}
    capped = MediaStore("/nonexistent", "http://x", blocking, max_upload=2 * MB,
                        per_media={"picture": 8 * MB})
    assert capped.per_media["picture"] == 2 * MB


@pytest_twisted.ensureDeferred
async def test_writev2_holds_each_media_to_its_own_limit(tmp_path):
    """writev2 takes audio up to the audio limit and pictures up to the picture limit."""
    wav = samples.wav(seconds=1)
    small, bigger = sorted([samples.picture("PNG", (320, 240)),
                            samples.picture("JPEG", (320, 240))], key=len)
    assert len(small) < len(bigger) < len(wav)
    media = MediaStore(tmp_path, "http://x", blocking,
                       per_media={"audio": len(wav), "picture": len(small)})
    assert media.limit_for("picture_or_audio") == len(wav)
    assert (await media.store_upload(wav, "picture_or_audio")).media == "audio"
    assert (await media.store_upload(small, "picture_or_audio")).media == "picture"
    with pytest.raises(MediaTooLarge, match=f"picture too large: .* at most {len(small)}"):
        await media.store_upload(bigger, "picture_or_audio")
    with pytest.raises(MediaTooLarge):
        await media.store_upload(bigger, "avatar")


# -- end to end ------------------------------------------------------------------------------

async def post_file(server, path, data, token):
    r = await treq.post(server.url + path, data={"token": token},
                        files={"file": ("f.bin", "application/octet-stream", io.BytesIO(data))})
    return r.code, json.loads(await r.text("utf-8"))


@pytest_twisted.ensureDeferred
async def test_the_server_applies_the_settings(start_server):
    """With --max-upload-audio 50000, audio over it is refused (-7, 413) at writev1 and
    writev2, while a picture still goes in at writev2."""
    server = await start_server(max_upload_audio=50_000)
    user = await server.core.accounts.register(phone="13800000011", password="secret12")
    token = (await server.core.accounts.issue_token(user.id)).token
    big = samples.wav(seconds=5)      # 80 kB
    for path in ("/upload/writev1", "/upload/writev2"):
        code, body = await post_file(server, path, big, token)
        assert (code, body["code"]) == (413, -7) and "50000" in body["message"], path
    code, body = await post_file(server, "/upload/writev2", samples.picture("PNG"), token)
    assert (code, body["code"]) == (200, 0)
    code, body = await post_file(server, "/upload/writev1", samples.wav(seconds=1), token)
    assert (code, body["code"]) == (200, 0)
