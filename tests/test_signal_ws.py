"""Document 004 over real WebSocket connections to the real service."""

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from imserver.store import keys

from conftest import until

_names = iter(range(10**9))


async def make_user(server, **kw):
    """A registered user and a token (through the core: the login path is tested elsewhere)."""
    accounts = server.core.accounts
    user = await accounts.register(password="secret1", username=f"s{next(_names)}", **kw)
    token = await accounts.issue_token(user.id)
    return str(user.id), token.token


async def two_processes(start_server, users: int = 2):
    """Two imserver processes on one Redis, and users registered through the first."""
    one, two = await start_server(), await start_server()
    return one, two, [await make_user(one) for _ in range(users)]


async def login(ws_connect, url, uid, token, path="/entry"):
    conn = await ws_connect(url + path)
    conn.send(f"login_{uid}_{token}")
    assert await conn.recv() == f"login_{uid}_ok"
    return conn


async def online(ws_connect, server, n=1, **kw):
    out = []
    for _ in range(n):
        uid, token = await make_user(server, **kw)
        out.append((uid, await login(ws_connect, server.ws_url, uid, token)))
    return out


def fields(frame):
    """A receive frame's seven fields (payload may contain `_`)."""
    kind, sender, rest = frame.split("_", 2)
    payload, type_, conv, timet, ext = rest.rsplit("_", 4)
    return kind, sender, payload, type_, conv, int(timet), ext




def not_heartbeat(frame):
    return not frame.startswith("heartbeat_")


class DirectTests:
    @pytest_twisted.ensureDeferred
    async def test_exchange_both_ways_with_underscores(self, server, ws_connect):
        """Two users exchange text with `_` in the payload, in the receive format."""
        (a, ca), (b, cb) = await online(ws_connect, server, 2)
        ca.send(f"text_{b}_hello_from_a __ x_unicast_eyJzIjoxfQ==")
        frame = await cb.recv()
        kind, sender, payload, type_, conv, timet, ext = fields(frame)
        assert (kind, sender, payload, type_, conv, ext) == (
            "text", a, "hello_from_a __ x", "unicast", a, "eyJzIjoxfQ==")
        assert abs(timet - reactor.seconds()) < 5
        assert len(frame.split("_")) >= 7
        cb.send(f"emotion_{a}_[smile]_unicast_e")
        assert fields(await ca.recv())[:5] == ("emotion", b, "[smile]", "unicast", b)
        assert await ca.no_message(0.2) and await cb.no_message(0.05)

    @pytest_twisted.ensureDeferred
    async def test_other_devices_get_own_messages(self, server, ws_connect):
        """The sender's other devices get its message (conversation = recipient); the sender not."""
        a, token = await make_user(server)
        phone = await login(ws_connect, server.ws_url, a, token)
        tablet = await login(ws_connect, server.ws_url, a, token)
        (b, cb), = await online(ws_connect, server)
        phone.send(f"text_{b}_on my way_unicast_x")
        assert fields(await cb.recv())[:5] == ("text", a, "on my way", "unicast", a)
        assert fields(await tablet.recv())[:5] == ("text", a, "on my way", "unicast", b)
        assert await phone.no_message(0.2)

    @pytest_twisted.ensureDeferred
    async def test_every_device_of_the_recipient(self, server, ws_connect):
        """Each connection of a user receives every message."""
        b, token = await make_user(server)
        devices = [await login(ws_connect, server.ws_url, b, token) for _ in range(3)]
        (a, ca), = await online(ws_connect, server)
        ca.send(f"picture_{b}_http://h/media/x_1.jpg_unicast_e")
        for dev in devices:
            assert fields(await dev.recv())[2] == "http://h/media/x_1.jpg"

    @pytest_twisted.ensureDeferred
    async def test_offline_user_gets_everything_in_order_on_login(self, server, ws_connect, http):
        """Messages sent while a user is offline arrive right after their next login, in order."""
        b, token = await make_user(server)
        cb = await login(ws_connect, server.ws_url, b, token)
        (a, ca), (c, cc) = await online(ws_connect, server, 2)
        group = await server.core.groups.create(a, "g", [b, c])
        await cb.close()
        await until(lambda: _offline(server, b))
        sent = []
        for i in range(6):
            sender, conn = (a, ca) if i % 2 else (c, cc)
            if i % 3 == 2:
                conn.send(f"text_{group.id}_group {i}_group_e")
                sent.append(f"group {i}")
            else:
                conn.send(f"text_{b}_direct_{i}_unicast_e")
                sent.append(f"direct_{i}")
            # one process runs clients and server here: wait for the store
            # so that the order sent is the order stored
            await until(lambda: _count(server, b, [a, c], group.id, len(sent)))
        cb = await login(ws_connect, server.ws_url, b, token)
        got = [fields(await cb.recv())[2] for _ in sent]
        assert got == sent
        assert await cb.no_message(0.3)
        # live again: the next one arrives once
        ca.send(f"text_{b}_live_unicast_e")
        assert fields(await cb.recv())[2] == "live"

    @pytest_twisted.ensureDeferred
    async def test_unknown_user_refused(self, server, ws_connect):
        """A message to a user that does not exist gets the error frame."""
        (a, ca), = await online(ws_connect, server)
        ca.send("text_99999999_hello_unicast_e")
        assert (await ca.recv()).startswith("error_unknownuser_")


async def _offline(server, uid):
    return not await server.core.presence.is_online(uid)


async def _count(server, uid, peers, gid, n):
    st = server.core.store
    total = await st.execute("XLEN", keys.group_log(gid))
    for peer in peers:
        total += await st.execute("XLEN", keys.direct_log(uid, peer))
    return total >= n


class GroupTests:
    @pytest_twisted.ensureDeferred
    async def test_three_members_receive(self, server, ws_connect):
        """A group message reaches every other member, with the group as conversation."""
        members = await online(ws_connect, server, 3)
        (a, ca), (b, cb), (c, cc) = members
        group = await server.core.groups.create(a, "trio", [b, c])
        ca.send(f"text_{group.id}_hi all_group_ZQ==")
        for conn in (cb, cc):
            kind, sender, payload, type_, conv, _, ext = fields(await conn.recv())
            assert (kind, sender, payload, type_, conv, ext) == (
                "text", a, "hi all", "group", group.id, "ZQ==")
        assert await ca.no_message(0.2)

    @pytest_twisted.ensureDeferred
    async def test_messages_of_one_turn(self, server, ws_connect):
        """Group messages stored together reach each member once, in order, minus their own."""
        (a, ca), (b, cb), (c, cc) = await online(ws_connect, server, 3)
        group = await server.core.groups.create(a, "g", [b, c])
        messages = server.core.messages
        dialect = next(d for d in server.service.dialects if d.name == "signal")
        conn_of = {s.user_id: s.conn_id for s in dialect.sessions}
        ids = [messages.submit(a, "text", group.id, "group", "one", "", conn_of[a]),
               messages.submit(b, "text", group.id, "group", "two", "", conn_of[b]),
               messages.submit(a, "text", group.id, "group", "three", "", conn_of[a])]
        for d in ids:
            await d
        assert [fields(await cc.recv())[2] for _ in range(3)] == ["one", "two", "three"]
        assert [fields(await cb.recv())[2] for _ in range(2)] == ["one", "three"]
        assert fields(await ca.recv())[2] == "two"
        assert await ca.no_message(0.2) and await cb.no_message(0.05)

    @pytest_twisted.ensureDeferred
    async def test_non_member_refused_and_nobody_receives(self, server, ws_connect):
        """A non-member's group send gets `error_notmember` and reaches no one."""
        (a, ca), (b, cb), (x, cx) = await online(ws_connect, server, 3)
        group = await server.core.groups.create(a, "g", [b])
        cx.send(f"text_{group.id}_spam_group_e")
        assert (await cx.recv()).startswith("error_notmember_")
        cx.send("text_777777_spam_group_e")
        assert (await cx.recv()).startswith("error_unknowngroup_")
        assert await ca.no_message(0.3) and await cb.no_message(0.05)

    @pytest_twisted.ensureDeferred
    async def test_membership_changes_apply_at_once(self, server, ws_connect):
        """A connected user added to a group receives its next message; removed, no more."""
        (a, ca), (b, cb) = await online(ws_connect, server, 2)
        group = await server.core.groups.create(a, "g")
        await server.core.groups.add_members(a, group.id, [b])
        ca.send(f"text_{group.id}_welcome_group_e")
        assert fields(await cb.recv())[2] == "welcome"
        await server.core.groups.remove_members(a, group.id, [b])
        await deferLater(reactor, 0.1, lambda: None)
        ca.send(f"text_{group.id}_bye_group_e")
        assert await cb.no_message(0.3)
        cb.send(f"text_{group.id}_let me back_group_e")
        assert (await cb.recv()).startswith("error_notmember_")

    @pytest_twisted.ensureDeferred
    async def test_members_and_records(self, server, ws_connect):
        """`members_` lists the group; `records_` replays history in the receive format."""
        (a, ca), (b, cb) = await online(ws_connect, server, 2)
        group = await server.core.groups.create(a, "g", [b])
        ca.send(f"members_{group.id}")
        assert await ca.recv() == f"members_{group.id}_{a},{b}"
        for i in range(3):
            ca.send(f"text_{group.id}_m{i}_group_e")
            await cb.recv()
        ca.send(f"text_{b}_direct_unicast_e")
        await cb.recv()
        ca.send(f"records_{group.id}_0")
        frames = [await ca.recv() for _ in range(4)]
        assert [fields(f)[2] for f in frames[:3]] == ["m0", "m1", "m2"]
        assert all(fields(f)[4] == group.id for f in frames[:3])
        end = frames[3].split("_")
        assert end[:3] == ["records", group.id, "3"]
        ca.send(f"records_{group.id}_{end[3]}")
        assert await ca.recv() == f"records_{group.id}_0_{end[3]}"
        cb.send(f"records_{a}_0_unicast")
        kind, sender, payload, type_, conv, _, _ = fields(await cb.recv())
        assert (sender, payload, type_, conv) == (a, "direct", "unicast", a)
        assert (await cb.recv()).startswith(f"records_{a}_1_")
        (x, cx), = await online(ws_connect, server)
        cx.send(f"members_{group.id}")
        assert (await cx.recv()).startswith("error_notmember_")
        cx.send(f"records_{group.id}_0_group")
        assert (await cx.recv()).startswith("error_notmember_")


class LoginTests:
    @pytest_twisted.ensureDeferred
    async def test_tokenless_login_refused(self, server, ws_connect):
        """Without --legacy-auth a bare `login_<userid>` closes with 4001."""
        uid, _ = await make_user(server)
        conn = await ws_connect(server.ws_url + "/entry")
        conn.send(f"login_{uid}")
        code, reason = await conn.closed
        assert code == 4001 and "token" in reason

    @pytest_twisted.ensureDeferred
    async def test_wrong_token_refused(self, server, ws_connect):
        """Someone else's token, or a made-up one, closes with 4001."""
        uid, _ = await make_user(server)
        _, other_token = await make_user(server)
        for frame in (f"login_{uid}_{other_token}", f"login_{uid}_nonsense"):
            conn = await ws_connect(server.ws_url + "/entry")
            conn.send(frame)
            code, _ = await conn.closed
            assert code == 4001

    @pytest_twisted.ensureDeferred
    async def test_legacy_login(self, start_server, ws_connect):
        """With --legacy-auth the document's bare `login_<userid>` works (for existing users)."""
        server = await start_server(legacy_auth=True)
        (a, ca), = await online(ws_connect, server)
        b, _ = await make_user(server)
        cb = await ws_connect(server.ws_url + "/entry")
        cb.send(f"login_{b}")
        assert await cb.recv() == f"login_{b}_ok"
        ca.send(f"text_{b}_hi_unicast_e")
        assert fields(await cb.recv())[1:3] == (a, "hi")
        cx = await ws_connect(server.ws_url + "/entry")
        cx.send("login_88888888")
        assert (await cx.closed)[0] == 4001

    @pytest_twisted.ensureDeferred
    async def test_requests_before_login(self, server, ws_connect):
        """Sends and queries before login get `error_notloggedin`."""
        (b, _), = await online(ws_connect, server)
        conn = await ws_connect(server.ws_url + "/entry")
        conn.send(f"text_{b}_hi_unicast_e")
        assert (await conn.recv()).startswith("error_notloggedin_")
        conn.send("members_1")
        assert (await conn.recv()).startswith("error_notloggedin_")

    @pytest_twisted.ensureDeferred
    async def test_logout_ends_session(self, server, ws_connect):
        """`logout_<userid>` acknowledges, stops delivery and marks the user offline."""
        (a, ca), (b, cb) = await online(ws_connect, server, 2)
        cb.send(f"logout_{b}")
        assert await cb.recv() == f"logout_{b}_ok"
        assert await _offline(server, b)
        ca.send(f"text_{b}_after logout_unicast_e")
        assert await cb.no_message(0.3)
        cb.send(f"text_{a}_hi_unicast_e")
        assert (await cb.recv()).startswith("error_notloggedin_")

    @pytest_twisted.ensureDeferred
    async def test_wsim_path_and_dialect_listen(self, start_server, ws_connect):
        """/wsim/entry and a --dialect-listen port (any path) speak the same dialect."""
        server = await start_server(dialect_listen={"signal": None})
        a, ta = await make_user(server)
        b, tb = await make_user(server)
        ca = await login(ws_connect, server.ws_url, a, ta, path="/wsim/entry")
        cb = await login(ws_connect, server.dialect_urls["signal"], b, tb, path="/any/path")
        ca.send(f"text_{b}_via two ports_unicast_e")
        assert fields(await cb.recv())[2] == "via two ports"


class ErrorFrameTests:
    @pytest_twisted.ensureDeferred
    async def test_malformed_and_unknown(self, server, ws_connect):
        """Malformed frames and unknown commands get error frames; the session goes on."""
        (a, ca), (b, cb) = await online(ws_connect, server, 2)
        for frame, code in [(f"text_{b}_no type", "malformed"), ("dance_1", "unknown"),
                            (f"text_{b}_x_broadcast_e", "malformed"), ("nounderscore", "unknown")]:
            ca.send(frame)
            assert (await ca.recv()).startswith(f"error_{code}_")
        ca.send(b"\x00binary")
        assert (await ca.recv()).startswith("error_malformed_")
        ca.send(f"text_{b}_still fine_unicast_e")
        assert fields(await cb.recv())[2] == "still fine"

    @pytest_twisted.ensureDeferred
    async def test_too_large(self, server, ws_connect):
        """A frame over the message limit gets `error_toolarge` and is not delivered."""
        (a, ca), (b, cb) = await online(ws_connect, server, 2)
        ca.send(f"text_{b}_{'x' * 20000}_unicast_e")
        assert (await ca.recv()).startswith("error_toolarge_")
        assert await cb.no_message(0.2)

    @pytest_twisted.ensureDeferred
    async def test_too_fast(self, start_server, ws_connect):
        """Past the per-connection rate, sends get `error_toofast`."""
        server = await start_server(messages_per_second=3)
        (a, ca), (b, cb) = await online(ws_connect, server, 2)
        for i in range(10):
            ca.send(f"text_{b}_{i}_unicast_e")
        errors = [await ca.recv() for _ in range(4)]   # at most 3 + 3 pass over two seconds
        assert all(f.startswith("error_toofast_") for f in errors)
        await deferLater(reactor, 0.3, lambda: None)
        errors += list(ca.queue.pending)
        passed = 10 - len(errors)
        received = [fields(await cb.recv())[2] for _ in range(passed)]
        assert received == sorted(received, key=int) and await cb.no_message(0.1)


class LivenessTests:
    @pytest_twisted.ensureDeferred
    async def test_heartbeats_arrive(self, start_server, ws_connect):
        """`heartbeat_<timet>` frames arrive every ping interval, logged in or not."""
        server = await start_server(ping_interval=0.2, idle_timeout=2.0)
        conn = await ws_connect(server.ws_url + "/entry")
        first = await conn.recv(timeout=2)
        second = await conn.recv(timeout=2)
        for frame in (first, second):
            kind, timet = frame.split("_")
            assert kind == "heartbeat" and abs(int(timet) - reactor.seconds()) < 5

    @pytest_twisted.ensureDeferred
    async def test_silent_client_dropped_and_presence_cleaned(self, start_server, ws_connect):
        """A client that stops answering pings is dropped and goes offline within the timeout."""
        server = await start_server(ping_interval=0.2, idle_timeout=1.0)
        (a, ca), = await online(ws_connect, server)
        assert await server.core.presence.is_online(a)
        started = reactor.seconds()
        ca.freeze()
        await until(lambda: _offline(server, a), timeout=5)
        assert reactor.seconds() - started < 1.0 + 0.5

    @pytest_twisted.ensureDeferred
    async def test_answering_client_stays(self, start_server, ws_connect):
        """A client that answers pings outlives the idle timeout without sending anything."""
        server = await start_server(ping_interval=0.2, idle_timeout=0.6)
        (a, ca), = await online(ws_connect, server)
        await deferLater(reactor, 1.5, lambda: None)
        assert await server.core.presence.is_online(a)


class TwoProcessTests:
    @pytest_twisted.ensureDeferred
    async def test_direct_exchange_across_processes(self, start_server, ws_connect):
        """Users on two imserver processes sharing one Redis exchange messages both ways."""
        one, two, ((a, ta), (b, tb)) = await two_processes(start_server)
        ca = await login(ws_connect, one.ws_url, a, ta)
        cb = await login(ws_connect, two.ws_url, b, tb)
        ca.send(f"text_{b}_across_the_processes_unicast_e")
        assert fields(await cb.recv())[1:3] == (a, "across_the_processes")
        cb.send(f"text_{a}_and back_unicast_e")
        assert fields(await ca.recv())[1:3] == (b, "and back")
        group = await two.core.groups.create(b, "g", [a])
        await deferLater(reactor, 0.1, lambda: None)
        cb.send(f"text_{group.id}_group across_group_e")
        assert fields(await ca.recv())[2:5] == ("group across", "group", group.id)

    @pytest_twisted.ensureDeferred
    async def test_devices_on_both_processes_get_each_message_once(self, start_server,
                                                                  ws_connect):
        """Devices of both users on two processes: each gets every message once, in order,
        whether its process delivered it itself or heard it through Redis."""
        one, two, ((a, ta), (b, tb)) = await two_processes(start_server)
        a1 = await login(ws_connect, one.ws_url, a, ta)
        a2 = await login(ws_connect, two.ws_url, a, ta)
        b1 = await login(ws_connect, one.ws_url, b, tb)
        b2 = await login(ws_connect, two.ws_url, b, tb)
        for i in range(5):
            a1.send(f"text_{b}_m_{i}_unicast_e")
        def seen(frame):
            kind, sender, payload, type_, conversation, _, ext = fields(frame)
            return sender, payload, conversation

        for device in (b1, b2):
            assert [seen(await device.recv()) for _ in range(5)] == [
                (a, f"m_{i}", a) for i in range(5)]
        # the sender's other device, on the other process, gets its own copies
        assert [seen(await a2.recv()) for _ in range(5)] == [(a, f"m_{i}", b) for i in range(5)]
        for device in (a1, a2, b1, b2):
            assert await device.no_message(0.3)
        assert one.core.bus.dropped_own >= 1


def test_text_frame_matches_autobahn():
    """The dialect's own framing is byte for byte Autobahn's prepared frame."""
    from autobahn.twisted.websocket import WebSocketServerFactory

    from imserver.dialects.signal.ws import text_frame
    factory = WebSocketServerFactory()
    for n in (0, 5, 125, 126, 65535, 65536, 70000):
        payload = "é".encode() * (n // 2) + b"x" * (n % 2)
        assert text_frame(payload) == factory.prepareMessage(payload).payloadHybi


class RepairTests:
    @pytest_twisted.ensureDeferred
    async def test_lost_bus_link_repaired_from_the_logs(self, start_server, ws_connect,
                                                        cut_bus_link):
        """After its pub/sub link comes back, a process's sessions get what other processes
        stored meanwhile, once and in order; what the process delivered itself meanwhile
        (direct messages between its own users) is not repeated."""
        one, two, ((a, ta), (b, tb), (c, tc)) = await two_processes(start_server, 3)
        ca = await login(ws_connect, one.ws_url, a, ta)
        cb = await login(ws_connect, two.ws_url, b, tb)
        cc = await login(ws_connect, two.ws_url, c, tc)
        ca.send(f"text_{b}_seen live_unicast_e")
        assert fields(await cb.recv())[2] == "seen live"
        link = await cut_bus_link(two)
        ca.send(f"text_{b}_missed 1_unicast_e")
        ca.send(f"text_{b}_missed 2_unicast_e")
        await until(lambda: _count(two, a, [b], "0", 3))
        # stored after the missed ones: repairing from it would lose them
        cc.send(f"text_{b}_delivered here_unicast_e")
        assert fields(await cb.recv())[1:3] == (c, "delivered here")
        assert await cb.no_message(0.2)
        await link.restore()
        assert [fields(await cb.recv())[1:3] for _ in range(2)] == [
            (a, "missed 1"), (a, "missed 2")]
        assert await cb.no_message(0.3)
        assert await ca.no_message(0.1) and await cc.no_message(0.1)


    @pytest_twisted.ensureDeferred
    async def test_repaired_with_no_message_through_redis_before(self, start_server,
                                                                ws_connect, cut_bus_link):
        """A process that had received no message through Redis when its link dropped still
        repairs: its marks (the message clock, sent to itself) gave it a position."""
        one, two, ((a, ta), (b, tb)) = await two_processes(start_server)
        ca = await login(ws_connect, one.ws_url, a, ta)
        cb = await login(ws_connect, two.ws_url, b, tb)
        wire = signal_dialect(two).wire

        async def marked():
            return wire.watermark != ""
        await until(marked)
        link = await cut_bus_link(two)
        ca.send(f"text_{b}_sent while down_unicast_e")
        await until(lambda: _count(two, a, [b], "0", 1))
        assert await cb.no_message(0.2)
        await link.restore()
        assert fields(await cb.recv())[1:3] == (a, "sent while down")
        assert await cb.no_message(0.3)

    @pytest_twisted.ensureDeferred
    async def test_marks_move_the_watermark_past_local_traffic(self, server, ws_connect):
        """Messages a process delivers itself never reach it through Redis; its marks still
        carry its repair position up to the newest message."""
        (a, ca), (b, cb) = await online(ws_connect, server, 2)
        ca.send(f"text_{b}_local_unicast_e")
        assert fields(await cb.recv())[2] == "local"
        dialect = signal_dialect(server)
        newest = await dialect.send_mark()
        assert newest == await server.core.store.execute("GET", keys.message_clock())

        async def caught_up():
            return dialect.wire.watermark == newest
        await until(caught_up)


def signal_dialect(server):
    return next(d for d in server.service.dialects if d.name == "signal")


def cb_session(dialect, uid):
    return next(s for s in dialect.sessions if s.user_id == uid)


@pytest_twisted.ensureDeferred
async def test_upgrade_lets_the_http_request_go(server, ws_connect):
    """After the upgrade nothing keeps twisted.web's channel (and request) alive."""
    (a, ca), = await online(ws_connect, server)
    dialect = next(d for d in server.service.dialects if d.name == "signal")
    session = cb_session(dialect, a)
    assert session.transport.producer is None
    assert session.transport.protocol is session
