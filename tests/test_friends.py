"""The friends core: requests, mutual friendship, messages, the live-first list."""

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from imserver.core.errors import InvalidInput
from imserver.core.friends import AlreadyFriends, Friends, NoSuchRequest, NotFriends


class LiveNow:
    """Who is live, as LiveRooms.live_users answers it."""

    def __init__(self):
        self.plays = {}

    async def live_users(self, ids):
        return {i: self.plays[i] for i in ids if i in self.plays}


@pytest.fixture
def live():
    return LiveNow()


@pytest.fixture
def friends(store, bus, live):
    return Friends(store, bus, reactor, live=live)


async def _users(accounts, n):
    return [(await accounts.register(phone=f"1390000000{i}", password="secret123")).id
            for i in range(n)]


def flags(messages):
    return [(m.requester, m.requestee, m.flag) for m in messages]


class FriendsTests:
    @pytest_twisted.ensureDeferred
    async def test_request_and_accept(self, friends, accounts):
        """A request shows as 0 to the requestee and 2 to the requester; accepting makes 1 and 3."""
        a, b = await _users(accounts, 2)
        assert await friends.request(a, b) == "requested"
        assert flags(await friends.messages(b)) == [(a, b, 0)]
        assert flags(await friends.messages(a)) == [(a, b, 2)]
        assert await friends.relation(a, b) == 0
        (msg,) = await friends.messages(b)
        assert await friends.accept(b, a, msg.ts) is True
        assert flags(await friends.messages(b)) == [(a, b, 1)]
        assert flags(await friends.messages(a)) == [(a, b, 3)]
        assert await friends.relation(a, b) == 1 and await friends.relation(b, a) == 1
        assert await friends.relation(a, a) == -1
        assert await friends.accept(b, a) is False  # accepting twice changes nothing

    @pytest_twisted.ensureDeferred
    async def test_already_friends(self, friends, accounts):
        """Asking a friend again is refused as already friends, from either side."""
        a, b = await _users(accounts, 2)
        await friends.request(a, b)
        await friends.accept(b, a)
        with pytest.raises(AlreadyFriends):
            await friends.request(a, b)
        with pytest.raises(AlreadyFriends):
            await friends.request(b, a)

    @pytest_twisted.ensureDeferred
    async def test_crossing_requests_make_friends(self, friends, accounts):
        """When both ask each other, the second request accepts the first."""
        a, b = await _users(accounts, 2)
        assert await friends.request(a, b) == "requested"
        assert await friends.request(a, b) == "pending"
        assert await friends.request(b, a) == "accepted"
        assert await friends.are_friends(a, b)

    @pytest_twisted.ensureDeferred
    async def test_concurrent_crossing_requests(self, friends, accounts):
        """Requests crossing at the same moment end in one mutual friendship."""
        a, b = await _users(accounts, 2)
        results = await defer.gatherResults([
            defer.ensureDeferred(friends.request(a, b)),
            defer.ensureDeferred(friends.request(b, a))])
        assert sorted(results) == ["accepted", "requested"]
        assert await friends.relation(a, b) == 1 and await friends.relation(b, a) == 1

    @pytest_twisted.ensureDeferred
    async def test_self_and_stale_requests(self, friends, accounts):
        """No request to oneself; a stale timestamp or another user's request is not found."""
        a, b, c = await _users(accounts, 3)
        with pytest.raises(InvalidInput):
            await friends.request(a, a)
        await friends.request(a, b)
        (msg,) = await friends.messages(b)
        with pytest.raises(NoSuchRequest):
            await friends.accept(b, a, msg.ts + 1)
        with pytest.raises(NoSuchRequest):
            await friends.accept(c, a)
        with pytest.raises(NoSuchRequest):
            await friends.delete_message(c, a, b)
        assert not await friends.are_friends(a, b)

    @pytest_twisted.ensureDeferred
    async def test_decline_and_withdraw(self, friends, accounts):
        """Deleting a pending request removes it for both sides; it can be asked again."""
        a, b = await _users(accounts, 2)
        await friends.request(a, b)
        assert await friends.delete_message(b, a, b) == "cancelled"
        assert await friends.messages(a) == [] and await friends.messages(b) == []
        assert await friends.request(a, b) == "requested"
        assert await friends.delete_message(a, a, b) == "cancelled"
        assert await friends.messages(b) == []
        with pytest.raises(NoSuchRequest):
            await friends.accept(b, a)

    @pytest_twisted.ensureDeferred
    async def test_hide_answered_message(self, friends, accounts):
        """Deleting an accepted request hides it from the deleter only; friends stay friends."""
        a, b = await _users(accounts, 2)
        await friends.request(a, b)
        await friends.accept(b, a)
        assert await friends.delete_message(b, a, b) == "hidden"
        assert await friends.messages(b) == []
        assert flags(await friends.messages(a)) == [(a, b, 3)]
        assert await friends.are_friends(a, b)
        with pytest.raises(NoSuchRequest):
            await friends.delete_message(b, a, b)

    @pytest_twisted.ensureDeferred
    async def test_remove_is_mutual(self, friends, accounts):
        """Removing a friend ends the friendship on both sides; removing a stranger is refused."""
        a, b = await _users(accounts, 2)
        await friends.request(a, b)
        await friends.accept(b, a)
        await friends.remove(b, a)
        assert await friends.relation(a, b) == 0 and await friends.relation(b, a) == 0
        assert await friends.friend_list(a) == []
        with pytest.raises(NotFriends):
            await friends.remove(a, b)
        assert await friends.request(a, b) == "requested"  # and can start over

    @pytest_twisted.ensureDeferred
    async def test_live_friends_first(self, friends, accounts, live):
        """The friend list puts friends live now first, then by recency."""
        me, f1, f2, f3 = await _users(accounts, 4)
        for f in (f1, f2, f3):
            await friends.request(me, f)
            await friends.accept(f, me)
        assert [f.user_id for f in await friends.friend_list(me)] == [f3, f2, f1]
        live.plays[f1] = "rtmp://play/live/s1"
        listed = await friends.friend_list(me)
        assert [f.user_id for f in listed] == [f1, f3, f2]
        assert listed[0].live and listed[0].play_url == "rtmp://play/live/s1"
        assert not listed[1].live and listed[1].play_url == ""

    @pytest_twisted.ensureDeferred
    async def test_events_reach_both_sides(self, friends, accounts, bus):
        """Requests, acceptance and removal are published on the users' topics."""
        a, b = await _users(accounts, 2)
        seen = {a: [], b: []}
        done = defer.Deferred()

        def sink(uid):
            def got(event):
                seen[uid].append(event.kind)
                if seen[a].count("friend.removed") and seen[b].count("friend.removed"):
                    if not done.called:
                        done.callback(None)
            return got

        await bus.listen(f"user:{a}", sink(a)).ready
        await bus.listen(f"user:{b}", sink(b)).ready
        await friends.request(a, b)
        await friends.accept(b, a)
        await friends.remove(a, b)
        done.addTimeout(5, reactor)
        await done
        assert seen[b] == ["friend.request", "friend.added", "friend.removed"]
        assert seen[a] == ["friend.added", "friend.removed"]
