"""The groups core against a real Redis: membership rules, events, the snap."""

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from imserver.core.errors import InvalidInput
from imserver.core.groups import (GROUP_JOINED_EVENT, GROUP_LEFT_EVENT, GroupFull,
                                  GroupNotFound, Groups, NotCreator, UnknownMembers, parse_ids)
from imserver.core.messages import NotMember
from imserver.store import keys

_names = iter(range(10**9))


async def users(accounts, n, **kw):
    return [str((await accounts.register(password="secret1", username=f"g{next(_names)}",
                                         **kw)).id) for _ in range(n)]


class FakeMedia:
    """Records what the groups core asks the media service to compose."""

    def __init__(self):
        self.calls = []

    async def compose_grid(self, refs, key):
        self.calls.append(list(refs))
        return f"http://media.test/media/grid-{len(self.calls)}.jpg"


@pytest.fixture
def media():
    return FakeMedia()


@pytest.fixture
def groups(store, bus, accounts, media):
    return Groups(store, bus, accounts, media=media, public_url="http://127.0.0.1:1",
                  max_members=5)


class GroupRulesTests:
    @pytest_twisted.ensureDeferred
    async def test_create(self, groups, accounts, media, store):
        """The creator is the first member; members keep the order given; the snap is composed."""
        a, b, c = await users(accounts, 3, avatar="http://x/av.jpg")
        group = await groups.create(a, " 我的群 ", [c, b, a, c], notice="hi")
        assert (group.creator, group.name, group.notice) == (a, "我的群", "hi")
        assert group.members == [a, c, b]
        assert group.snap == "http://media.test/media/grid-1.jpg"
        assert media.calls == [["http://x/av.jpg"] * 3]
        assert await groups.group_ids_of(b) == [group.id]
        second = await groups.create(b, "two")
        assert int(second.id) == int(group.id) + 1 and second.members == [b]

    @pytest_twisted.ensureDeferred
    async def test_create_refuses_unknown_users_and_too_many(self, groups, accounts):
        """Every member must exist; a group has at most max_members."""
        (a,) = await users(accounts, 1)
        with pytest.raises(UnknownMembers) as e:
            await groups.create(a, "g", ["777777"])
        assert e.value.ids == ["777777"]
        many = await users(accounts, 5)
        with pytest.raises(GroupFull):
            await groups.create(a, "g", many)

    @pytest_twisted.ensureDeferred
    async def test_members_add_any_member(self, groups, accounts, media):
        """Any member adds members; outsiders may not; the snap is redone."""
        a, b, c, d, e, f = await users(accounts, 6)
        group = await groups.create(a, "g", [b])
        assert await groups.add_members(b, group.id, [c, b]) == [c]
        with pytest.raises(NotMember):
            await groups.add_members(d, group.id, [d])
        with pytest.raises(GroupFull):
            await groups.add_members(a, group.id, [d, e, f])
        assert (await groups.get(group.id)).members == [a, b, c]
        assert len(media.calls) == 2
        with pytest.raises(GroupNotFound):
            await groups.add_members(a, "999", [b])

    @pytest_twisted.ensureDeferred
    async def test_remove_rules(self, groups, accounts):
        """The creator removes anyone; others only themselves."""
        a, b, c = await users(accounts, 3)
        group = await groups.create(a, "g", [b, c])
        with pytest.raises(NotCreator):
            await groups.remove_members(b, group.id, [c])
        assert await groups.remove_members(c, group.id, [c]) == [c]
        assert await groups.remove_members(a, group.id, [b, c]) == [b]
        assert (await groups.get(group.id)).members == [a]
        assert await groups.group_ids_of(b) == []

    @pytest_twisted.ensureDeferred
    async def test_creator_leaving_hands_over_then_last_deletes(self, groups, accounts, store):
        """The longest-standing member inherits the group; the last one out deletes it."""
        a, b, c = await users(accounts, 3)
        group = await groups.create(a, "g", [b, c])
        await groups.remove_members(a, group.id, [a])
        assert (await groups.get(group.id)).creator == b
        await groups.remove_members(b, group.id, [b, c])
        assert await groups.get(group.id) is None
        assert await store.execute("EXISTS", keys.group_members(group.id)) == 0

    @pytest_twisted.ensureDeferred
    async def test_edit_creator_only(self, groups, accounts):
        """Only the creator changes name and notice."""
        a, b = await users(accounts, 2)
        group = await groups.create(a, "g", [b])
        with pytest.raises(NotCreator):
            await groups.edit(b, group.id, name="mine")
        await groups.edit(a, group.id, notice="meeting at 5")
        await groups.edit(a, group.id, name="renamed")
        g = await groups.get(group.id)
        assert (g.name, g.notice) == ("renamed", "meeting at 5")
        with pytest.raises(InvalidInput):
            await groups.edit(a, group.id)
        with pytest.raises(InvalidInput):
            await groups.edit(a, group.id, name="x" * 65)

    @pytest_twisted.ensureDeferred
    async def test_info_members_only(self, groups, accounts):
        """Only members read a group."""
        a, b = await users(accounts, 2)
        group = await groups.create(a, "g")
        assert (await groups.info(a, group.id)).id == group.id
        with pytest.raises(NotMember):
            await groups.info(b, group.id)

    @pytest_twisted.ensureDeferred
    async def test_membership_events(self, groups, accounts, bus):
        """Members added and removed are told on their user topic."""
        a, b = await users(accounts, 2)
        got = defer.DeferredQueue()
        sink = bus.listen(f"user:{b}", got.put)
        await sink.ready
        group = await groups.create(a, "g", [b])
        joined = await got.get().addTimeout(5, reactor)
        assert joined.kind == GROUP_JOINED_EVENT
        assert joined.data["group_id"] == group.id and joined.data["since"].endswith("-0")
        await groups.remove_members(a, group.id, [b])
        left = await got.get().addTimeout(5, reactor)
        assert (left.kind, left.data) == (GROUP_LEFT_EVENT, {"group_id": group.id})

    @pytest_twisted.ensureDeferred
    async def test_snap_without_media_service(self, store, bus, accounts):
        """Without a media service the snap is a stable /media/ URL per membership."""
        groups = Groups(store, bus, accounts, public_url="http://h:1/")
        a, b = await users(accounts, 2)
        group = await groups.create(a, "g", [b])
        assert group.snap.startswith(f"http://h:1/media/{group.id}_")
        again = Groups(store, bus, accounts, public_url="http://h:1")
        assert again.fallback_snap(group.id, [f"user:{a}", f"user:{b}"]) == group.snap


def test_parse_ids():
    """Comma lists of ids: spaces, duplicates and leading zeros are tidied."""
    assert parse_ids("1, 2,,3,2,007") == ["1", "2", "3", "7"]
    assert parse_ids("") == []
    with pytest.raises(InvalidInput):
        parse_ids("1,x")
