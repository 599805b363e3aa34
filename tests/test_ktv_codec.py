"""The 002 codec, pure: requests from text, replies and pushes to text."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from imserver.bus import Event
from imserver.core import stage as st
from imserver.core.stage import Entry, Snapshot
from imserver.dialects.ktv import codec
from imserver.dialects.ktv.codec import BadRequest, KtvCodec


def frame(**kw):
    base = {"fullname": "15608059720", "token": "t", "room": "R123"}
    base.update(kw)
    return json.dumps(base, ensure_ascii=False)


class DecodeTests:
    def test_common_fields(self):
        """action, fullname, token and room are read; numbers are accepted as text."""
        req = codec.decode(frame(action="status", fullname=15608059720, room=123))
        assert (req.action, req.fullname, req.token, req.room) == \
            ("status", "15608059720", "t", "123")

    def test_every_document_action_is_known(self):
        """Every action of document 002, and the original's close and reconnect, decodes."""
        extra = {"ask": {"ack": 1}, "sing": {"sid": "1", "duration": "245"},
                 "listen": {"sid": "1", "duration": 245}, "chat": {"content": "hi"},
                 "device": {"device": "video", "value": "0"}, "watch": {"vid": 3},
                 "set_duration": {"current": 60}}
        for action in ("join", "status", "ask", "cut", "boardcast", "sing", "del", "heart",
                       "chat", "history", "device", "listen", "del_music", "cut_music",
                       "cut_video", "watch", "set_duration", "close", "reconnect"):
            req = codec.decode(frame(action=action, **extra.get(action, {})))
            assert req.action == action

    def test_typed_arguments(self):
        """ack, duration, vid, current and device value get their types."""
        assert codec.decode(frame(action="ask", ack="0")).args == {"ack": False}
        assert codec.decode(frame(action="ask", ack=1)).args == {"ack": True}
        assert codec.decode(frame(action="sing", sid=7, duration="245")).args == \
            {"sid": "7", "duration": 245.0}
        assert codec.decode(frame(action="watch", vid=3)).args == {"vid": "3"}
        assert codec.decode(frame(action="set_duration", current="60.5")).args == \
            {"current": 60.5}
        assert codec.decode(frame(action="device", device="mic", value="1")).args == \
            {"device": "mic", "value": 1}

    @pytest.mark.parametrize("raw, message", [
        ("not json", codec.BAD_FRAME),
        ("[1, 2]", codec.BAD_FRAME),
        (b"\xff\xfe", codec.BAD_FRAME),
        (frame(action="dance"), codec.UNKNOWN_ACTION),
        (frame(action="status", fullname=None), "缺少参数: fullname"),
        (frame(action="status", fullname=[1]), "参数错误: fullname"),
        (frame(action="status", room=None), "缺少参数: room"),
        (frame(action="status", room={"a": 1}), codec.BAD_ROOM),
        (frame(action="status", room="r" * 101), codec.BAD_ROOM),
        (frame(action="ask"), "缺少参数: ack"),
        (frame(action="ask", ack=2), "参数错误: ack"),
        (frame(action="sing", sid="1"), "缺少参数: duration"),
        (frame(action="sing", sid="1", duration="-3"), "参数错误: duration"),
        (frame(action="sing", sid="1", duration="NaN"), "参数错误: duration"),
        (frame(action="chat", content="   "), "参数错误: content"),
        (frame(action="chat", content="x" * 5000), "参数错误: content"),
        (frame(action="set_duration", current="soon"), "参数错误: current"),
        (frame(action="status", token=["x"]), "参数错误: token"),
    ])
    def test_bad_frames(self, raw, message):
        """A bad frame is refused with a clear message naming the field."""
        with pytest.raises(BadRequest) as e:
            codec.decode(raw)
        assert e.value.message == message

    def test_bad_request_keeps_caller(self):
        """A refusal still knows the action and fullname, for caller_action/caller_fullname."""
        with pytest.raises(BadRequest) as e:
            codec.decode(frame(action="ask"))
        assert (e.value.action, e.value.fullname) == ("ask", "15608059720")

    def test_room_optional_for_heart_close_reconnect(self):
        """heart, close and reconnect may leave the room out."""
        for action in ("heart", "close", "reconnect"):
            assert codec.decode(frame(action=action, room=None)).room == ""

    @settings(max_examples=300, deadline=None)
    @given(hs.one_of(
        hs.text(max_size=200), hs.binary(max_size=200),
        hs.dictionaries(hs.sampled_from(["action", "fullname", "token", "room", "ack", "sid",
                                         "duration", "content", "vid", "current", "value",
                                         "device"]),
                        hs.one_of(hs.none(), hs.booleans(), hs.integers(), hs.floats(),
                                  hs.text(max_size=30), hs.lists(hs.integers(), max_size=3)),
                        max_size=8).map(json.dumps)))
    def test_anything_decodes_or_is_refused(self, raw):
        """Any input gives a Request or a BadRequest, never another exception."""
        try:
            req = codec.decode(raw)
        except BadRequest as e:
            assert isinstance(e.message, str) and e.message
        else:
            assert req.action in codec.ACTIONS and req.fullname


def snap(status=st.IDLE, item=None, start=1527574164.4, duration=86400.0, songs=(),
         members=({"nick": "15608059720", "fullname": "15608059720", "avatar": "a"},),
         version=3):
    return Snapshot(room="R123", version=version, status=status, start=start,
                    duration=duration, item=item, songs=tuple(songs), musics=(),
                    info={"members": list(members), "cover": "c.png"})


class EncodeTests:
    def test_idle_status_body_matches_document(self):
        """The idle body has the document's fields, strings and numbers where it shows them."""
        body = codec.status_body(snap(), 1527574165.09)
        assert body["count"] == 1 and body["status"] == "4" and body["room"] == "R123"
        assert body["current_time"] == 1527574165
        assert body["start_time"] == "1527574164" and body["end_time"] == "1527660564"
        assert body["duration"] == "86400" and body["sid"] == "0"
        assert body["author"] == body["name"] == body["nick"] == body["fullname"] == ""
        assert body["members"] == [{"nick": "15608059720", "fullname": "15608059720",
                                    "avatar": "a"}]
        assert body["songs"] == [] and body["cover"] == "c.png" and body["room_name"] == "R123"
        assert body["version"] == 3

    def test_singing_status_body(self):
        """While singing the body names the song and singer; songs list the queue."""
        item = Entry(fullname="13888888888", nick="皮皮", sid="1", name="dany", author="dany",
                     lrc="l", link="k", duration=245)
        queued = Entry(fullname="139", nick="b", sid="2", name="n", author="a", duration=3)
        body = codec.status_body(snap(st.SINGING, item, 1000.7, 245.0, [queued]), 1001)
        assert (body["status"], body["sid"], body["name"], body["author"]) == \
            ("1", "1", "dany", "dany")
        assert (body["nick"], body["fullname"], body["duration"]) == ("皮皮", "13888888888", "245")
        assert (body["start_time"], body["end_time"]) == ("1000", "1245")
        assert (body["lrc"], body["link"]) == ("l", "k")
        assert body["songs"] == [{"nick": "b", "fullname": "139", "author": "a", "name": "n",
                                  "sid": "2", "lrc": "", "link": "", "duration": "3"}]

    def test_envelope_and_caller_fields(self):
        """Direct replies carry caller_action and caller_fullname; timestamps are text."""
        req = codec.decode(frame(action="sing", sid="1", duration="3"))
        out = json.loads(codec.reply(req, {}, 1527915490.31))
        assert out == {"status": 0, "type": 1, "body": {}, "message": "success",
                       "timestamp": "1527915490.31", "caller_action": "sing",
                       "caller_fullname": "15608059720"}
        err = json.loads(codec.failure("不能重复排麦", 1527915707.61, "sing", "1"))
        assert (err["status"], err["body"], err["message"]) == (-1, {}, "不能重复排麦")
        assert err["timestamp"] == "1527915707.61" and err["caller_action"] == "sing"

    def test_stage_errors_have_document_messages(self):
        """Each stage refusal maps to its Chinese message."""
        assert codec.stage_message(st.AlreadyQueued()) == "不能重复排麦"
        assert codec.stage_message(st.StageBusy()) == "视频已经在播放中啦"
        assert codec.stage_message(st.BadSeek()) == "进度调整错误"
        for code in st._ERRORS:
            assert code in codec.STAGE_MESSAGES

    def test_events(self):
        """stage.changed, room.message (any dialect) and ktv.device become pushes."""
        c = KtvCodec()
        data = {"room": "R123", "version": 4, "status": 2, "start": 10.0, "duration": 15,
                "item": {"fullname": "1", "nick": "n", "sid": "5", "duration": 3},
                "songs": [], "musics": [], "info": {"members": []}, "reason": "sing"}
        push = json.loads(c.encode_event(Event("room:R123", "stage.changed", data, ts=12.5)))
        assert push["type"] == 1 and "caller_action" not in push
        assert (push["body"]["status"], push["body"]["fullname"], push["body"]["version"]) == \
            ("2", "1", 4)
        msg = {"room": "R123", "id": "1-0", "ts": 9.5, "text": "hello", "dialect": "chatroom",
               "sender": {"user_id": 3, "name": "bob", "phone": None, "avatar": ""},
               "extra": {}, "conn_id": "c"}
        chat = json.loads(c.encode_event(Event("room:R123", "room.message", msg, ts=9.5)))
        assert chat["type"] == 2 and chat["caller_action"] == "chat"
        assert chat["body"] == {"content": "hello", "nick": "bob", "fullname": "bob",
                                "action": "chat", "room": "R123"}
        dev = json.loads(c.encode_event(Event("room:R123", "ktv.device", {
            "room": "R123", "fullname": "1", "device": "video", "value": 0}, ts=1)))
        assert dev["body"] == {"device": "video", "fullname": "1", "room": "R123", "value": 0}
        assert c.encode_event(Event("room:R123", "room.member_joined", {}, ts=1)) is None
        assert c.encode_event(Event("user:1", "ktv.replaced", {}, ts=1)) is codec.CONTROL

    def test_history_entry(self):
        """History entries have the document's fields, the timestamp a number."""
        msg = {"room": "R123", "ts": 1528449835.640356, "text": "test",
               "sender": {"phone": "15608059720", "name": "x"},
               "extra": {"nick": "15608059720", "fullname": "15608059720"}}
        assert codec.history_entry(msg) == {
            "content": "test", "nick": "15608059720", "room": "R123", "action": "chat",
            "timestamp": 1528449835.640356, "fullname": "15608059720"}


@pytest.mark.parametrize("text, seconds", [
    ("13 min", 780), ("1 min", 60), ("90", 90), ("02:03", 123), ("1:00:00", 3600),
    ("45s", 45), ("2 hours", 7200), ("", None), ("soon", None), ("0", None), ("-5", None),
])
def test_video_seconds(text, seconds):
    """Catalogue durations ("13 min", "02:03", "90") become seconds."""
    assert codec.video_seconds(text) == seconds
