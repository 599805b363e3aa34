"""
A fast path for the frames a chat client sends most: whole masked text frames.

Autobahn parses every incoming frame in pure Python through a dozen hooks
(frame begin, data, end, message begin, end, a UTF-8 validator and an XOR
masker object per frame), and its ``dataReceived`` formats a debug line
each time whether or not debug logging is on. For a short chat message that
costs more than everything the server then does with it.

:class:`FastTextFrames` is a mixin for an Autobahn server protocol (put it
before ``WebSocketServerProtocol`` in the bases). When the connection is
open and Autobahn holds no partial frame or message, it takes every complete
frame at the start of the received bytes that is

- final, text, without reserved bits, masked,
- at most ``maxFramePayloadSize`` long (and, with a 16-bit length, minimally
  encoded), and
- valid UTF-8,

unmasks it with one integer XOR and calls ``onMessage(payload, False)``,
exactly what Autobahn would have called. The first byte that does not start
such a frame, and everything after it, goes to Autobahn unchanged, so
control frames, binary and fragmented messages, bad UTF-8 and protocol
violations take Autobahn's path and get its answers (close codes 1002,
1007, 1009…).
"""

from __future__ import annotations

from autobahn.websocket.protocol import WebSocketProtocol

_OPEN = WebSocketProtocol.STATE_OPEN


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` repeated (RFC 6455, 5.3)."""
    n = len(payload)
    if not n:
        return b""
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        n, "little")


class FastTextFrames:
    """Mixin: complete masked text frames go straight to ``onMessage``."""

    def dataReceived(self, data: bytes) -> None:
        # Autobahn's Twisted adapter formats a debug line here on every read
        self._dataReceived(data)

    def _dataReceived(self, data: bytes) -> None:
        if (self.state != _OPEN or self.data or self.current_frame is not None
                or self.inside_message):
            super()._dataReceived(data)
            return
        limit = self.maxFramePayloadSize or 0x7FFFFFFFFFFFFFFF
        end = len(data)
        i = 0
        while i + 6 <= end:
            if data[i] != 0x81:               # FIN, no RSV bits, opcode 1 (text)
                break
            length = data[i + 1]
            if length < 0x80:                 # not masked
                break
            length &= 0x7F
            if length < 126:
                start = i + 2
            elif length == 126:
                if i + 4 > end:
                    break
                length = (data[i + 2] << 8) | data[i + 3]
                if length < 126:              # not minimal: Autobahn refuses it
                    break
                start = i + 4
            else:                             # 64-bit lengths are never chat
                break
            stop = start + 4 + length
            if stop > end or length > limit:
                break
            payload = unmask(data[start + 4:stop], data[start:start + 4])
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                break                         # Autobahn closes with 1007
            i = stop
            self.onMessage(payload, False)
            if self.state != _OPEN:
                break                         # closing: the rest is Autobahn's
        if i < end:
            super()._dataReceived(data[i:] if i else data)
