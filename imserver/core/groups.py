"""
Groups: who is in which group, and what the group looks like.

A group is a hash (``creator``, ``name``, ``notice``, ``snap``, ``created``),
a zset of members scored by join time (ms, Redis clock, times 1000 plus the
position within one call, so members added together keep the order they were
given), and, per user, the set of their groups. The group's messages are
:mod:`imserver.core.messages`' business; a member's join time bounds the
history they may read there.

Rules (checked here, in Lua, so concurrent calls on several processes agree):

- anyone logged in creates a group and is its creator and first member;
  every member named must be an existing user;
- any member may add members, up to ``max_members``;
- the creator may remove anyone; any other member may only remove
  themselves (leave). When the creator leaves, the longest-standing member
  becomes the creator; when the last member leaves, the group is deleted;
- only the creator edits the name and notice;
- only members read a group's details, members and messages.

Membership changes take effect at once for connected sessions: each member
added gets ``group.joined`` ``{group_id, since}`` (``since``: the stream
position to read the group from, the join time) on ``user:<id>``, each
member removed ``group.left`` ``{group_id}``.

``snap`` is a picture: a grid of the first nine members' avatars composed by
the media service (``media.compose_grid(avatar_refs, group_id) -> url``, off the
reactor thread), made again whenever the membership changes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from twisted.logger import Logger

from imserver.core.errors import Forbidden, InvalidInput, NotFound
from imserver.core.messages import NotMember
from imserver.store import keys
from imserver.store.scripts import Script

log = Logger()

GROUP_JOINED_EVENT = "group.joined"
GROUP_LEFT_EVENT = "group.left"
MAX_NAME = 64
MAX_NOTICE = 1024
SNAP_MEMBERS = 9


class GroupNotFound(NotFound):
    reason = "no such group"


class GroupFull(Forbidden):
    reason = "the group is full"


class NotCreator(Forbidden):
    reason = "only the group's creator may do this"


class UnknownMembers(InvalidInput):
    reason = "no such user"

    def __init__(self, ids):
        super().__init__("no such user: " + ",".join(str(i) for i in ids))
        self.ids = list(ids)


_TIME = """
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: group record, its members, then each member's group set (same order
# as ARGV[6..]). ARGV: group id, creator, name, notice, snap, member ids.
CREATE = Script("group_create", _TIME + """
redis.call('HSET', KEYS[1], 'creator', ARGV[2], 'name', ARGV[3], 'notice', ARGV[4],
           'snap', ARGV[5], 'created', string.format('%.0f', ms))
for i = 6, #ARGV do
  redis.call('ZADD', KEYS[2], 'NX', string.format('%.0f', ms * 1000 + math.min(i - 6, 999)), ARGV[i])
  redis.call('SADD', KEYS[i - 3], ARGV[1])
end
return string.format('%.0f', ms)
""")

# KEYS: group record, its members, then each candidate's group set (same
# order as ARGV[4..]). ARGV: group id, who asks, max members, user ids.
# Returns {1, join ms, added ids...} or {0, error}.
ADD = Script("group_add", """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 'nogroup'} end
if not redis.call('ZSCORE', KEYS[2], ARGV[2]) then return {0, 'notmember'} end
local new = {}
for i = 4, #ARGV do
  if not redis.call('ZSCORE', KEYS[2], ARGV[i]) then new[#new + 1] = i end
end
if redis.call('ZCARD', KEYS[2]) + #new > tonumber(ARGV[3]) then return {0, 'full'} end
""" + _TIME + """
local out = {1, string.format('%.0f', ms)}
for j, i in ipairs(new) do
  redis.call('ZADD', KEYS[2], string.format('%.0f', ms * 1000 + math.min(j - 1, 999)), ARGV[i])
  redis.call('SADD', KEYS[i - 1], ARGV[1])
  out[#out + 1] = ARGV[i]
end
return out
""")

# KEYS: group record, its members, its log, then each user's group set (same
# order as ARGV[3..]). ARGV: group id, who asks, user ids. Returns {1,
# creator after the change ('' if the group was deleted), removed ids...} or
# {0, error}.
REMOVE = Script("group_remove", """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 'nogroup'} end
if not redis.call('ZSCORE', KEYS[2], ARGV[2]) then return {0, 'notmember'} end
local creator = redis.call('HGET', KEYS[1], 'creator')
if ARGV[2] ~= creator then
  for i = 3, #ARGV do
    if ARGV[i] ~= ARGV[2] then return {0, 'notcreator'} end
  end
end
local out = {1, creator}
local creator_left = false
for i = 3, #ARGV do
  if redis.call('ZREM', KEYS[2], ARGV[i]) == 1 then
    redis.call('SREM', KEYS[i + 1], ARGV[1])
    out[#out + 1] = ARGV[i]
    if ARGV[i] == creator then creator_left = true end
  end
end
if creator_left then
  local first = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #first == 0 then
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
    out[2] = ''
  else
    redis.call('HSET', KEYS[1], 'creator', first[1])
    out[2] = first[1]
  end
end
return out
""")

# KEYS: group record, its members. ARGV: who asks, then field/value pairs.
EDIT = Script("group_edit", """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'nogroup' end
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 'notmember' end
if redis.call('HGET', KEYS[1], 'creator') ~= ARGV[1] then return 'notcreator' end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 'ok'
""")

# KEYS: group record. ARGV: snap URL. Only an existing group gets one.
SET_SNAP = Script("group_set_snap", """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'snap', ARGV[1])
return 1
""")

_ERRORS = {"nogroup": GroupNotFound, "notmember": NotMember, "notcreator": NotCreator,
           "full": GroupFull}


@dataclass
class Group:
    id: str
    creator: str
    name: str
    notice: str
    snap: str
    created: int                        # ms
    members: list[str] = field(default_factory=list)   # join order


def parse_ids(text: str) -> list[str]:
    """``"1,2, 3"`` -> ``["1", "2", "3"]`` (order kept, duplicates dropped)."""
    out: list[str] = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isascii() or not part.isdigit() or len(part) > 18:
            raise InvalidInput(f"not a user id: {part[:20]}")
        uid = str(int(part))
        if uid not in out:
            out.append(uid)
    return out


class Groups:
    def __init__(self, store, bus, accounts, *, media=None, public_url: str = "",
                 max_members: int = 2000):
        self.store = store
        self.bus = bus
        self.accounts = accounts
        self.media = media
        self.public_url = public_url.rstrip("/")
        self.max_members = max_members

    # -- reading ------------------------------------------------------------------

    async def get(self, group_id) -> Group | None:
        gid = str(group_id)
        h = await self.store.hgetall(keys.group(gid))
        if not h:
            return None
        members = await self.store.execute("ZRANGE", keys.group_members(gid), 0, -1) or []
        return Group(gid, h.get("creator", ""), h.get("name", ""), h.get("notice", ""),
                     h.get("snap", ""), int(h.get("created") or 0), list(members))

    async def info(self, viewer, group_id) -> Group:
        """The group, for one of its members."""
        group = await self.get(group_id)
        if group is None:
            raise GroupNotFound()
        if str(viewer) not in group.members:
            raise NotMember()
        return group

    async def member_ids(self, viewer, group_id) -> list[str]:
        return (await self.info(viewer, group_id)).members

    async def group_ids_of(self, user_id) -> list[str]:
        ids = await self.store.execute("SMEMBERS", keys.user_groups(user_id)) or []
        return sorted(ids, key=int)

    async def groups_of(self, user_id) -> list[Group]:
        out = []
        for gid in await self.group_ids_of(user_id):
            group = await self.get(gid)
            if group is not None:
                out.append(group)
        return out

    async def is_member(self, group_id, user_id) -> bool:
        return await self.store.execute(
            "ZSCORE", keys.group_members(group_id), str(user_id)) is not None

    # -- changing -------------------------------------------------------------------

    async def _check_users(self, ids: list[str]) -> None:
        found = await self.accounts.get_many([int(i) for i in ids])
        missing = [i for i in ids if int(i) not in found]
        if missing:
            raise UnknownMembers(missing)

    async def create(self, creator, name: str = "", members=(), notice: str = "") -> Group:
        creator = str(creator)
        name, notice = _check_text(name, MAX_NAME, "name"), _check_text(notice, MAX_NOTICE,
                                                                         "notice")
        ids = [creator] + [m for m in (str(int(x)) for x in members) if m != creator]
        ids = list(dict.fromkeys(ids))
        if len(ids) > self.max_members:
            raise GroupFull()
        await self._check_users(ids)
        gid = str(await self.store.execute("INCR", keys.group_seq()))
        ms = await self.store.eval(
            CREATE, [keys.group(gid), keys.group_members(gid)]
            + [keys.user_groups(u) for u in ids],
            [gid, creator, name, notice, ""] + ids)
        log.info("group {gid} created by {creator} with {n} members", gid=gid,
                 creator=creator, n=len(ids))
        await self._announce_joined(gid, ids, int(ms))
        await self._refresh_snap(gid)
        return await self.get(gid)

    async def add_members(self, actor, group_id, members) -> list[str]:
        """Adds members; returns those who were not members yet."""
        gid, ids = str(group_id), [str(int(m)) for m in members]
        ids = list(dict.fromkeys(ids))
        if not ids:
            raise InvalidInput("no members given")
        await self._check_users(ids)
        reply = await self.store.eval(
            ADD, [keys.group(gid), keys.group_members(gid)] + [keys.user_groups(u) for u in ids],
            [gid, str(actor), self.max_members] + ids)
        if not int(reply[0]):
            raise _ERRORS[reply[1]]()
        ms, added = int(reply[1]), list(reply[2:])
        if added:
            await self._announce_joined(gid, added, ms)
            await self._refresh_snap(gid)
        return added

    async def remove_members(self, actor, group_id, members) -> list[str]:
        """Removes members (see the rules); returns those removed."""
        gid, ids = str(group_id), list(dict.fromkeys(str(int(m)) for m in members))
        if not ids:
            raise InvalidInput("no members given")
        reply = await self.store.eval(
            REMOVE, [keys.group(gid), keys.group_members(gid), keys.group_log(gid)]
            + [keys.user_groups(u) for u in ids],
            [gid, str(actor)] + ids)
        if not int(reply[0]):
            raise _ERRORS[reply[1]]()
        creator, removed = reply[1], list(reply[2:])
        for uid in removed:
            await self.bus.publish(f"user:{uid}", GROUP_LEFT_EVENT, {"group_id": gid})
        if removed and creator:
            await self._refresh_snap(gid)
        return removed

    async def edit(self, actor, group_id, *, name: str | None = None,
                   notice: str | None = None) -> None:
        fields = []
        if name is not None:
            fields += ["name", _check_text(name, MAX_NAME, "name")]
        if notice is not None:
            fields += ["notice", _check_text(notice, MAX_NOTICE, "notice")]
        if not fields:
            raise InvalidInput("nothing to change: give name or notice")
        gid = str(group_id)
        result = await self.store.eval(EDIT, [keys.group(gid), keys.group_members(gid)],
                                       [str(actor)] + fields)
        if result != "ok":
            raise _ERRORS[result]()

    async def _announce_joined(self, gid: str, ids, ms: int) -> None:
        since = f"{ms}-0"
        for uid in ids:
            await self.bus.publish(f"user:{uid}", GROUP_JOINED_EVENT,
                                   {"group_id": gid, "since": since})

    # -- the snap -------------------------------------------------------------------

    def fallback_snap(self, gid: str, refs: list[str]) -> str:
        """The snap URL while no media service composes pictures."""
        digest = hashlib.sha256("\n".join(refs).encode()).hexdigest()[:8]
        return f"{self.public_url}/media/{gid}_{digest}.jpg"

    async def _refresh_snap(self, gid: str) -> None:
        first = await self.store.execute("ZRANGE", keys.group_members(gid), 0,
                                         SNAP_MEMBERS - 1) or []
        users = await self.accounts.get_many([int(u) for u in first])
        # a member without a picture gets a generated tile of their own
        refs = [(users[int(u)].avatar if int(u) in users else "") or f"user:{u}"
                for u in first]
        if self.media is not None:
            try:
                url = await self.media.compose_grid(refs, gid)
            except Exception:
                log.failure("composing the snap of group {gid} failed", gid=gid)
                return
        else:
            url = self.fallback_snap(gid, refs)
        await self.store.eval(SET_SNAP, [keys.group(gid)], [url])


def _check_text(value: str | None, limit: int, what: str) -> str:
    value = (value or "").strip()
    if len(value) > limit:
        raise InvalidInput(f"{what} is longer than {limit} characters")
    return value
