"""Document 001's codec: envelope, flags, input checks, shapes."""

from imserver.core.accounts import User
from imserver.core.friends import FriendRequest
from imserver.dialects.account import codec


def test_reply_envelope():
    """Every reply has result and message; extras are top-level."""
    assert codec.reply("0000") == {"result": "0000", "message": None}
    assert codec.reply("0000", "tok", user_id=7) == {"result": "0000", "message": "tok",
                                                     "user_id": 7}
    assert codec.Refused("0014", "not enough gold", gold=3).reply() == {
        "result": "0014", "message": "not enough gold", "gold": 3}


def test_codes_are_distinct_four_digit_strings():
    """Result codes are unique four-digit strings; the new ones avoid the document's."""
    codes = [v for k, v in vars(codec).items() if k.isupper() and isinstance(v, str)
             and len(v) == 4 and v.isdigit()]
    assert len(codes) == len(set(codes))
    assert {"0014", "0015", "0016"} <= set(codes)


def test_flags_select_operation():
    """A flag is set unless empty/0/false; the first one set wins."""
    assert codec.flag({"live": "1"}, "live")
    assert codec.flag({"live": "true"}, "live")
    for off in ("", "0", "false", " 0 "):
        assert not codec.flag({"live": off}, "live")
    assert not codec.flag({}, "live")
    assert codec.operation({"leave": "1"}, ("live", "leave")) == "leave"
    assert codec.operation({"x": "1"}, ("live", "leave")) is None
    assert "live=1" in codec.no_operation(("live", "leave")).message


def test_phone_and_password_rules():
    """11-digit phones; passwords of 8+ characters with letters and digits."""
    assert codec.is_phone("13800000000")
    for bad in ("1380000000", "138000000000", "1380000000a", "", "+8613800000"):
        assert not codec.is_phone(bad)
    assert codec.password_problem("abcd1234") is None
    assert codec.password_problem("密码abc12345") is None
    for bad in ("abc123", "abcdefgh", "12345678", "x1" * 100):
        assert codec.password_problem(bad)


def test_avatar_paths():
    """headImage is our path or an http(s) URL, never a script URL or control characters."""
    for ok in ("", "/media/abc-1x1.png", "http://127.0.0.1:8080/media/a.png", "https://x/y.jpg"):
        assert codec.avatar_problem(ok) is None
    for bad in ("javascript:alert(1)", "data:image/png;base64,xx", "/a\nb", "http://" + "x" * 600):
        assert codec.avatar_problem(bad)


def test_split_ref():
    """verifyId/objectId are "<phone>,<timestamp>" (a full-width comma too)."""
    assert codec.split_ref("13800000000,1700000000123") == ("13800000000", 1700000000123)
    assert codec.split_ref("13800000000，5") == ("13800000000", 5)
    assert codec.split_ref("13800000000") == ("13800000000", None)
    assert codec.split_ref("13800000000,abc") == ("13800000000", None)
    assert codec.split_ref("") == ("", None)


def test_shapes_never_leak_secrets():
    """User, friend and message shapes carry the 001 names and nothing secret."""
    a = User(id=10001, phone="13800000001", nickname="A", avatar="/media/a.png", gender="1")
    b = User(id=10002, phone=None, username="bee", nickname="B")
    info = codec.user_info(a)
    assert info == {"userId": "13800000001", "user_id": 10001, "nickname": "A",
                    "headImage": "/media/a.png", "gender": "1"}
    entry = codec.friend_entry(b, True, "rtmp://p/live/s")
    assert entry["userId"] == "10002" and entry["liveStatus"] == 1
    assert entry["playUrl"] == "rtmp://p/live/s"
    assert set(entry) >= {"userId", "headImage", "gender", "nickname", "liveStatus", "playUrl"}
    req = FriendRequest(requester=a.id, requestee=b.id, ts=123, accepted=False, mine=False)
    msg = codec.friend_message(req, a, b)
    assert msg["flag"] == 0 and msg["userId"] == "13800000001"
    assert msg["verifyId"] == "13800000001,123" and msg["objectId"] == "10002,123"
    mine = FriendRequest(requester=a.id, requestee=b.id, ts=123, accepted=True, mine=True)
    assert codec.friend_message(mine, a, b)["flag"] == 3
    assert codec.friend_message(mine, a, b)["userId"] == "10002"


from hypothesis import given, strategies as st  # noqa: E402


@given(st.text())
def test_codec_total_on_any_text(text):
    """The input checks answer for any text and never raise."""
    assert isinstance(codec.is_phone(text), bool)
    assert codec.password_problem(text) is None or isinstance(codec.password_problem(text), str)
    assert codec.avatar_problem(text) is None or isinstance(codec.avatar_problem(text), str)
    who, ts = codec.split_ref(text)
    assert isinstance(who, str) and (ts is None or ts >= 0)
    assert isinstance(codec.flag({"f": text}, "f"), bool)
