"""The messages core against a real Redis: store, announce, history, offline inbox."""

import json

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from imserver.bus import Bus, Event
from imserver.core.groups import Groups
from imserver.core.presence import Presence
from imserver.core.errors import InvalidInput
from imserver.core.messages import (MESSAGE_EVENT, Messages, NotMember, TooFast, UnknownGroup,
                                    UnknownRecipient)
from imserver.store import keys
from imserver.store.redis import Subscription

from conftest import until


@pytest.fixture
def messages(store, bus):
    return Messages(store, bus, reactor, history_length=1000, user_rate=1000)


@pytest.fixture
def groups(store, bus, accounts):
    return Groups(store, bus, accounts, public_url="http://127.0.0.1:1")


_names = iter(range(10**9))


async def users(accounts, n):
    return [str((await accounts.register(password="secret1",
                                         username=f"u{next(_names)}")).id)
            for _ in range(n)]


class Inbox:
    """Collects events of one topic."""

    def __init__(self, bus, topic):
        self.events = []
        self.waiters = []
        self.sink = bus.listen(topic, self._got)

    def _got(self, event):
        self.events.append(event)
        while self.waiters and len(self.events) >= self.waiters[0][0]:
            self.waiters.pop(0)[1].callback(None)

    async def wait(self, n, timeout=5):
        if len(self.events) < n:
            d = defer.Deferred()
            self.waiters.append((n, d))
            d.addTimeout(timeout, reactor)
            await d
        return self.events


class Connection:
    """A bus sink standing for one client connection (it is excluded from its own sends)."""

    codec = None

    def __init__(self, bus, topic, conn_id):
        self.conn_id = conn_id
        self.events = []
        self.ready = bus.subscribe(topic, self)

    def deliver(self, event, wire):
        self.events.append(event)


async def settle():
    await deferLater(reactor, 0.1, lambda: None)




class SendTests:
    @pytest_twisted.ensureDeferred
    async def test_direct_stored_then_published_to_both_parties(self, messages, bus, store,
                                                                 accounts, presence):
        """A direct message is in the pair's log and announced on user:<to> and user:<from>."""
        a, b = await users(accounts, 2)
        await presence.connect("phone", a, "signal")
        await presence.connect("tablet", a, "signal")     # a has another device
        to_b, to_a = Inbox(bus, f"user:{b}"), Inbox(bus, f"user:{a}")
        await to_b.sink.ready
        await to_a.sink.ready
        mid = await messages.send(a, "text", b, "unicast", "hi_there 你好", "ZXh0",
                                  conn_id="c1")
        (event,) = await to_b.wait(1)
        (own,) = await to_a.wait(1)
        assert event.kind == MESSAGE_EVENT
        assert event.data == {"id": mid, "k": "text", "f": a, "t": b, "y": "unicast",
                              "p": "hi_there 你好", "e": "ZXh0"}
        assert event.exclude == "c1" and own.data == event.data
        entries = await store.execute("XRANGE", keys.direct_log(b, a), "-", "+")
        assert [e[0] for e in entries] == [mid]

    @pytest_twisted.ensureDeferred
    async def test_post_reports_only_refusals_and_one_failing_handler_spoils_nothing(
            self, messages, bus, accounts):
        """post(): no Deferred per message; on_error gets the refusal, stored ones stay quiet."""
        a, b = await users(accounts, 2)
        to_b = Inbox(bus, f"user:{b}")
        await to_b.sink.ready
        seen = []

        def broken(exc):
            seen.append(("broken", type(exc)))
            raise RuntimeError("handler bug")

        # one reactor turn, so one batch: a refusal whose handler raises, then two good ones
        messages.post(a, "text", "999999999", "unicast", "lost", "", None, broken)
        messages.post(a, "text", b, "unicast", "one", "", None, lambda e: seen.append(e))
        messages.post(a, "bogus", b, "unicast", "x", "", None,
                      lambda e: seen.append(("kind", type(e))))
        messages.post(a, "text", b, "unicast", "two", "", None, lambda e: seen.append(e))
        events = await to_b.wait(2)
        assert [e.data["p"] for e in events] == ["one", "two"]
        await settle()
        assert seen == [("kind", InvalidInput), ("broken", UnknownRecipient)]

    @pytest_twisted.ensureDeferred
    async def test_no_own_copy_without_other_devices(self, messages, bus, accounts, presence):
        """A sender with one connection gets no copy of its own message."""
        a, b = await users(accounts, 2)
        only = presence.new_conn_id()
        await presence.connect(only, a, "signal")
        sending = Connection(bus, f"user:{a}", only)
        to_b = Inbox(bus, f"user:{b}")
        await sending.ready
        await to_b.sink.ready
        await messages.send(a, "text", b, "unicast", "x", conn_id=only)
        await to_b.wait(1)
        await settle()
        assert sending.events == []
        assert bus.received == 0

    @pytest_twisted.ensureDeferred
    async def test_direct_delivered_here_without_pubsub(self, messages, bus, store, accounts,
                                                        presence):
        """Both users on this process: delivered from the script's reply, nothing published."""
        a, b = await users(accounts, 2)
        phone, tablet, b_conn = (presence.new_conn_id() for _ in range(3))
        for conn, user in ((phone, a), (tablet, a), (b_conn, b)):
            await presence.connect(conn, user, "signal")
        to_b = Connection(bus, f"user:{b}", b_conn)
        own_phone = Connection(bus, f"user:{a}", phone)
        own_tablet = Connection(bus, f"user:{a}", tablet)
        for c in (to_b, own_phone, own_tablet):
            await c.ready
        mid = await messages.send(a, "text", b, "unicast", "hi", conn_id=phone)
        # delivered by the time the sender hears its id: no pub/sub round trip
        (event,) = to_b.events
        (own,) = own_tablet.events
        assert own_phone.events == []
        assert event.local and own.local and event.data == own.data
        assert event.data == {"id": mid, "k": "text", "f": a, "t": b, "y": "unicast",
                              "p": "hi", "e": ""}
        entry = (await store.execute("XRANGE", keys.direct_log(a, b), "-", "+"))[0]
        assert dict(zip(entry[1][::2], entry[1][1::2]))["o"] == messages.here
        await settle()
        assert (bus.received, bus.dropped_own) == (0, 0)
        assert len(to_b.events) == 1 and len(own_tablet.events) == 1

    @pytest_twisted.ensureDeferred
    async def test_direct_published_for_a_device_elsewhere(self, messages, bus, accounts,
                                                           presence, store, redis_url):
        """The recipient also on another process: published there; this process's copy is
        dropped, so each connection gets the message once."""
        a, b = await users(accounts, 2)
        other = Bus(store, lambda m, r: Subscription(reactor, redis_url, m, r))
        try:
            await other.subscription.whenReady()
            here_conn = presence.new_conn_id()
            there_conn = Presence(store, reactor, other.process_id).new_conn_id()
            await presence.connect(here_conn, b, "signal")
            await presence.connect(there_conn, b, "signal")
            here = Connection(bus, f"user:{b}", here_conn)
            there = Connection(other, f"user:{b}", there_conn)
            await here.ready
            await there.ready
            await messages.send(a, "text", b, "unicast", "both")
            assert [e.data["p"] for e in here.events] == ["both"]
            await until(lambda: len(there.events) == 1)
            await until(lambda: bus.dropped_own == 1)
            assert not there.events[0].local
            await settle()
            assert len(here.events) == 1 and len(there.events) == 1 and bus.received == 0
        finally:
            await other.close()

    @pytest_twisted.ensureDeferred
    async def test_script_writes_the_bus_json(self, messages, bus, accounts, presence, groups,
                                              redis_url):
        """The event JSON the script publishes is the bus's own (Event.to_json), whatever
        the payload; a direct message's ends so that its process drops its own copy."""
        a, b = await users(accounts, 2)
        group = await groups.create(a, "g", [b])
        await presence.connect("elsewhere-1", b, "signal")
        raw = []
        link = Subscription(reactor, redis_url, lambda ch, msg: raw.append(msg))
        try:
            await link.whenReady()
            await link.add(keys.bus_channel(f"user:{b}"))
            await link.add(keys.bus_channel(f"group:{group.id}"))
            payload = 'q"uo\\te/ é 你好 \x01\n\t_end'
            sent = [await messages.send(a, "audio", b, "unicast", payload, "ZXh0", conn_id="c9"),
                    await messages.send(a, "text", group.id, "group", payload, "")]
            await until(lambda: len(raw) == 2)
        finally:
            await link.close()
        for text, mid, (to, type_, ext, exclude) in zip(
                raw, sent, [(b, "unicast", "ZXh0", "c9"), (group.id, "group", "", None)]):
            kind = "audio" if type_ == "unicast" else "text"
            data = {"id": mid, "k": kind, "f": a, "t": to, "y": type_, "p": payload, "e": ext}
            ours = Event("", MESSAGE_EVENT, data, exclude, origin=bus.process_id,
                         local=type_ == "unicast").to_json()
            got, want = json.loads(text), json.loads(ours)
            assert abs(got.pop("t") - want.pop("t")) < 5
            assert got == want and list(got) == list(want)
            assert text.endswith(f',"o":"{bus.process_id}","h":1}}') == (type_ == "unicast")

    @pytest_twisted.ensureDeferred
    async def test_replies_out_of_order_delivered_in_call_order(self, messages, bus, store,
                                                                accounts):
        """The pool may answer a later script call first: deliveries keep the call order."""
        a, b = await users(accounts, 2)
        to_b = Inbox(bus, f"user:{b}")
        await to_b.sink.ready
        real = store.eval
        calls = []
        first_back = defer.Deferred()

        async def reordering(script, *args, **kw):
            n = len(calls)
            calls.append(n)
            reply = await real(script, *args, **kw)
            if n == 0:
                await first_back          # the first call's answer arrives last
            else:
                reactor.callLater(0, first_back.callback, None)
            return reply

        store.eval = reordering
        d1 = messages.submit(a, "text", b, "unicast", "first")
        await until(lambda: len(calls) == 1)
        d2 = messages.submit(a, "text", b, "unicast", "second")
        ids = await defer.gatherResults([d1, d2])
        assert [e.data["p"] for e in to_b.events] == ["first", "second"]
        assert [e.data["id"] for e in to_b.events] == ids

    @pytest_twisted.ensureDeferred
    async def test_one_turn_one_script_call(self, messages, store, accounts, groups):
        """Sends of one reactor turn are stored by one script call, each with its own outcome."""
        a, b = await users(accounts, 2)
        group = await groups.create(a, "g")
        calls = []
        real = store.eval

        async def counting(script, *args, **kw):
            calls.append(script.name)
            return await real(script, *args, **kw)

        store.eval = counting
        results = await defer.DeferredList([
            defer.ensureDeferred(messages.send(a, "text", b, "unicast", "1")),
            defer.ensureDeferred(messages.send(b, "text", group.id, "group", "2")),
            defer.ensureDeferred(messages.send(a, "text", group.id, "group", "3")),
            defer.ensureDeferred(messages.send(a, "text", "999999", "unicast", "4"))])
        assert calls == ["signal_send_batch"]
        (ok1, id1), (ok2, e2), (ok3, id3), (ok4, e4) = results
        assert ok1 and ok3 and not ok2 and not ok4
        assert e2.check(NotMember) and e4.check(UnknownRecipient)
        assert tuple(map(int, id1.split("-"))) < tuple(map(int, id3.split("-")))

    @pytest_twisted.ensureDeferred
    async def test_unknown_recipient_stores_nothing(self, messages, store, accounts):
        """Sending to a user that does not exist is refused and leaves no trace."""
        (a,) = await users(accounts, 1)
        with pytest.raises(UnknownRecipient):
            await messages.send(a, "text", "999999", "unicast", "x")
        assert await store.execute("EXISTS", keys.direct_log(a, 999999)) == 0

    @pytest_twisted.ensureDeferred
    async def test_group_member_only(self, messages, groups, bus, store, accounts):
        """Members post to the group topic; a non-member is refused and nothing is stored."""
        a, b, outsider = await users(accounts, 3)
        group = await groups.create(a, "g", [b])
        inbox = Inbox(bus, f"group:{group.id}")
        await inbox.sink.ready
        with pytest.raises(NotMember):
            await messages.send(outsider, "text", group.id, "group", "spam")
        with pytest.raises(UnknownGroup):
            await messages.send(a, "text", "424242", "group", "x")
        mid = await messages.send(b, "picture", group.id, "group", "http://x/a.jpg", "e")
        (event,) = await inbox.wait(1)
        assert event.data["id"] == mid and event.data["f"] == b and event.data["y"] == "group"
        assert await store.execute("XLEN", keys.group_log(group.id)) == 1
        await settle()
        assert len(inbox.events) == 1

    @pytest_twisted.ensureDeferred
    async def test_order_is_log_order(self, messages, bus, accounts):
        """Concurrent sends are announced in the order the log assigned."""
        a, b = await users(accounts, 2)
        inbox = Inbox(bus, f"user:{b}")
        await inbox.sink.ready
        ids = await defer.gatherResults([
            defer.ensureDeferred(messages.send(a, "text", b, "unicast", f"m{i}"))
            for i in range(50)])
        events = await inbox.wait(50)
        got = [e.data["id"] for e in events]
        assert got == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))

    @pytest_twisted.ensureDeferred
    async def test_user_rate_limit(self, store, bus, accounts):
        """Past the per-user rate the script refuses without storing."""
        messages = Messages(store, bus, reactor, user_rate=3, rate_window=60)
        a, b = await users(accounts, 2)
        for i in range(3):
            await messages.send(a, "text", b, "unicast", str(i))
        with pytest.raises(TooFast):
            await messages.send(a, "text", b, "unicast", "too many")
        assert await store.execute("XLEN", keys.direct_log(a, b)) == 3

    @pytest_twisted.ensureDeferred
    async def test_log_is_capped(self, store, bus, accounts):
        """The conversation log is trimmed to about its configured length."""
        messages = Messages(store, bus, reactor, history_length=10, user_rate=0)
        a, b = await users(accounts, 2)
        for i in range(300):
            await messages.send(a, "text", b, "unicast", str(i))
        n = await store.execute("XLEN", keys.direct_log(a, b))
        assert 10 <= n <= 110

    @pytest_twisted.ensureDeferred
    async def test_messages_past_the_age_limit_are_not_read(self, messages, groups, accounts):
        """History and the inbox leave out what is older than history_days, trimmed or not."""
        a, b = await users(accounts, 2)
        group = await groups.create(a, "g", [b])
        await messages.send(a, "text", b, "unicast", "old direct")
        await messages.send(a, "text", group.id, "group", "old group")
        await deferLater(reactor, 0.3, lambda: None)
        messages.max_age_ms = 200
        await messages.send(a, "text", b, "unicast", "new direct")
        await messages.send(a, "text", group.id, "group", "new group")
        _, direct = await messages.history(b, a, "unicast", "0-0")
        _, posts = await messages.history(b, group.id, "group", "0-0")
        assert [m.payload for m in direct] == ["new direct"]
        assert [m.payload for m in posts] == ["new group"]
        assert [m.payload for m in await messages.inbox(b, 0)] == ["new direct", "new group"]


class HistoryTests:
    @pytest_twisted.ensureDeferred
    async def test_direct_history_pages(self, messages, accounts):
        """History after a position, oldest first, continued from the last id."""
        a, b = await users(accounts, 2)
        ids = [await messages.send(a if i % 2 else b, "text", b if i % 2 else a, "unicast",
                                   f"m{i}") for i in range(5)]
        type_, page = await messages.history(a, b, None, "0-0", limit=3)
        assert type_ == "unicast" and [m.id for m in page] == ids[:3]
        assert [m.payload for m in page] == ["m0", "m1", "m2"]
        _, rest = await messages.history(b, a, "unicast", page[-1].id)
        assert [m.id for m in rest] == ids[3:]

    @pytest_twisted.ensureDeferred
    async def test_group_history_from_join(self, messages, groups, accounts):
        """A member reads the group from their join on; others may not read it."""
        a, b, c = await users(accounts, 3)
        group = await groups.create(a, "g", [b])
        before = await messages.send(a, "text", group.id, "group", "before c")
        await deferLater(reactor, 0.01, lambda: None)
        await groups.add_members(a, group.id, [c])
        after = await messages.send(b, "text", group.id, "group", "after c")
        type_, seen_by_a = await messages.history(a, group.id, None, "0-0")
        assert type_ == "group" and [m.id for m in seen_by_a] == [before, after]
        _, seen_by_c = await messages.history(c, group.id, "group", "0-0")
        assert [m.id for m in seen_by_c] == [after]
        (outsider,) = await users(accounts, 1)
        with pytest.raises(NotMember):
            await messages.history(outsider, group.id, "group", "0-0")

    @pytest_twisted.ensureDeferred
    async def test_unknown_target(self, messages, accounts):
        """A target that is neither a group of the viewer nor a user is unknown."""
        (a,) = await users(accounts, 1)
        with pytest.raises(UnknownRecipient):
            await messages.history(a, "888888", None, "0-0")
        with pytest.raises(UnknownGroup):
            await messages.history(a, "888888", "group", "0-0")


class InboxTests:
    @pytest_twisted.ensureDeferred
    async def test_offline_then_login(self, messages, groups, store, accounts):
        """Everything sent while offline comes back in order at the next login, once."""
        a, b, c = await users(accounts, 3)
        group = await groups.create(a, "g", [b, c])
        assert await messages.take_inbox(b) == 0          # first login ever
        await messages.send(a, "text", b, "unicast", "old, seen live")
        await deferLater(reactor, 0.005, lambda: None)  # the mark's millisecond is re-read
        assert await messages.went_offline(b)
        ids = [await messages.send(a, "text", b, "unicast", "d1"),
               await messages.send(c, "text", group.id, "group", "g1"),
               await messages.send(c, "text", b, "unicast", "d2"),
               await messages.send(a, "text", group.id, "group", "g2")]
        since = await messages.take_inbox(b)
        assert since > 0
        inbox = await messages.inbox(b, since)
        assert [m.id for m in inbox] == ids
        assert [m.payload for m in inbox] == ["d1", "g1", "d2", "g2"]
        assert await messages.take_inbox(b) is None       # a second device: already taken

    @pytest_twisted.ensureDeferred
    async def test_not_offline_while_connected(self, messages, presence, accounts):
        """The offline mark is set only when the user's last connection has gone."""
        (a,) = await users(accounts, 1)
        await messages.take_inbox(a)
        await presence.connect("c1", a, "signal")
        assert not await messages.went_offline(a)
        assert await messages.take_inbox(a) is None
        await presence.disconnect("c1")
        assert await messages.went_offline(a)
        assert await messages.take_inbox(a) > 0

    @pytest_twisted.ensureDeferred
    async def test_first_login_gets_earlier_messages(self, messages, accounts):
        """A user who never logged in receives what was sent to them before."""
        a, b = await users(accounts, 2)
        mid = await messages.send(a, "text", b, "unicast", "welcome")
        since = await messages.take_inbox(b)
        assert [m.id for m in await messages.inbox(b, since)] == [mid]

    @pytest_twisted.ensureDeferred
    async def test_backdated_mark(self, messages, accounts):
        """A dead process's users are marked offline from before it was noticed."""
        (a,) = await users(accounts, 1)
        await messages.went_offline(a)
        plain = await messages.take_inbox(a)
        await messages.went_offline(a, backdate=60)
        early = await messages.take_inbox(a)
        assert plain - early >= 59_000


class ClockTests:
    @pytest_twisted.ensureDeferred
    async def test_ids_order_across_conversations(self, messages, groups, accounts):
        """Ids of different conversations sort in the order the messages were stored."""
        a, b, c = await users(accounts, 3)
        group = await groups.create(a, "g", [b])
        ids = []
        for i in range(30):
            if i % 3 == 0:
                ids.append(await messages.send(a, "text", group.id, "group", str(i)))
            else:
                ids.append(await messages.send(a, "text", b if i % 3 == 1 else c, "unicast",
                                               str(i)))
        assert sorted(ids, key=lambda i: tuple(map(int, i.split("-")))) == ids
        assert len(set(ids)) == 30

    @pytest_twisted.ensureDeferred
    async def test_lost_clock_follows_the_log(self, messages, store, accounts):
        """If the clock key is lost while a log is ahead of it, sending still works."""
        a, b = await users(accounts, 2)
        await store.execute("XADD", keys.direct_log(a, b), "99999999999999-0", "f", a)
        await store.execute("DEL", keys.message_clock())
        mid = await messages.send(a, "text", b, "unicast", "x")
        assert mid > "99999999999999-0"
        assert await messages.send(a, "text", b, "unicast", "y") > mid
