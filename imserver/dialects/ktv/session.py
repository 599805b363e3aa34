"""
One KTV connection's conversation with the server, free of any transport.

The Autobahn protocol (:mod:`imserver.dialects.ktv.ws`) hands each frame to
:meth:`KtvSession.received`; the session decodes it (:mod:`.codec`), checks
who sent it, calls the core (rooms, the stage machine, the catalogue) and
writes direct replies through its ``link`` (the protocol: ``send``, ``push``,
``drop``, ``follow_topic``, ``unfollow_topic``, ``finished``). Frames are
handled one after the other, in arrival order, and the clean-up after a
disconnect runs after the last of them.

Pushes do not come from here: every change is a bus event on ``room:<name>``
(``stage.changed`` from the stage's Lua scripts, ``room.message`` from
rooms, ``ktv.device``), which the bus hands to :meth:`deliver` already
encoded. Stage pushes carry a version; a session forwards only versions
newer than the last it forwarded, so a late or repeated event never shows an
older state.

``join`` has no reply of its own: the join is a ``room.member_joined`` event,
which the stage folds into a new version pushed to every member, the joiner
included (the original server's behaviour).

When the bus link to Redis comes back after a loss, the session catches up
(:meth:`catch_up`): the room status as it is now (a new version: members
may have changed), then the chat it missed, in order and once
(:class:`~imserver.core.rooms.RoomFeed`), then what arrived meanwhile.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from imserver.core import stage as st
from imserver.core.errors import CoreError, InvalidInput
from imserver.core.rooms import AlreadyJoined, Member, RoomFeed, RoomFull, RoomNotFound, TooFast
from imserver.core.stage import Entry
from imserver.dialects.ktv import codec
from imserver.dialects.ktv.codec import CONTROL, BadRequest, Request
from imserver.store.redis import StoreError, StoreTimeout

log = Logger()

CLOSE_IDLE = 4000        # no message within the idle timeout
CLOSE_REPLACED = 4002    # a ``reconnect`` on another connection took over
MAX_PENDING = 32         # frames waiting to be handled before we refuse more
VERIFIED_FOR = 30.0      # seconds a checked token is trusted without a lookup


class Refusal(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def ktv_fullname(user) -> str:
    """A user's 002 ``fullname``: the phone, as the document has it."""
    return user.phone or user.username or str(user.id)


def room_topic(room: str) -> str:
    return f"room:{room}"


class KtvSession:
    def __init__(self, deps, link, conn_id: str):
        self.deps = deps
        self.link = link
        self.conn_id = conn_id
        self.clock = deps.clock
        self.user = None
        self.fullname: str | None = None
        self.room: str | None = None
        self.last_version = -1
        self.closed = False
        self.feed = RoomFeed(deps.rooms, deps.clock, roster=False)
        self._verified: dict[tuple[str, str], tuple[object, float]] = {}
        self._tail: defer.Deferred = defer.succeed(None)
        self._pending = 0
        self._idle = None

    # -- life cycle ------------------------------------------------------------

    def opened(self) -> None:
        self._rearm_idle()
        self._enqueue(self.deps.presence.connect(self.conn_id, None, "ktv"))

    def received(self, payload) -> None:
        if self.closed:
            return
        self._rearm_idle()
        if self._pending >= MAX_PENDING:
            self.link.send(codec.failure(codec.TOO_FAST, self.clock.seconds()))
            return
        self._pending += 1

        def done(result):
            self._pending -= 1
            return result

        self._enqueue(self._handle(payload)).addBoth(done)

    def lost(self) -> defer.Deferred:
        """The connection is gone: leave the room once pending frames are handled."""
        if self.closed:
            return self._tail
        self.closed = True
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        return self._enqueue(self._cleanup())

    def _enqueue(self, coro) -> defer.Deferred:
        def run(_):
            return defer.ensureDeferred(coro)

        d = self._tail.addBoth(run)
        d.addErrback(lambda f: log.failure("KTV session {conn} failed", f, conn=self.conn_id))
        return d

    async def _cleanup(self) -> None:
        try:
            if self.room is not None:
                await self._leave("close")
            await self.deps.presence.disconnect(self.conn_id)
        finally:
            self.feed.close()
            self.link.finished()

    def _rearm_idle(self) -> None:
        timeout = self.deps.idle_timeout
        if not timeout:
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(timeout)
        else:
            self._idle = self.clock.callLater(timeout, self._went_silent)

    def _went_silent(self) -> None:
        self._idle = None
        log.info("KTV connection {conn} silent; dropping it", conn=self.conn_id)
        self.link.drop(CLOSE_IDLE, "no heartbeat")

    # -- pushes ------------------------------------------------------------------

    def deliver(self, event, wire) -> None:
        if wire is CONTROL:
            data = event.data if isinstance(event.data, dict) else {}
            if event.kind == "ktv.replaced" and data.get("conn_id") == self.conn_id:
                self.link.drop(CLOSE_REPLACED, "replaced by a new connection")
            return
        if self.feed.admit(event, wire):
            self._show(event, wire)

    def _show(self, event, wire) -> None:
        if event.kind == "stage.changed":
            if self.room is None or event.topic != room_topic(self.room):
                return
            try:
                version = int(event.data["version"])
            except (KeyError, TypeError, ValueError):
                return
            if version <= self.last_version:
                return
            self.last_version = version
            self.link.push(wire, status=True)   # a slow client may get only the newest
            return
        self.link.push(wire)

    def catch_up(self, resync, stage_found) -> None:
        """
        The bus link came back: hold pushes, then (after the frames already
        queued) show the stage as it is and the chat that was missed.
        ``resync`` is from ``Rooms.resync``, ``stage_found`` fires with the
        stage machine's ``{room: Snapshot}``.
        """
        if self.closed:
            return
        self.feed.hold()
        self._enqueue(self._catch_up(resync, stage_found))

    async def _catch_up(self, resync, stage_found) -> None:
        room = self.room
        if room is not None and not self.closed:
            try:
                snap = (await stage_found or {}).get(room)
                if snap is None:
                    snap = await self.deps.stage.snapshot(room)
                if snap.version > self.last_version and self.room == room:
                    self.last_version = snap.version
                    self.link.push(codec.status_push(snap, self.clock.seconds()), status=True)
            except Exception:
                log.failure("KTV session {conn}: the stage after a lost bus link",
                            conn=self.conn_id)
        await self.feed.catch_up(resync, self.deps.codec, self._show)

    # -- requests ----------------------------------------------------------------

    def _send(self, text: str) -> None:
        self.link.send(text)

    async def _handle(self, payload) -> None:
        now = self.clock.seconds()
        try:
            req = codec.decode(payload, self.deps.max_message)
        except BadRequest as e:
            self._send(codec.failure(e.message, now, e.action, e.fullname))
            return
        try:
            if not await self.deps.limits.allow("ktv", self.conn_id,
                                                self.deps.messages_per_second, 1):
                raise Refusal(codec.TOO_FAST)
            await self._dispatch(req)
        except Refusal as e:
            self._fail(req, e.message)
        except st.StageError as e:
            self._fail(req, codec.stage_message(e))
        except RoomFull:
            self._fail(req, codec.ROOM_FULL)
        except AlreadyJoined:
            self._fail(req, codec.ALREADY_IN)
        except RoomNotFound:
            self._fail(req, codec.NOT_JOINED)
        except InvalidInput as e:
            self._fail(req, e.reason)
        except CoreError as e:
            self._fail(req, e.reason)
        except (StoreError, StoreTimeout) as e:
            log.warn("KTV {action} failed: {e}", action=req.action, e=e)
            self._fail(req, codec.BUSY)
        except Exception:
            log.failure("KTV {action} failed", action=req.action)
            self._fail(req, codec.BUSY)

    def _fail(self, req: Request, message: str) -> None:
        self._send(codec.failure(message, self.clock.seconds(), req.action, req.fullname))

    def _reply(self, req: Request, body, **kw) -> None:
        self._send(codec.reply(req, body, self.clock.seconds(), **kw))

    async def _dispatch(self, req: Request) -> None:
        if req.action == "close":
            self._reply(req, {})
            self.link.drop(1000, "closed on request")
            return
        if req.action == "join":
            await self._join(req)
            return
        if req.action == "reconnect":
            await self._reconnect(req)
            return
        if self.room is None or (req.room and req.room != self.room):
            raise Refusal(codec.NOT_JOINED)
        user = await self._authenticate(req)
        if self.user is None or user.id != self.user.id:
            raise Refusal(codec.AUTH_FAILED)
        await getattr(self, "_do_" + req.action)(req)

    async def _authenticate(self, req: Request):
        """The user whose token this is, who must be the request's ``fullname``."""
        now = self.clock.seconds()
        key = (req.token, req.fullname)
        cached = self._verified.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        accounts = self.deps.accounts
        if not req.token:
            user = await accounts.get_by_phone(req.fullname) if self.deps.legacy_auth else None
        else:
            user = await accounts.user_for_token(req.token)
        if user is None or ktv_fullname(user) != req.fullname:
            raise Refusal(codec.AUTH_FAILED)
        if len(self._verified) > 8:
            self._verified.clear()
        self._verified[key] = (user, now + VERIFIED_FOR)
        return user

    # -- joining and leaving ---------------------------------------------------------

    async def _join(self, req: Request) -> None:
        user = await self._authenticate(req)
        if self.room == req.room:
            raise Refusal(codec.ALREADY_IN)
        for _, m in await self.deps.rooms.members(req.room):
            if m.user_id == user.id:
                raise Refusal(codec.ALREADY_IN)
        if self.room is not None:
            await self._leave("leave")
        await self._enter(req.room, user)

    async def _reconnect(self, req: Request) -> None:
        """Take over the user's place in the room from their other connections."""
        user = await self._authenticate(req)
        room = req.room or self.room
        if not room:
            raise Refusal("缺少参数: room")
        rows = await self.deps.rooms.members(room)
        others = [conn for conn, m in rows if m.user_id == user.id and conn != self.conn_id]
        if self.room != room:
            if self.room is not None:
                await self._leave("leave")
            await self._enter(room, user)
        for conn in others:
            await self.deps.bus.publish(f"user:{user.id}", "ktv.replaced",
                                        {"conn_id": conn, "by": self.conn_id, "room": room})
        self._reply(req, {})

    async def _enter(self, room: str, user) -> None:
        deps = self.deps
        fullname = ktv_fullname(user)
        self.last_version = -1
        await deps.stage.watch_room(room)
        try:
            # subscribed before the join is announced: the joiner sees its own join
            await self.link.follow_topic(room_topic(room))
            await self.link.follow_topic(f"user:{user.id}")
            await deps.presence.connect(self.conn_id, user.id, "ktv",
                                        {"room": room, "fullname": fullname})
            result = await deps.rooms.join(room, Member.from_user(user), self.conn_id, "ktv",
                                           capacity=deps.capacity)
        except BaseException:
            self.link.unfollow_topic(room_topic(room))
            self.link.unfollow_topic(f"user:{user.id}")
            deps.stage.unwatch_room(room)
            raise
        self.room, self.user, self.fullname = room, user, fullname
        self.feed.entered(room, result)

    async def _leave(self, reason: str) -> None:
        room, user, fullname = self.room, self.user, self.fullname
        self.room = None
        self.feed.left(room)
        self.link.unfollow_topic(room_topic(room))
        self.link.unfollow_topic(f"user:{user.id}")
        deps = self.deps
        try:
            await deps.rooms.leave(room, self.conn_id, reason)
            if not any(m.user_id == user.id for _, m in await deps.rooms.members(room)):
                await deps.stage.member_gone(room, fullname)
        finally:
            deps.stage.unwatch_room(room)

    # -- the stage ----------------------------------------------------------------------

    def _nick(self) -> str:
        return (self.user.nickname or self.fullname) if self.user else ""

    async def _is_manager(self) -> bool:
        if self.user.level == "admin":
            return True
        room = await self.deps.rooms.get(self.room)
        return room is not None and room.creator_id == self.user.id

    async def _song(self, req: Request) -> Entry:
        sid = req.args["sid"]
        song = await self.deps.catalog.get_song(sid) if self.deps.catalog else None
        song = song or {}
        return Entry(fullname=self.fullname, nick=self._nick(), sid=sid,
                     name=song.get("name", ""), author=song.get("author", ""),
                     lrc=song.get("lrc", ""), link=song.get("link", ""),
                     duration=req.args["duration"])

    async def _do_status(self, req: Request) -> None:
        snap = await self.deps.stage.snapshot(self.room)
        self._reply(req, codec.status_body(snap, self.clock.seconds()))

    async def _do_ask(self, req: Request) -> None:
        await self.deps.stage.ask(self.room, self.fullname, req.args["ack"])

    async def _do_cut(self, req: Request) -> None:
        try:
            await self.deps.stage.cut(self.room, self.fullname)
        except st.NotSinger:
            if not await self._is_manager():
                raise
            await self.deps.stage.cut(self.room, self.fullname, manager=True)

    async def _do_boardcast(self, req: Request) -> None:
        await self.deps.stage.touch(self.room, "boardcast")

    async def _do_sing(self, req: Request) -> None:
        await self.deps.stage.sing(self.room, await self._song(req))
        self._reply(req, {})

    async def _do_del(self, req: Request) -> None:
        await self.deps.stage.delete(self.room, self.fullname)
        self._reply(req, {}, message=codec.DELETED)

    async def _do_heart(self, req: Request) -> None:
        self._reply(req, {"heart": "success"}, type_=self.deps.heart_type)

    async def _do_chat(self, req: Request) -> None:
        try:
            await self.deps.rooms.post(
                self.room, Member.from_user(self.user), req.args["content"], dialect="ktv",
                conn_id=self.conn_id, extra={"nick": self._nick(), "fullname": self.fullname})
        except TooFast:   # the user's rate, all connections and processes together
            raise Refusal(codec.CHAT_TOO_FAST) from None

    async def _do_history(self, req: Request) -> None:
        messages = await self.deps.rooms.history(self.room, limit=200)
        self._reply(req, [codec.history_entry(m.to_dict()) for m in messages],
                    type_=codec.TYPE_CHAT)

    async def _do_device(self, req: Request) -> None:
        await self.deps.bus.publish(room_topic(self.room), "ktv.device", {
            "room": self.room, "fullname": self.fullname, "device": req.args["device"],
            "value": req.args["value"]})

    async def _do_listen(self, req: Request) -> None:
        await self.deps.stage.listen(self.room, await self._song(req))
        self._reply(req, {})

    async def _do_del_music(self, req: Request) -> None:
        await self.deps.stage.delete_music(self.room, self.fullname)
        self._reply(req, {})

    async def _do_cut_music(self, req: Request) -> None:
        try:
            await self.deps.stage.cut_music(self.room, self.fullname)
        except st.NotRequester:
            if not await self._is_manager():
                raise
            await self.deps.stage.cut_music(self.room, self.fullname, manager=True)
        self._reply(req, {})

    async def _do_cut_video(self, req: Request) -> None:
        try:
            await self.deps.stage.cut_video(self.room, self.fullname)
        except st.NotWatcher:
            if not await self._is_manager():
                raise
            await self.deps.stage.cut_video(self.room, self.fullname, manager=True)
        self._reply(req, {})

    async def _do_watch(self, req: Request) -> None:
        video = await self.deps.catalog.get_video(req.args["vid"]) if self.deps.catalog else None
        if not video:
            raise Refusal(codec.NO_SUCH_VIDEO)
        duration = req.args.get("duration") or codec.video_seconds(video.get("duration"))
        if not duration:
            raise Refusal("视频时长未知")
        await self.deps.stage.watch(self.room, Entry(
            fullname=self.fullname, nick=self._nick(), vid=str(video.get("id", "")),
            name=video.get("name", ""), link=video.get("video") or video.get("file", ""),
            duration=duration))
        self._reply(req, {})

    async def _do_set_duration(self, req: Request) -> None:
        await self.deps.stage.seek(self.room, self.fullname, req.args["current"])
        self._reply(req, {})
