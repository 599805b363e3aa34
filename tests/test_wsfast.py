"""
The fast path for text frames (imserver.web.wsfast) against Autobahn itself:
for any sequence of frames, valid or not, cut into any chunks, a protocol
with the fast path hands the application the same messages, writes the same
bytes back (pongs, close frames with their codes) and ends in the same state
as plain Autobahn.
"""

import os
import struct

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from hypothesis import given, settings, strategies as st
from twisted.internet.testing import StringTransport

from imserver.web.wsfast import FastTextFrames, unmask

HANDSHAKE = (b"GET /entry HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             b"Sec-WebSocket-Version: 13\r\n\r\n")
LIMIT = 1000


class Transport(StringTransport):
    def unregisterProducer(self):
        # Autobahn unregisters on close whether or not a producer was registered
        self.producer = None


class Plain(WebSocketServerProtocol):
    def onConnect(self, request):
        self.messages = []

    def onMessage(self, payload, isBinary):
        self.messages.append((payload, isBinary))
        if payload == b"bye":
            self.sendClose(1000, "bye")
        elif payload == b"echo" and self.state == self.STATE_OPEN:
            self.sendMessage(b"echoed")


class Fast(FastTextFrames, Plain):
    pass


def opened(protocol_class):
    factory = WebSocketServerFactory("ws://localhost/entry")
    factory.protocol = protocol_class
    factory.setProtocolOptions(maxFramePayloadSize=LIMIT, maxMessagePayloadSize=LIMIT,
                               openHandshakeTimeout=0, closeHandshakeTimeout=0,
                               failByDrop=False)
    proto = factory.buildProtocol(None)
    transport = Transport()
    proto.makeConnection(transport)
    proto.dataReceived(HANDSHAKE)
    assert proto.state == proto.STATE_OPEN
    transport.clear()
    return proto, transport


def frame(payload: bytes, opcode=1, fin=True, masked=True, rsv=0, mask=None, long16=False):
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    bit = 0x80 if masked else 0
    if n < 126 and not long16:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = mask or os.urandom(4)
    return head + mask + unmask(payload, mask)


def run(protocol_class, chunks):
    proto, transport = opened(protocol_class)
    for chunk in chunks:
        proto.dataReceived(chunk)
    return proto.messages, transport.value(), proto.state


def test_unmask_matches_the_rfc_example():
    # RFC 6455 5.7: a masked "Hello"
    assert unmask(bytes.fromhex("7f9f4d5158"), bytes.fromhex("37fa213d")) == b"Hello"
    assert unmask(b"", b"abcd") == b""


def test_text_frames_in_one_read_reach_on_message_in_order():
    data = b"".join(frame(f"text_2_m{i}_unicast_0".encode()) for i in range(50))
    messages, written, state = run(Fast, [data])
    assert messages == [(f"text_2_m{i}_unicast_0".encode(), False) for i in range(50)]
    assert written == b"" and state == Fast.STATE_OPEN


def test_a_frame_split_across_reads_and_control_frames_go_to_autobahn():
    data = frame(b"one") + frame(b"ping!", opcode=9) + frame(b"x" * 300) + frame(b"echo")
    assert run(Fast, [data[:5], data[5:17], data[17:]]) == run(Plain, [data[:5], data[5:17],
                                                                     data[17:]])
    messages, written, _ = run(Fast, [data])
    assert messages == [(b"one", False), (b"x" * 300, False), (b"echo", False)]
    assert written.startswith(b"\x8a\x05ping!")          # the pong, from Autobahn


def test_refusals_are_autobahns():
    bad_utf8 = frame(b"\xff\xfe")
    too_big = frame(b"y" * (LIMIT + 1))
    unmasked = frame(b"hello", masked=False)
    not_minimal = frame(b"short", long16=True)
    for bad in (bad_utf8, too_big, unmasked, not_minimal):
        fast = run(Fast, [frame(b"before") + bad + frame(b"after")])
        assert fast == run(Plain, [frame(b"before") + bad + frame(b"after")])
        assert fast[0] == [(b"before", False)]
        assert fast[2] != Fast.STATE_OPEN                 # closed with Autobahn's code


def frames():
    text = st.binary(max_size=300).map(
        lambda b: b.decode("utf-8", "replace").encode("utf-8")[:LIMIT])
    one = st.one_of(
        text.map(frame),
        text.map(frame), text.map(frame),
        st.just(frame(b"echo")),
        st.just(frame(b"bye")),
        st.binary(max_size=40).map(lambda b: frame(b, opcode=2)),
        st.binary(max_size=40).map(lambda b: frame(b)),                  # maybe bad UTF-8
        st.binary(max_size=20).map(lambda b: frame(b, opcode=9)),        # ping
        st.binary(max_size=20).map(lambda b: frame(b, opcode=10)),       # pong
        text.map(lambda b: frame(b, fin=False) + frame(b"tail", opcode=0)),  # fragmented
        text.map(lambda b: frame(b, fin=False)),                         # left open
        st.just(frame(b"", opcode=0)),                                   # stray continuation
        text.map(lambda b: frame(b, masked=False)),
        text.map(lambda b: frame(b, rsv=4)),
        st.integers(LIMIT - 2, LIMIT + 2).map(lambda n: frame(b"z" * n)),
        st.binary(max_size=8),                                           # noise
    )
    return st.lists(one, max_size=12).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(data=frames(), cuts=st.lists(st.integers(0, 4000), max_size=6))
def test_same_outcome_as_autobahn_for_any_frames_cut_anywhere(data, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in zip(points, points[1:]) if b > a]
    assert run(Fast, chunks) == run(Plain, chunks)
