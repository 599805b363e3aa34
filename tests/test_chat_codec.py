"""The 000 and 003 codecs, driven with strings: decoding requests, rendering events."""

from __future__ import annotations

import json

import pytest

from imserver.bus import Event
from imserver.core.rooms import Member
from imserver.dialects.chat import codec as chat
from imserver.dialects.chatroom import codec as chatroom

ALICE = Member(user_id=12, name="alice", avatar="a.png", phone="138", username="alice",
               level="user")
GUEST = Member.guest()


def joined(member, room="1", first=False, conn="c1"):
    return {"room": room, "conn_id": conn, "member": member.to_dict(), "dialect": "chatroom",
            "created": first, "first": first, "population": 1, "rebind": False,
            "previous": None}


def left(member, reason, room="1"):
    return {"room": room, "conn_id": "c1", "member": member.to_dict(), "dialect": "chat",
            "reason": reason, "population": 0}


def message(text, room="1", sender=ALICE):
    return {"room": room, "id": "1-0", "ts": 1.0, "sender": sender.to_dict(), "text": text,
            "dialect": "ktv", "conn_id": "c9", "extra": {"fullname": "138"}}


class ChatCodecTests:
    def test_decode_keeps_data_as_sent(self):
        """Object, string or missing data are all accepted; fields read as text."""
        req = chat.decode('{"type":"send","data":{"user_id":5,"message":"hi"}}')
        assert req.type == "send" and req.field("user_id") == "5"
        assert chat.decode('{"type":"onlineaccount","data":""}').data == ""
        req = chat.decode(b'{"type":"ping","status":1}')
        assert req.type == "ping" and req.data is None and req.field("x") == ""

    @pytest.mark.parametrize("bad", ["", "x", "[]", '{"data":{}}', '{"type":""}',
                                     '{"type":5}', b"\xff", "[" * 5000 + "]" * 5000])
    def test_decode_refuses_untyped_frames(self, bad):
        """Anything but a JSON object with a text type is a DecodeError."""
        with pytest.raises(chat.DecodeError):
            chat.decode(bad)

    def test_envelope(self):
        """Replies have exactly type, errCode, info, data (an empty list by default)."""
        assert json.loads(chat.frame("changeroom")) == {"type": "changeroom", "errCode": 0,
                                                        "info": "", "data": []}
        assert json.loads(chat.bad_params("login", [("username", "用户名不存在")])) == {
            "type": "login", "errCode": 1, "info": "参数错误！",
            "data": [["username", "用户名不存在"]]}
        assert json.loads(chat.ping()) == {"type": "ping", "errCode": 0}

    def test_room_ids(self):
        """Numeric room names are numbers on the wire; others stay text."""
        assert chat.room_id("1") == 1 and chat.room_id("R1") == "R1"
        assert chat.room_id("007") == "007"

    def test_sessions(self):
        """A guest is {room_id, level}; a user adds username and user_id."""
        assert chat.session(GUEST, "1") == {"room_id": 1, "level": "guest"}
        assert chat.session(ALICE, "2") == {"username": "alice", "user_id": 12, "room_id": 2,
                                            "level": "user"}

    def test_join_renders_online_for_users_only(self):
        """member_joined -> online with the session; guests' joins are silent."""
        assert json.loads(chat.render_event("room.member_joined", joined(ALICE))) == {
            "type": "online", "errCode": 0, "info": "",
            "data": {"username": "alice", "user_id": 12, "room_id": 1, "level": "user"}}
        assert chat.render_event("room.member_joined", joined(GUEST)) is None

    def test_leaves(self):
        """logout/leave -> unonline; close/timeout -> close (guest form: only room_id)."""
        for reason in ("logout", "leave"):
            assert json.loads(chat.render_event("room.member_left",
                                                left(ALICE, reason)))["type"] == "unonline"
        for reason in ("close", "timeout"):
            out = json.loads(chat.render_event("room.member_left", left(ALICE, reason)))
            assert out["type"] == "close" and out["data"]["user_id"] == 12
            out = json.loads(chat.render_event("room.member_left", left(GUEST, reason)))
            assert out == {"type": "close", "errCode": 0, "info": "", "data": {"room_id": 1}}
        assert chat.render_event("room.member_left", left(GUEST, "logout")) is None

    def test_message_renders_send_with_from(self):
        """room.message (from any dialect) -> send with the sender's session as from."""
        out = json.loads(chat.render_event("room.message", message("hi", room="5")))
        assert out == {"type": "send", "errCode": 0, "info": "", "data": {
            "room_id": 5, "user_id": "", "message": "hi",
            "from": {"username": "alice", "user_id": 12, "userid": 12, "room_id": 5,
                     "level": "user"}}}

    def test_private_renders_send_with_target(self):
        """chat.private -> send whose user_id is the recipient."""
        data = {"room": "1", "to": 40, "text": "psst", "sender": ALICE.to_dict()}
        out = json.loads(chat.render_event(chat.PRIVATE, data))
        assert out["data"]["user_id"] == 40 and out["data"]["from"]["user_id"] == 12

    def test_other_events_are_not_shown(self):
        """Events of other dialects render as nothing."""
        assert chat.render_event("signal.text", {}) is None

    def test_codec_prepares_once(self):
        """The bus codec hands the text to prepare() and returns its result."""
        prepared = []
        codec = chat.ChatCodec(lambda payload: prepared.append(payload) or "P")
        event = Event("room:1", "room.message", message("hi"))
        assert event.wire(codec) == "P" and event.wire(codec) == "P"
        assert len(prepared) == 1 and json.loads(prepared[0])["type"] == "send"


class ChatroomCodecTests:
    def test_decode_document_example(self):
        """The document's msg example decodes."""
        p = chatroom.decode(json.dumps({"type": "msg", "data": {
            "user": {"user_name": "test", "user_avatar": ""}, "room_name": "TEST",
            "msg": "hello"}}))
        assert (p.type, p.room_name, p.user_name, p.msg, p.token) == (
            "msg", "TEST", "test", "hello", "")

    def test_token_in_data_or_top_level(self):
        """data.token is read, and a top-level token too."""
        assert chatroom.decode('{"type":"join","data":{"room_name":"R","token":"t"}}').token == "t"
        assert chatroom.decode('{"type":"join","token":"u","data":{"room_name":"R"}}').token == "u"

    @pytest.mark.parametrize("frame,error", [
        ("nope", "invalid message"),
        ('{"data":{}}', "invalid message"),
        ('{"type":"join"}', "invalid message"),
        ('{"type":"user","data":{}}', "illegal type"),
        ('{"type":"error","data":{}}', "illegal type"),
        ('{"type":"join","data":[]}', "invalid data"),
        ('{"type":"join","data":{"user":{}}}', "invalid data"),
        ('{"type":"join","data":{"room_name":"R","user":"x"}}', "invalid data"),
        ('{"type":"join","data":{"room_name":"  "}}', "illegal data"),
        ('{"type":"msg","data":{"room_name":"R","msg":""}}', "null message"),
        ('{"type":"msg","data":{"room_name":"R"}}', "null message"),
        ('{"type":"msg","data":{"room_name":"R","msg":[1]}}', "invalid msg"),
    ])
    def test_errors(self, frame, error):
        """Each malformed packet maps to its documented error text."""
        with pytest.raises(chatroom.PacketError) as e:
            chatroom.decode(frame)
        assert e.value.msg == error

    def test_error_packet_echoes_what_it_can(self):
        """An error packet has the packet shape, with the request's room and user."""
        with pytest.raises(chatroom.PacketError) as e:
            chatroom.decode('{"type":"msg","data":{"room_name":"R","user":{"user_name":"t"}}}')
        out = json.loads(chatroom.error(e.value.msg, e.value.room_name, e.value.user))
        assert out == {"type": "error", "data": {"user": {"user_name": "t", "user_avatar": ""},
                                                 "room_name": "R", "msg": "null message"}}

    def test_events(self):
        """Joins say create (first member) or join, leaves say leave, messages are msg."""
        out = json.loads(chatroom.render_event("room.member_joined", joined(ALICE, "R", True)))
        assert out == {"type": "user", "data": {
            "user": {"user_name": "alice", "user_avatar": "a.png"}, "room_name": "R",
            "msg": "create"}}
        out = json.loads(chatroom.render_event("room.member_joined", joined(ALICE, "R")))
        assert out["data"]["msg"] == "join"
        out = json.loads(chatroom.render_event("room.member_left", left(ALICE, "timeout", "R")))
        assert out["data"]["msg"] == "leave"
        assert chatroom.render_event("room.member_joined", joined(GUEST)) is None
        out = json.loads(chatroom.render_event("room.message", message("yo", "R", GUEST)))
        assert out == {"type": "msg", "data": {"user": {"user_name": "",
                                                        "user_avatar": "default"},
                                               "room_name": "R", "msg": "yo"}}
