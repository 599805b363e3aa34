"""Document 004's frames, parsed and formatted as strings (no transport)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imserver.dialects.signal import codec
from imserver.dialects.signal.codec import (
    FrameError, Heartbeat, Login, Logout, Members, MembershipChange, Records, Send, parse_frame)


class ParseSendTests:
    def test_document_form(self):
        """The document's `text_<to>_<text>_unicast_<extension>` parses field by field."""
        assert parse_frame("text_10002_hello_unicast_eyJhIjoxfQ==") == Send(
            "text", "10002", "hello", "unicast", "eyJhIjoxfQ==")

    @pytest.mark.parametrize("kind", ["text", "emotion", "picture", "audio", "video"])
    def test_every_kind(self, kind):
        """Each of the five kinds is a send, unicast or group."""
        assert parse_frame(f"{kind}_7_x_group_e") == Send(kind, "7", "x", "group", "e")

    def test_payload_keeps_underscores(self):
        """Two fields from the left, two from the right: the middle is the payload."""
        req = parse_frame("text_42_a_b__c_d_unicast_ext")
        assert req == Send("text", "42", "a_b__c_d", "unicast", "ext")

    def test_payload_that_looks_like_fields(self):
        """A payload shaped like a whole frame stays one payload."""
        req = parse_frame("text_1_text_2_x_group_e_unicast_E")
        assert (req.payload, req.type, req.ext) == ("text_2_x_group_e", "unicast", "E")

    def test_url_payload(self):
        """Media URLs (with `_`, `:`, `?`) pass through unchanged."""
        url = "http://h/media/ab_cd-3.mp3?x=1&y=_"
        assert parse_frame(f"audio_5_{url}_unicast_e").payload == url

    def test_empty_extension_allowed(self):
        """The extension is opaque and may be empty."""
        assert parse_frame("text_5_hi_unicast_").ext == ""

    def test_unicode_payload(self):
        """Chinese text and emoji are payload like any other."""
        assert parse_frame("text_5_你好_世界 🎉_group_e").payload == "你好_世界 🎉"

    def test_leading_zeros_normalised(self):
        """`007` and `7` name the same user."""
        assert parse_frame("text_007_x_unicast_e").to == "7"

    @pytest.mark.parametrize("frame", [
        "text_5_hi_unicast",            # no extension field
        "text_5_unicast_e",             # no payload
        "text_5__unicast_e",            # empty payload
        "text_5_hi_broadcast_e",        # unknown type
        "text_5_hi_Unicast_e",          # types are lower case
        "text_abc_hi_unicast_e",        # to is not a number
        "text__hi_unicast_e",           # empty to
        "text_-5_hi_unicast_e",         # negative
        "text_1234567890123456789_hi_unicast_e",  # too long for an id
        "text_٣_hi_unicast_e",          # non-ASCII digits
        "text_5",
        "text_",
    ])
    def test_malformed(self, frame):
        """Frames missing a field or with a bad one are `malformed`."""
        with pytest.raises(FrameError) as e:
            parse_frame(frame)
        assert e.value.code == codec.MALFORMED


class ParseOtherTests:
    def test_login_with_token(self):
        """`login_<userid>_<token>`; the token may itself contain `_` and `-`."""
        assert parse_frame("login_10001_ab_c-d_e") == Login("10001", "ab_c-d_e")

    def test_login_bare(self):
        """The document's bare `login_<userid>` has no token."""
        assert parse_frame("login_10001") == Login("10001", None)
        assert parse_frame("login_10001_") == Login("10001", None)

    @pytest.mark.parametrize("frame", ["login_", "login_x_tok", "login__tok", "login"])
    def test_login_malformed(self, frame):
        """A login without a numeric user id is refused."""
        with pytest.raises(FrameError):
            parse_frame(frame)

    def test_logout(self):
        """`logout_<userid>`; the id is informative only."""
        assert parse_frame("logout_10001") == Logout("10001")
        assert parse_frame("logout_") == Logout("")

    def test_heartbeat(self):
        """A client heartbeat is accepted with any argument."""
        assert parse_frame("heartbeat_") == Heartbeat("")
        assert parse_frame("heartbeat_1_2_3") == Heartbeat("1_2_3")

    def test_members(self):
        """`members_<groupid>`."""
        assert parse_frame("members_10") == Members("10")
        with pytest.raises(FrameError):
            parse_frame("members_10_11")

    def test_records_seconds(self):
        """`records_<id>_<timet>`: after the last millisecond of that second's start."""
        assert parse_frame("records_10_1700000000") == Records(
            "10", "1700000000000-18446744073709551615")
        assert parse_frame("records_10_0").after == "0-18446744073709551615"

    def test_records_fraction_and_cursor(self):
        """Fractional seconds and `<ms>-<seq>` cursors page exactly."""
        assert parse_frame("records_10_1700000000.25").after.startswith("1700000000250-")
        assert parse_frame("records_10_1700000000250-3") == Records("10", "1700000000250-3")

    def test_records_with_type(self):
        """An optional fourth field says whether the target is a group or a user."""
        assert parse_frame("records_10_0_group").type == "group"
        assert parse_frame("records_10_0_unicast").type == "unicast"
        with pytest.raises(FrameError):
            parse_frame("records_10_0_room")

    @pytest.mark.parametrize("frame", ["records_10", "records_10_x", "records__5",
                                       "records_10_1-", "records_10_5_group_x"])
    def test_records_malformed(self, frame):
        """Records frames without a target or position are `malformed`."""
        with pytest.raises(FrameError) as e:
            parse_frame(frame)
        assert e.value.code == codec.MALFORMED

    @pytest.mark.parametrize("frame", ["hello_1", "TEXT_1_x_unicast_e", "ping_", "typing_5"])
    def test_unknown_command(self, frame):
        """A command the dialect does not have is `unknown`."""
        with pytest.raises(FrameError) as e:
            parse_frame(frame)
        assert e.value.code == codec.UNKNOWN_COMMAND

    @pytest.mark.parametrize("frame", ["", "   ", "{}", "12345"])
    def test_no_command(self, frame):
        """Frames without `_` are refused."""
        with pytest.raises(FrameError):
            parse_frame(frame)


class FormatTests:
    def test_receive_format_unicast(self):
        """Seven fields; for unicast the conversation is the sender."""
        data = {"id": "1700000000123-0", "k": "text", "f": "10001", "t": "10002",
                "y": "unicast", "p": "a_b", "e": "ZXh0"}
        assert codec.message_event_frame("user:10002", data) == (
            "text_10001_a_b_unicast_10001_1700000000_ZXh0")

    def test_receive_format_own_copy(self):
        """The sender's other devices see the recipient as the conversation."""
        data = {"id": "1700000000123-0", "k": "text", "f": "10001", "t": "10002",
                "y": "unicast", "p": "hi", "e": ""}
        assert codec.message_event_frame("user:10001", data) == (
            "text_10001_hi_unicast_10002_1700000000_")

    def test_receive_format_group(self):
        """For group messages the conversation is the group."""
        data = {"id": "1700000001999-4", "k": "picture", "f": "10001", "t": "7",
                "y": "group", "p": "http://x/a.jpg", "e": "e"}
        frame = codec.message_event_frame("group:7", data)
        assert frame == "picture_10001_http://x/a.jpg_group_7_1700000001_e"
        assert len(frame.split("_")) == 7

    def test_round_trip(self):
        """A sent frame's fields come back in the receive frame."""
        req = parse_frame("emotion_10002_[smile]_unicast_eyJ9")
        data = {"id": "5000-0", "k": req.kind, "f": "10001", "t": req.to, "y": req.type,
                "p": req.payload, "e": req.ext}
        assert codec.message_event_frame("user:10002", data) == (
            "emotion_10001_[smile]_unicast_10001_5_eyJ9")

    def test_conversation_for(self):
        """The same rule for stored history as for live frames."""
        assert codec.conversation_for("1", "2", "unicast", viewer="2") == "1"
        assert codec.conversation_for("1", "2", "unicast", viewer="1") == "2"
        assert codec.conversation_for("1", "9", "group", viewer="2") == "9"

    def test_own_frames_are_short(self):
        """Frames the document lacks have fewer than 7 parts: real clients ignore them."""
        frames = [codec.login_ok_frame(10001), codec.logout_ok_frame(10001),
                  codec.members_frame(10, [1, 2, 3]), codec.records_end_frame(10, 3, "5-0"),
                  codec.heartbeat_frame(1700000000),
                  codec.error_frame("notmember", "not a member_of_group 10")]
        assert frames[0] == "login_10001_ok"
        assert frames[2] == "members_10_1,2,3"
        assert frames[5] == "error_notmember_not a member of group 10"
        for f in frames:
            assert len(f.split("_")) < 7

    def test_event_output(self):
        """Messages become frames, membership changes become session actions."""
        assert codec.event_output("user:1", "group.joined",
                                  {"group_id": 7, "since": "5-0"}) == MembershipChange("7", True, "5-0")
        assert codec.event_output("user:1", "group.left", {"group_id": "7"}) == MembershipChange(
            "7", False)
        assert codec.event_output("user:1", "room.message", {}) is None


ids = st.integers(min_value=1, max_value=10**12).map(str)
exts = st.text(alphabet=st.characters(blacklist_characters="_"))


@given(kind=st.sampled_from(sorted(codec.KINDS)), to=ids, payload=st.text(min_size=1),
       type_=st.sampled_from(["unicast", "group"]), ext=exts)
def test_send_parses_any_payload(kind, to, payload, type_, ext):
    """Any payload (underscores, unicode, empty-looking fields) survives parsing."""
    req = parse_frame(f"{kind}_{to}_{payload}_{type_}_{ext}")
    assert req == Send(kind, to, payload, type_, ext)


@given(st.text())
def test_any_text_parses_or_raises_frame_error(text):
    """Random text is a request or a FrameError, never another exception."""
    try:
        parse_frame(text)
    except FrameError as e:
        assert e.code in {codec.MALFORMED, codec.UNKNOWN_COMMAND}
