"""
The KTV stage: who is on the mic in a room, who waits, what plays.

A room's stage is a small state machine kept in Redis:

    4 idle --(a song is queued)--> 2 asking the queue head, for ``ask_timeout``
    2 --(ack 1)--> 1 singing, for the song's duration --(end or cut)--> 3 resting
    2 --(ack 0, ``del``, timeout, the singer leaves)--> next
    3 --(after ``rest``)--> next
    5 music playing (``listen``), for the song's duration --(end, cut_music)--> next
    6 video watching (``watch`` on a free stage) --(end, cut_video, seek to the end)--> next

where *next* asks the head of the song queue (2), else plays the head of the
music queue (5), else falls idle (4).

Data flow. Each room has a hash (version, status, start, duration, the
current queue entry as JSON) and two lists (the song queue, the music queue)
of JSON entries. Every change is one Lua script: it checks the request
against the current state, changes it, increments the version and, in the
same script, PUBLISHes the full snapshot as a ``stage.changed`` event on the
room's bus topic. So the order of the pushes is the order of the versions on
every process, and a transition cannot be applied without being announced.

Timers. Every process with members in a room :meth:`StageMachine.watch`-es
it: an in-process bus listener arms one timer (on the injected clock) for the
current version's deadline. When it fires, :meth:`StageMachine.expire` runs
the transition as a compare-and-set on that version: the first process to
fire wins, the others find the version moved and simply re-arm from the state
they are handed. A stage therefore keeps moving when any one process dies.

Membership changes (from any dialect, through :mod:`imserver.core.rooms`)
are folded into the stage's version by :meth:`StageMachine.touch`; a
``seen`` key makes the processes that all receive the same member event
publish only one snapshot for it. After a lost bus link (when this process
heard neither transitions nor member events), :meth:`StageMachine.resync`
makes a new version of every watched room and re-arms its deadline.

The core knows no wire: errors are :class:`StageError` subclasses with a
``code``; the KTV dialect maps them to the document's messages.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable
from urllib.parse import quote

from twisted.internet import defer
from twisted.logger import Logger

from imserver.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from imserver.store import keys
from imserver.store.scripts import Script

log = Logger()

SINGING, ASKING, RESTING, IDLE, MUSIC, VIDEO = 1, 2, 3, 4, 5, 6
TIMED = frozenset({SINGING, ASKING, RESTING, MUSIC, VIDEO})

# How long a "seen" marker for a membership event is kept: long enough for
# every process to have received the event.
SEEN_TTL = 120
# A timer that fires this much before the deadline (clocks of two processes
# differ slightly) is re-armed rather than refused forever.
EARLY_SLACK = 0.001
RETRY_DELAY = 1.0


# -- errors -----------------------------------------------------------------

class StageError(Exception):
    """Mixin: ``code`` names the refusal for the dialects."""

    code = "refused"


class AlreadyQueued(StageError, Conflict):
    code = "queued"
    reason = "already holds a place in the queue"


class NotQueued(StageError, NotFound):
    code = "not_queued"
    reason = "no place in the song queue"


class NoMusicQueued(StageError, NotFound):
    code = "no_music"
    reason = "no song in the music queue"


class NotAsking(StageError, Conflict):
    code = "not_asking"
    reason = "nobody is being asked"


class NotYourTurn(StageError, Forbidden):
    code = "not_yours"
    reason = "somebody else is being asked"


class NotSinging(StageError, Conflict):
    code = "not_singing"
    reason = "nobody is singing"


class NotSinger(StageError, Forbidden):
    code = "not_singer"
    reason = "only the singer may cut the song"


class NotPlaying(StageError, Conflict):
    code = "not_playing"
    reason = "no music is playing"


class NotRequester(StageError, Forbidden):
    code = "not_requester"
    reason = "only who asked for the music may cut it"


class StageBusy(StageError, Conflict):
    code = "busy"
    reason = "the stage is not free"


class NoVideo(StageError, Conflict):
    code = "no_video"
    reason = "no video is playing"


class NotWatcher(StageError, Forbidden):
    code = "not_watcher"
    reason = "only who started the video may cut it"


class BadSeek(StageError, InvalidInput):
    code = "bad_seek"
    reason = "position outside the video"


_ERRORS = {cls.code: cls for cls in (
    AlreadyQueued, NotQueued, NoMusicQueued, NotAsking, NotYourTurn, NotSinging,
    NotSinger, NotPlaying, NotRequester, StageBusy, NoVideo, NotWatcher, BadSeek)}


# -- domain objects -----------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """A place in a queue, or what is on the stage: a song or a video."""

    fullname: str
    nick: str = ""
    sid: str = ""
    name: str = ""
    author: str = ""
    lrc: str = ""
    link: str = ""
    duration: float = 0.0
    vid: str = ""

    def to_json(self) -> str:
        return json.dumps({"fullname": self.fullname, "nick": self.nick, "sid": self.sid,
                           "name": self.name, "author": self.author, "lrc": self.lrc,
                           "link": self.link, "duration": self.duration, "vid": self.vid},
                          ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict) -> "Entry":
        return cls(fullname=str(d.get("fullname", "")), nick=str(d.get("nick", "")),
                   sid=str(d.get("sid", "")), name=str(d.get("name", "")),
                   author=str(d.get("author", "")), lrc=str(d.get("lrc", "")),
                   link=str(d.get("link", "")), duration=float(d.get("duration") or 0),
                   vid=str(d.get("vid", "")))


@dataclass(frozen=True)
class Snapshot:
    """One version of a room's stage, as every member is shown it."""

    room: str
    version: int
    status: int
    start: float
    duration: float
    item: Entry | None
    songs: tuple[Entry, ...]
    musics: tuple[Entry, ...]
    info: dict = field(default_factory=dict)
    reason: str = ""

    @property
    def members(self) -> list:
        members = self.info.get("members")
        return members if isinstance(members, list) else []

    @property
    def end(self) -> float:
        return self.start + self.duration

    @classmethod
    def from_data(cls, d: dict) -> "Snapshot":
        """From the ``stage.changed`` event data (also what the scripts return)."""
        def entries(v):
            return tuple(Entry.from_dict(e) for e in v) if isinstance(v, list) else ()

        item = d.get("item")
        info = d.get("info")
        return cls(room=str(d["room"]), version=int(d["version"]), status=int(d["status"]),
                   start=float(d["start"]), duration=float(d["duration"]),
                   item=Entry.from_dict(item) if isinstance(item, dict) else None,
                   songs=entries(d.get("songs")), musics=entries(d.get("musics")),
                   info=info if isinstance(info, dict) else {},
                   reason=str(d.get("reason") or ""))


@dataclass
class Outcome:
    changed: bool
    snapshot: Snapshot | None
    extra: dict = field(default_factory=dict)


# -- Lua ------------------------------------------------------------------------
#
# Every script gets KEYS = stage hash, song list, music list, bus channel,
# seen marker; ARGV = now, ask timeout, rest, idle duration, room, room info
# (a JSON object: members etc., carried as is), origin (process id), then its
# own arguments from ARGV[8].
# It returns JSON: {"ok":true,"changed":…,"state":{…}} or {"ok":false,"error":code}.

_PRELUDE = r"""
local K_STAGE, K_SONGS, K_MUSICS, K_CHAN, K_SEEN = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local NOW_TEXT = ARGV[1]
local now = tonumber(ARGV[1])
local ASK, REST, IDLE = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ROOM, INFO, ORIGIN = ARGV[5], ARGV[6], ARGV[7]

if redis.call('EXISTS', K_STAGE) == 0 then
  redis.call('HSET', K_STAGE, 'ver', '0', 'status', '4', 'start', NOW_TEXT,
             'dur', ARGV[4], 'item', '')
end
local st = redis.call('HMGET', K_STAGE, 'ver', 'status', 'start', 'dur', 'item')
local status = tonumber(st[2])
local start, dur = tonumber(st[3]), tonumber(st[4])
local item_raw = st[5] or ''
local item = nil
if item_raw ~= '' then item = cjson.decode(item_raw) end

local function num(x)
  if x == math.floor(x) and math.abs(x) < 1e15 then return string.format('%d', x) end
  return string.format('%.14g', x)
end

local function set_state(new_status, new_dur, raw)
  status, start, dur, item_raw = new_status, now, new_dur, raw or ''
  item = nil
  if item_raw ~= '' then item = cjson.decode(item_raw) end
  redis.call('HSET', K_STAGE, 'status', tostring(status), 'start', NOW_TEXT,
             'dur', num(dur), 'item', item_raw)
end

local function entry_duration(raw)
  return tonumber(cjson.decode(raw).duration) or 0
end

-- What comes after a song, an ask, a rest, a music or a video.
local function next_activity()
  local head = redis.call('LPOP', K_SONGS)
  if head then return set_state(2, ASK, head) end
  head = redis.call('LPOP', K_MUSICS)
  if head then return set_state(5, entry_duration(head), head) end
  return set_state(4, IDLE, '')
end

-- Removes the entry of `who` from a queue; true if there was one.
local function remove_from(list, who)
  for _, raw in ipairs(redis.call('LRANGE', list, 0, -1)) do
    if cjson.decode(raw).fullname == who then
      redis.call('LREM', list, 1, raw)
      return true
    end
  end
  return false
end

local function queued_in(list, who)
  for _, raw in ipairs(redis.call('LRANGE', list, 0, -1)) do
    if cjson.decode(raw).fullname == who then return true end
  end
  return false
end

local function snapshot(reason)
  local h = redis.call('HMGET', K_STAGE, 'ver', 'status', 'start', 'dur', 'item')
  local songs = redis.call('LRANGE', K_SONGS, 0, -1)
  local musics = redis.call('LRANGE', K_MUSICS, 0, -1)
  local it = h[5]
  if not it or it == '' then it = 'null' end
  return '{"room":' .. cjson.encode(ROOM) .. ',"version":' .. h[1] ..
         ',"status":' .. h[2] .. ',"start":' .. h[3] .. ',"duration":' .. h[4] ..
         ',"item":' .. it .. ',"songs":[' .. table.concat(songs, ',') ..
         '],"musics":[' .. table.concat(musics, ',') .. '],"info":' .. INFO ..
         ',"reason":' .. cjson.encode(reason) .. '}'
end

local function commit(reason, extra)
  redis.call('HINCRBY', K_STAGE, 'ver', 1)
  local data = snapshot(reason)
  redis.call('PUBLISH', K_CHAN, '{"k":"stage.changed","d":' .. data ..
             ',"x":null,"t":' .. NOW_TEXT .. ',"o":' .. cjson.encode(ORIGIN) .. '}')
  return '{"ok":true,"changed":true,"extra":' .. (extra or '{}') .. ',"state":' .. data .. '}'
end

local function unchanged()
  return '{"ok":true,"changed":false,"extra":{},"state":' .. snapshot('') .. '}'
end

local function refuse(code)
  return '{"ok":false,"error":' .. cjson.encode(code) .. '}'
end
"""


def _script(name: str, body: str) -> Script:
    return Script("ktv_stage_" + name, _PRELUDE + body)


# ARGV[8]: nothing. Reads (creating an idle stage when there is none).
SNAPSHOT = _script("snapshot", "return unchanged()")

# ARGV[8]: seen TTL (0: no marker). Folds a membership change into the version.
TOUCH = _script("touch", """
local ttl = tonumber(ARGV[8])
if ttl > 0 and not redis.call('SET', K_SEEN, '1', 'NX', 'EX', ttl) then
  return '{"ok":true,"changed":false,"extra":{},"state":null}'
end
return commit(ARGV[9])
""")

# ARGV[8]: fullname, ARGV[9]: entry JSON.
SING = _script("sing", """
local who = ARGV[8]
if queued_in(K_SONGS, who) or (status == 2 and item and item.fullname == who) then
  return refuse('queued')
end
redis.call('RPUSH', K_SONGS, ARGV[9])
if status == 4 then next_activity() end
return commit('sing')
""")

LISTEN = _script("listen", """
local who = ARGV[8]
if queued_in(K_MUSICS, who) then return refuse('queued') end
redis.call('RPUSH', K_MUSICS, ARGV[9])
if status == 4 then next_activity() end
return commit('listen')
""")

# ARGV[8]: fullname. Leaving the queue while being asked is declining.
DELETE = _script("delete", """
local who = ARGV[8]
if remove_from(K_SONGS, who) then return commit('del') end
if status == 2 and item and item.fullname == who then
  next_activity()
  return commit('del')
end
return refuse('not_queued')
""")

DELETE_MUSIC = _script("delete_music", """
if remove_from(K_MUSICS, ARGV[8]) then return commit('del_music') end
return refuse('no_music')
""")

# ARGV[8]: fullname, ARGV[9]: ack ("1" or "0").
ASK_SCRIPT = _script("ask", """
local who = ARGV[8]
if status ~= 2 or not item then return refuse('not_asking') end
if item.fullname ~= who then return refuse('not_yours') end
if ARGV[9] == '1' then
  set_state(1, tonumber(item.duration) or 0, item_raw)
else
  next_activity()
end
return commit('ask')
""")

# ARGV[8]: fullname, ARGV[9]: "1" when a room manager may cut anyone's song.
CUT = _script("cut", """
if status ~= 1 or not item then return refuse('not_singing') end
if item.fullname ~= ARGV[8] and ARGV[9] ~= '1' then return refuse('not_singer') end
set_state(3, REST, '')
return commit('cut')
""")

CUT_MUSIC = _script("cut_music", """
if status ~= 5 or not item then return refuse('not_playing') end
if item.fullname ~= ARGV[8] and ARGV[9] ~= '1' then return refuse('not_requester') end
next_activity()
return commit('cut_music')
""")

# ARGV[8]: fullname, ARGV[9]: video entry JSON.
WATCH = _script("watch", """
if status ~= 4 then return refuse('busy') end
set_state(6, entry_duration(ARGV[9]), ARGV[9])
return commit('watch')
""")

CUT_VIDEO = _script("cut_video", """
if status ~= 6 or not item then return refuse('no_video') end
if item.fullname ~= ARGV[8] and ARGV[9] ~= '1' then return refuse('not_watcher') end
next_activity()
return commit('cut_video')
""")

# ARGV[8]: fullname, ARGV[9]: the position (seconds) to seek to.
SEEK = _script("seek", """
if status ~= 6 or not item then return refuse('no_video') end
local current = tonumber(ARGV[9])
if not current or current ~= current or current < 0 or current > dur then
  return refuse('bad_seek')
end
if current == dur then
  next_activity()
  return commit('set_duration')
end
start = now - current
redis.call('HSET', K_STAGE, 'start', num(start))
return commit('set_duration')
""")

# ARGV[8]: the version whose deadline passed. Compare-and-set: only the first
# caller for that version moves the stage; the others get the current state.
EXPIRE = _script("expire", """
if tonumber(st[1]) ~= tonumber(ARGV[8]) or status == 4 then return unchanged() end
if now + """ + repr(EARLY_SLACK) + """ < start + dur then return unchanged() end
if status == 1 then
  set_state(3, REST, '')
else
  next_activity()
end
return commit('expire')
""")

# ARGV[8]: fullname. A member left the room: their queue places go, an ask
# of theirs is declined and their song ends; music and videos play on.
MEMBER_GONE = _script("member_gone", """
local who = ARGV[8]
local changed = remove_from(K_SONGS, who)
changed = remove_from(K_MUSICS, who) or changed
if item and item.fullname == who then
  if status == 2 then
    next_activity()
    changed = true
  elseif status == 1 then
    set_state(3, REST, '')
    changed = true
  end
end
if changed then return commit('leave') end
return unchanged()
""")


# -- the machine ------------------------------------------------------------------

Describe = Callable[[str], Awaitable[dict]]


class StageMachine:
    """
    The stages of all rooms, for one process.

    ``describe(room)`` returns what else every snapshot carries about the
    room (a JSON-able dict: its members, its cover), read just before each
    transition. ``clock`` schedules the deadlines (a ``task.Clock`` in tests).
    """

    def __init__(self, store, bus, clock, describe: Describe, *,
                 ask_timeout: float = 15.0, rest: float = 30.0,
                 idle_duration: float = 86400.0):
        self.store = store
        self.bus = bus
        self.clock = clock
        self.describe = describe
        self.ask_timeout = float(ask_timeout)
        self.rest = float(rest)
        self.idle_duration = float(idle_duration)
        self._watch_count: dict[str, int] = {}
        self._listeners: dict[str, Any] = {}
        self._timers: dict[str, tuple[int, Any]] = {}
        self._armed_version: dict[str, int] = {}
        self._inflight: set[defer.Deferred] = set()

    # -- running scripts -----------------------------------------------------

    async def _run(self, script: Script, room: str, *args, seen: str = "") -> Outcome:
        info = await self.describe(room)
        q = quote(room, safe="")
        argv = [repr(float(self.clock.seconds())), _num(self.ask_timeout), _num(self.rest),
                _num(self.idle_duration), room,
                json.dumps(info, ensure_ascii=False, separators=(",", ":")),
                self.bus.process_id, *[str(a) for a in args]]
        reply = await self.store.eval(
            script, [keys.ktv_stage(q), keys.ktv_songs(q), keys.ktv_musics(q),
                     keys.bus_channel(topic(room)), seen or keys.ktv_seen(q, "-")],
            argv)
        if isinstance(reply, bytes):
            reply = reply.decode()
        result = json.loads(reply)
        if not result.get("ok"):
            raise _ERRORS[result["error"]]()
        state = result.get("state")
        outcome = Outcome(bool(result.get("changed")),
                          Snapshot.from_data(state) if state else None,
                          result.get("extra") or {})
        if outcome.snapshot is not None and self._watch_count.get(room):
            # Arm from what we just saw too, not only from the bus echo: if the
            # pub/sub link is down the stage still moves.
            self._arm(outcome.snapshot)
        return outcome

    # -- requests -------------------------------------------------------------

    async def snapshot(self, room: str) -> Snapshot:
        return (await self._run(SNAPSHOT, room)).snapshot

    async def touch(self, room: str, reason: str = "members", seen: str | None = None) -> Outcome:
        """A new version for a membership change; with ``seen``, once per marker."""
        marker = keys.ktv_seen(quote(room, safe=""), seen) if seen else ""
        return await self._run(TOUCH, room, SEEN_TTL if seen else 0, reason, seen=marker)

    async def sing(self, room: str, entry: Entry) -> Outcome:
        _check_duration(entry.duration)
        return await self._run(SING, room, entry.fullname, entry.to_json())

    async def listen(self, room: str, entry: Entry) -> Outcome:
        _check_duration(entry.duration)
        return await self._run(LISTEN, room, entry.fullname, entry.to_json())

    async def delete(self, room: str, fullname: str) -> Outcome:
        return await self._run(DELETE, room, fullname)

    async def delete_music(self, room: str, fullname: str) -> Outcome:
        return await self._run(DELETE_MUSIC, room, fullname)

    async def ask(self, room: str, fullname: str, ack: bool) -> Outcome:
        return await self._run(ASK_SCRIPT, room, fullname, "1" if ack else "0")

    async def cut(self, room: str, fullname: str, manager: bool = False) -> Outcome:
        return await self._run(CUT, room, fullname, "1" if manager else "0")

    async def cut_music(self, room: str, fullname: str, manager: bool = False) -> Outcome:
        return await self._run(CUT_MUSIC, room, fullname, "1" if manager else "0")

    async def watch(self, room: str, entry: Entry) -> Outcome:
        _check_duration(entry.duration)
        return await self._run(WATCH, room, entry.fullname, entry.to_json())

    async def cut_video(self, room: str, fullname: str, manager: bool = False) -> Outcome:
        return await self._run(CUT_VIDEO, room, fullname, "1" if manager else "0")

    async def seek(self, room: str, fullname: str, current: float) -> Outcome:
        if not isinstance(current, (int, float)) or not math.isfinite(current):
            raise BadSeek()
        return await self._run(SEEK, room, fullname, _num(current))

    async def expire(self, room: str, version: int) -> Outcome:
        """The deadline of ``version`` passed: move on, unless someone already did."""
        return await self._run(EXPIRE, room, int(version))

    async def member_gone(self, room: str, fullname: str) -> Outcome:
        return await self._run(MEMBER_GONE, room, fullname)

    # -- timers -----------------------------------------------------------------

    def watch_room(self, room: str) -> defer.Deferred:
        """This process has members in ``room``: follow its deadlines.

        Calls nest; each needs an :meth:`unwatch_room`. Returns a Deferred
        that fires once the current deadline is armed.
        """
        n = self._watch_count.get(room, 0)
        self._watch_count[room] = n + 1
        if n:
            return defer.succeed(None)
        listener = self._listeners[room] = self.bus.listen(topic(room), self._on_event)
        return self._track(self._start_watching(room, getattr(listener, "ready", None)))

    def unwatch_room(self, room: str) -> None:
        n = self._watch_count.get(room, 0) - 1
        if n > 0:
            self._watch_count[room] = n
            return
        self._watch_count.pop(room, None)
        listener = self._listeners.pop(room, None)
        if listener is not None:
            self.bus.unsubscribe(topic(room), listener)
        self._cancel(room)
        self._armed_version.pop(room, None)

    def watched(self) -> list[str]:
        return sorted(self._watch_count)

    def resync(self) -> defer.Deferred:
        """
        The bus link came back: members may have come and gone and other
        processes may have moved the stages meanwhile. Each watched room gets
        a new version (its members as they are now), and its deadline is
        armed from it. Fires with ``{room: Snapshot}`` of the rooms it could read.
        """
        return self._track(self._resync())

    async def _resync(self) -> dict:
        rooms = list(self._watch_count)
        results = await defer.DeferredList(
            [defer.ensureDeferred(self.touch(room, "resync")) for room in rooms],
            consumeErrors=True)
        found = {}
        for room, (ok, outcome) in zip(rooms, results):
            if ok and outcome.snapshot is not None:
                found[room] = outcome.snapshot
            elif not ok:
                log.warn("stage of {room} not resynchronised: {e}", room=room,
                         e=outcome.getErrorMessage())
        return found

    def stop(self) -> None:
        for room in list(self._watch_count):
            self._watch_count[room] = 1
            self.unwatch_room(room)

    async def settle(self) -> None:
        """Wait for the transitions this process has in flight (tests)."""
        while self._inflight:
            await defer.DeferredList(list(self._inflight), consumeErrors=True)

    def _track(self, coro) -> defer.Deferred:
        d = defer.ensureDeferred(coro)
        self._inflight.add(d)

        def done(result):
            self._inflight.discard(d)
            return result

        d.addBoth(done)
        d.addErrback(lambda f: log.failure("KTV stage timer work failed", f))
        return d

    async def _start_watching(self, room: str, subscribed) -> None:
        if subscribed is not None:
            # member events published from now on must reach the listener
            await subscribed
        await self._arm_from_store(room)

    async def _arm_from_store(self, room: str) -> None:
        try:
            snap = await self.snapshot(room)
        except Exception as e:
            log.warn("cannot read the stage of {room}: {e}", room=room, e=e)
            if self._watch_count.get(room):
                self._schedule(room, -1, RETRY_DELAY)
            return
        if snap is not None and self._watch_count.get(room):
            self._arm(snap)

    def _on_event(self, event) -> None:
        room = room_of(event.topic)
        if room is None or not self._watch_count.get(room):
            return
        if event.kind == "stage.changed":
            try:
                self._arm(Snapshot.from_data(event.data))
            except (KeyError, TypeError, ValueError):
                log.warn("malformed stage event on {topic}", topic=event.topic)
        elif event.kind in ("room.member_joined", "room.member_left"):
            marker = member_event_marker(event)
            self._track(self.touch(room, "members", seen=marker))

    def _arm(self, snap: Snapshot) -> None:
        room = snap.room
        if snap.version < self._armed_version.get(room, -1):
            return  # an older state than one already seen
        self._armed_version[room] = snap.version
        self._cancel(room)
        if snap.status not in TIMED:
            return
        delay = max(0.0, snap.end - self.clock.seconds())
        self._schedule(room, snap.version, delay)

    def _schedule(self, room: str, version: int, delay: float) -> None:
        self._cancel(room)
        call = self.clock.callLater(delay, self._fire, room, version)
        self._timers[room] = (version, call)

    def _cancel(self, room: str) -> None:
        timer = self._timers.pop(room, None)
        if timer is not None and timer[1].active():
            timer[1].cancel()

    def _fire(self, room: str, version: int) -> None:
        self._timers.pop(room, None)
        if not self._watch_count.get(room):
            return
        self._track(self._expire_and_rearm(room, version))

    async def _expire_and_rearm(self, room: str, version: int) -> None:
        if version < 0:
            await self._arm_from_store(room)
            return
        try:
            outcome = await self.expire(room, version)
        except Exception as e:
            log.warn("stage deadline of {room} failed: {e}; retrying", room=room, e=e)
            if self._watch_count.get(room):
                self._schedule(room, version, RETRY_DELAY)
            return
        snap = outcome.snapshot
        if outcome.changed or snap is None or not self._watch_count.get(room):
            return  # _run armed the next deadline already
        if snap.version == version and snap.status in TIMED:
            # We fired early (another process's clock); come back at the deadline.
            self._armed_version[room] = version
            self._schedule(room, version, max(snap.end - self.clock.seconds(), 0.01))


# -- what a snapshot says about the room ------------------------------------------------

class RoomDescriber:
    """
    ``describe(room)`` for the :class:`StageMachine`: the room's members, one
    per user whichever dialect and however many connections (guests, who
    cannot be addressed on a stage, are left out), and its cover.

    A KTV member is ``fullname`` (the phone, else the member's name), ``nick``
    (the nickname, else the fullname) and ``avatar``. Nicknames and covers
    change rarely and are read on every transition, so they are cached for
    ``ttl`` seconds.
    """

    def __init__(self, rooms, accounts, clock, ttl: float = 10.0):
        self.rooms = rooms
        self.accounts = accounts
        self.clock = clock
        self.ttl = ttl
        self._nicks: dict[int, tuple[float, str]] = {}
        self._covers: dict[str, tuple[float, str]] = {}

    async def __call__(self, room: str) -> dict:
        rows = await self.rooms.members(room)
        now = self.clock.seconds()
        users = {}
        for _, m in rows:
            if m.user_id is not None and m.user_id not in users:
                users[m.user_id] = m
        stale = [uid for uid in users
                 if uid not in self._nicks or self._nicks[uid][0] < now]
        if stale:
            found = await self.accounts.get_many(stale)
            for uid in stale:
                u = found.get(uid)
                self._nicks[uid] = (now + self.ttl, (u.nickname if u else "") or "")
        if len(self._nicks) > 10000:
            self._nicks = {k: v for k, v in self._nicks.items() if v[0] >= now}
        members = []
        for uid, m in users.items():
            fullname = m.phone or m.name
            members.append({"fullname": fullname, "nick": self._nicks[uid][1] or fullname,
                            "avatar": m.avatar, "user_id": uid})
        cached = self._covers.get(room)
        if cached is None or cached[0] < now:
            info = await self.rooms.get(room)
            cached = self._covers[room] = (now + self.ttl, info.cover if info else "")
            if len(self._covers) > 10000:
                self._covers = {k: v for k, v in self._covers.items() if v[0] >= now}
        return {"members": members, "cover": cached[1]}

    def forget(self, user_id: int) -> None:
        """A profile changed: read the nickname again next time."""
        self._nicks.pop(user_id, None)


# -- helpers ------------------------------------------------------------------------

def topic(room: str) -> str:
    return f"room:{room}"


def room_of(topic_name: str) -> str | None:
    return topic_name[5:] if topic_name.startswith("room:") else None


def member_event_marker(event) -> str:
    """The same text on every process for one membership event."""
    data = event.data if isinstance(event.data, dict) else {}
    who = data.get("conn_id") or data.get("user_id") or ""
    return f"{event.kind}:{who}:{event.ts!r}"


def _num(x: float) -> str:
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def _check_duration(duration: float) -> None:
    if not isinstance(duration, (int, float)) or not math.isfinite(duration) \
            or duration <= 0 or duration > 7 * 86400:
        raise InvalidInput("duration must be a positive number of seconds")
