"""
Random and malformed frames at /entry: the server answers with error frames
or closes that one connection cleanly, never crashes, and two other users
keep chatting throughout.
"""

import pytest
import pytest_twisted
import treq
from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import defer, reactor
from twisted.internet.threads import blockingCallFromThread

from tests.conftest import blocking

_names = iter(range(10**9))

COMMANDS = ["text", "emotion", "picture", "audio", "video", "login", "logout", "heartbeat",
            "members", "records", "TEXT", "", "error", "x"]
REPLY_PREFIXES = ("error_", "login_", "logout_", "members_", "records_", "heartbeat_")
CLEAN_CLOSES = {1000, 1002, 1007, 1009, 4001, 4008}


def frames(ids):
    """Frames shaped like the dialect's, with random fields, plus plain noise."""
    field = st.one_of(st.text(max_size=30), st.sampled_from(ids + ["0", "-1", "007", ""]),
                      st.sampled_from(["unicast", "group", "_", "__", "ok"]))
    shaped = st.builds(lambda cmd, parts: "_".join([cmd] + parts),
                       st.sampled_from(COMMANDS), st.lists(field, max_size=7))
    text = st.one_of(shaped, st.text(max_size=200),
                     st.sampled_from(["login_", "records_1_", "text_1_x_group_",
                                      "_" * 50, "login_1_" + "t" * 3000]))
    as_bytes = text.map(lambda t: ("text", t.encode("utf-8")))
    noise = st.one_of(
        st.binary(max_size=300).map(lambda b: ("binary", b)),
        st.binary(min_size=1, max_size=50).map(lambda b: ("raw", b)),   # maybe bad UTF-8
        st.integers(16 * 1024 + 1, 40 * 1024).map(lambda n: ("text", b"text_1_" + b"x" * n)),
    )
    return st.lists(st.one_of(as_bytes, as_bytes, as_bytes, noise), min_size=1, max_size=8)


def run_in_reactor(coro_fn):
    return blockingCallFromThread(reactor, lambda: defer.ensureDeferred(coro_fn()))


async def make_user(server):
    accounts = server.core.accounts
    user = await accounts.register(password="secret1", username=f"z{next(_names)}")
    return str(user.id), (await accounts.issue_token(user.id)).token


async def recv_skipping_heartbeats(conn, timeout=5):
    while True:
        frame = await conn.recv(timeout)
        if not frame.startswith("heartbeat_"):
            return frame


# the WebSocket client draws its mask keys from `random` while hypothesis runs
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_random_frames_never_disturb_others(start_server, ws_connect):
    """Whatever one connection sends, the server stays up and others keep chatting."""
    server = await start_server(messages_per_second=10_000)
    (a, ta), (b, tb), (x, tx) = [await make_user(server) for _ in range(3)]
    group = await server.core.groups.create(a, "g", [b, x])
    conns = {}
    for uid, token in ((a, ta), (b, tb)):
        conns[uid] = await ws_connect(server.ws_url + "/entry")
        conns[uid].send(f"login_{uid}_{token}")
        assert await conns[uid].recv() == f"login_{uid}_ok"
    ids = [a, b, x, group.id]
    counter = iter(range(10**9))

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(frames(ids), st.booleans())
    def check(batch, log_in):
        async def one():
            conn = await ws_connect(server.ws_url + "/entry")
            if log_in:
                conn.send(f"login_{x}_{tx}")
                assert await conn.recv() == f"login_{x}_ok"
            for kind, data in batch:
                if conn.closed.called:
                    break
                if kind == "binary":
                    conn.protocol.sendMessage(data, isBinary=True)
                else:
                    conn.protocol.sendMessage(data, isBinary=False)
            # the others are not disturbed, both ways and in their group
            n = next(counter)
            conns[a].send(f"text_{b}_ping_{n}_unicast_e")
            frame = await recv_skipping_heartbeats(conns[b])
            while f"ping_{n}_" not in frame:      # x may have written to b meanwhile
                assert len(frame.split("_")) >= 7, frame
                frame = await recv_skipping_heartbeats(conns[b])
            conns[b].send(f"text_{group.id}_pong_{n}_group_e")
            frame = await recv_skipping_heartbeats(conns[a])
            while f"pong_{n}_" not in frame:
                assert len(frame.split("_")) >= 7, frame
                frame = await recv_skipping_heartbeats(conns[a])
            # what x got back is the dialect's own frames, or a clean close
            while conn.queue.pending:
                reply = await conn.recv()
                assert isinstance(reply, str)
                assert reply.startswith(REPLY_PREFIXES) or len(reply.split("_")) >= 7, reply
            if conn.closed.called:
                code, _ = await conn.closed
                assert code in CLEAN_CLOSES, code
            else:
                await conn.close()

        run_in_reactor(one)

    await blocking(check)
    assert (await treq.get(server.url + "/health")).code == 200
    for conn in conns.values():
        assert not conn.closed.called
