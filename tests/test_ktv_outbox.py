"""
KTV slow clients: while a connection's transport is backed up, room status
pushes that a newer one supersedes are dropped before they are written;
replies, chat and device pushes all go out, in order. Time is a task.Clock,
the transport a stub whose queued bytes the test sets.
"""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet import defer, task

from imserver.bus import Event
from imserver.dialects.ktv.codec import KtvCodec
from imserver.dialects.ktv.ws import KtvProtocol, Outbox
from imserver.web.wsbase import SLOW_CLIENT_CODE


class Pipe:
    """The transport's queue as the outbox sees it: bytes the client has not read."""

    def __init__(self):
        self.waiting = 0
        self.written = []

    def queued(self):
        return self.waiting

    def write(self, wire):
        self.written.append(wire)
        self.waiting += len(wire)


def outbox(clock, pipe, overflows=None, **kw):
    return Outbox(clock, pipe.write, pipe.queued,
                  (lambda: overflows.append(True)) if overflows is not None else None,
                  behind=100, drain_every=0.5, **kw)


def test_a_client_keeping_up_gets_everything_at_once():
    """Below the threshold every write goes straight through and nothing waits."""
    clock, pipe = task.Clock(), Pipe()
    box = outbox(clock, pipe)
    for w in ("s1", "chat", "s2"):
        box.put(w, status=w.startswith("s"))
        pipe.waiting = 0
    assert pipe.written == ["s1", "chat", "s2"]
    assert len(box) == 0 and clock.getDelayedCalls() == []


def test_behind_only_the_newest_status_is_written():
    """Statuses queued behind a slow client collapse to the newest, after the chat and
    replies that came before it; all of it goes out once the client reads again."""
    clock, pipe = task.Clock(), Pipe()
    box = outbox(clock, pipe)
    pipe.waiting = 500                              # the client stopped reading
    for wire, status in (("status v1", True), ("chat a", False), ("status v2", True),
                         ("reply", False), ("status v3", True), ("chat b", False)):
        box.put(wire, status)
    assert pipe.written == [] and len(box) == 4 and box.superseded == 2
    clock.advance(0.5)
    assert pipe.written == []                       # still behind: still waiting
    pipe.waiting = 0                                # the client read it all
    clock.advance(0.5)
    assert pipe.written == ["chat a", "reply", "status v3", "chat b"]
    assert len(box) == 0 and clock.getDelayedCalls() == []


def test_drains_as_far_as_there_is_room():
    """Each drain writes while the transport has room, and comes back for the rest."""
    clock, pipe = task.Clock(), Pipe()
    box = outbox(clock, pipe)
    pipe.waiting = 101
    for i in range(3):
        box.put("x" * 60 + str(i))
    pipe.waiting = 0
    clock.advance(0.5)
    assert [w[-1] for w in pipe.written] == ["0", "1"]   # 61, then 122 > 100: stop
    pipe.waiting = 0
    clock.advance(0.5)
    assert [w[-1] for w in pipe.written] == ["0", "1", "2"]
    assert clock.getDelayedCalls() == []


def test_overflow_closes_and_forgets():
    """Past max_bytes waiting (transport and queue) the connection is closed, the queue
    dropped, and no timer is left behind."""
    clock, pipe, overflows = task.Clock(), Pipe(), []
    box = outbox(clock, pipe, overflows, max_bytes=1000)
    pipe.waiting = 900
    box.put("a" * 50)
    assert not overflows
    box.put("b" * 60)
    assert overflows == [True] and len(box) == 0 and clock.getDelayedCalls() == []


# -- the protocol and the session, wired ---------------------------------------------

class Transport:
    def __init__(self):
        self.dataBuffer = b""


def protocol(clock):
    deps = SimpleNamespace(
        clock=clock, codec=KtvCodec(), idle_timeout=0, sessions=set(), rooms=None,
        presence=SimpleNamespace(new_conn_id=lambda: "c" * 20,
                                 connect=lambda *a, **kw: defer.succeed(None),
                                 disconnect=lambda *a: defer.succeed(None)),
        bus=SimpleNamespace(unsubscribe=lambda topic, sink: None))
    p = KtvProtocol()
    p.factory = SimpleNamespace(deps=deps)
    p.transport = Transport()
    p.state = p.STATE_OPEN
    p.sent, p.closed_with = [], None
    p.sendMessage = lambda payload, isBinary=False: p.sent.append(payload.decode())
    p.sendPreparedMessage = lambda msg: p.sent.append(msg)
    p.sendClose = lambda code=None, reason=None: setattr(p, "closed_with", code)
    p.onOpen()
    p.session.room = "R"
    return p


def close(p):
    p.session.room = None      # as if it had left: no rooms core here
    p.onClose(True, 1000, "")
    assert p.session.closed and p not in p.factory.deps.sessions


def stage(version):
    return Event("room:R", "stage.changed", {"version": version}), f"status v{version}"


def chat(text):
    return Event("room:R", "room.message", {"room": "R", "id": f"1-{text}"}), f"chat {text}"


def test_ktv_session_coalesces_stage_pushes_for_a_backed_up_client():
    """Over a backed-up transport a KTV member gets chat and replies in order and only the
    latest of the stage statuses that piled up; a client keeping up gets each one."""
    clock = task.Clock()
    p = protocol(clock)
    p.deliver(*stage(1))
    assert p.sent == ["status v1"]
    p.transport.dataBuffer = b"x" * (128 * 1024)     # the client stopped reading
    p.deliver(*stage(2))
    p.deliver(*chat("a"))
    p.deliver(*stage(3))
    p.session._send('{"reply":1}')
    p.deliver(*stage(4))
    p.deliver(*stage(3))                               # older than one seen: never shown
    assert p.sent == ["status v1"] and p.outbox.superseded == 2
    p.transport.dataBuffer = b""
    clock.advance(p.outbox.drain_every)
    assert p.sent == ["status v1", "chat a", '{"reply":1}', "status v4"]
    close(p)
    assert [c for c in clock.getDelayedCalls() if c.active()] == []


def test_a_client_that_never_reads_is_closed():
    """When what waits passes the connection's limit, it is closed with 4008."""
    clock = task.Clock()
    p = protocol(clock)
    p.transport.dataBuffer = b"x" * (p.max_queue - 1000)
    for i in range(10):
        p.deliver(*chat("x" * 200 + str(i)))
    assert p.closed_with == SLOW_CLIENT_CODE
    close(p)
    assert [c for c in clock.getDelayedCalls() if c.active()] == []
