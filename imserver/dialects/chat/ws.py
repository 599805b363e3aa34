"""
``/ws/chat``: one Autobahn session per 000 client, kept thin.

A frame is decoded by :mod:`.codec`, handled by one method of
:class:`ChatSession` that calls the core (accounts, rooms, presence), and
answered with a frame from the codec. Room traffic is not written here: the
session subscribes to its room's bus topic (and ``user:<id>`` once logged
in), and the bus hands it the events encoded once for every 000 session.
When the bus link to Redis comes back after a loss, each session catches up
(:class:`~imserver.core.rooms.RoomFeed`): the room's messages it missed, in
order and once, and ``online``/``unonline`` for the membership changes.

Frames of one connection are handled one after another (a ``send`` right
after a ``login`` is sent as the user), with a bounded backlog. The session
pings every ``ping_interval`` seconds with ``{"type":"ping","errCode":0}``;
any frame from the client (its ``{"type":"ping","status":1}`` included)
counts as life, and a client silent for ``idle_timeout`` seconds is
disconnected. Timers use the injected reactor.
"""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import task
from twisted.logger import Logger

from imserver import metrics
from imserver.core.accounts import (CodeExpired, CodeLocked, CodeMismatch, DuplicatePhone,
                                    DuplicateUsername, Throttled, UnknownUser, WrongPassword)
from imserver.core.errors import CoreError, InvalidInput
from imserver.core.rooms import (AlreadyJoined, Member, RoomFeed, RoomFull, TooFast,
                                  check_name)
from imserver.dialects.chat import codec
from imserver.dialects.roomws import RoomSession, protocol_pings

log = Logger()

DIALECT = "chat"
HOME_ROOM = "1"
PROFILE = ("email", "wechat", "qq", "age", "gender")
LOGIN_FAILURES = 10       # per username and window
LOGIN_WINDOW = 300
IDLE_CLOSE = 4000         # close code for a client that stopped answering pings


class ChatSession(RoomSession, WebSocketServerProtocol):
    dialect = DIALECT
    log_name = "000"

    # -- life cycle ---------------------------------------------------------

    def onConnect(self, request):
        self.address = getattr(self.transport.getPeer(), "host", None) or "unix"

    def onOpen(self):
        f = self.factory
        self.codec = f.codec
        self.room_session_opened(f.presence.new_conn_id(), RoomFeed(f.rooms, f.reactor))
        self.room = HOME_ROOM
        self.user = None
        self.member = Member.guest()
        self.token = None
        self.code_phone = None
        self.in_room = False
        reactor = f.reactor
        self._idle = reactor.callLater(f.idle_timeout, self._idle_timeout)
        self._dropper = None
        self._pinger = task.LoopingCall(self._ping)
        self._pinger.clock = reactor
        self._pinger.start(f.ping_interval, now=False)
        self._enqueue(self._open)

    async def _open(self) -> None:
        f = self.factory
        await f.presence.connect(self.conn_id, None, DIALECT, {"address": self.address})
        await self._enter(self.room)

    def _closing(self) -> None:
        if self._idle.active():
            self._idle.cancel()
        if self._pinger.running:
            self._pinger.stop()
        if self._dropper is not None and self._dropper.active():
            self._dropper.cancel()

    def _idle_timeout(self) -> None:
        log.info("000 connection {c} silent for {t}s; closing", c=self.conn_id,
                 t=self.factory.idle_timeout)
        self.sendClose(IDLE_CLOSE, "heartbeat timeout")
        # a dead peer never completes the closing handshake
        self._dropper = self.factory.reactor.callLater(2, self._drop)

    def _drop(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abortConnection()

    def _ping(self) -> None:
        self.send_wire(codec.ping())

    def _show(self, event, wire) -> None:
        if self.closed:
            return
        data = event.data
        if event.topic.startswith("room:"):
            if data.get("room") != self.room:
                return  # an event of the room this session just left
            if event.kind == "room.member_joined" and data.get("conn_id") == self.conn_id:
                return  # "online" goes to the room except the newcomer
        self.send_wire(wire)

    # -- frames in ----------------------------------------------------------

    def onMessage(self, payload, isBinary):
        metrics.MESSAGES_IN.labels(DIALECT).inc()
        f = self.factory
        self._idle.reset(f.idle_timeout)
        if len(payload) > f.max_frame:
            self.send_wire(codec.frame("error", 1, "消息过大"))
            return
        try:
            req = codec.decode(payload)
        except codec.DecodeError as e:
            self.send_wire(codec.frame("error", 1, e.info))
            return
        if req.type == "ping":
            return  # the client's answer; its arrival already counted as life
        if (not self.within_rate(self.factory.reactor.seconds(),
                                 self.factory.messages_per_second)
                or self.backlogged):
            self.send_wire(codec.frame(req.type, 1, codec.TOO_FAST))
            return
        handler = getattr(self, "do_" + req.type, None)
        if handler is None:
            self.send_wire(codec.frame(req.type, 1, codec.UNKNOWN_TYPE))
            return
        self._enqueue(handler, req)

    def _frame_failed(self, req) -> None:
        self.send_wire(codec.frame(req.type, 1, "服务器错误，请稍后再试"))

    # -- rooms --------------------------------------------------------------

    async def _enter(self, room: str) -> None:
        """Join ``room`` as the current member (subscribing first, so nothing is missed)."""
        f = self.factory
        self.follow(f.bus, f"room:{room}")
        try:
            result = await f.rooms.join(room, self.member, self.conn_id, DIALECT, capacity=0)
        except AlreadyJoined:
            result = None
        except Exception:
            self.unfollow(f.bus, f"room:{room}")
            raise
        self.room = room
        self.in_room = True
        self.feed.entered(room, result)

    async def _become(self, member: Member, reason: str) -> None:
        """Change who this connection is in its room (login, logout)."""
        old = self.member
        self.member = member
        if self.in_room:
            await self.factory.rooms.rebind(self.room, self.conn_id, member, DIALECT,
                                            reason=reason)
        if old.user_id is not None and old.user_id != member.user_id:
            self.unfollow(self.factory.bus, f"user:{old.user_id}")
        if member.user_id is not None:
            self.follow(self.factory.bus, f"user:{member.user_id}")

    async def _log_in(self, user, token: str) -> None:
        f = self.factory
        self.user, self.token = user, token
        await f.presence.bind_user(self.conn_id, user.id)
        await self._become(Member.from_user(user), "login")

    def _login_reply(self, type_: str, info: str) -> str:
        return codec.frame(type_, 0, info, codec.login_data(
            self.user.id, self.member.name, self.token, self.member.level, self.room))

    # -- requests -------------------------------------------------------------

    async def do_code(self, req) -> None:
        f = self.factory
        phone = req.field("phone").strip()
        if not phone.isdigit() or not 5 <= len(phone) <= 20:
            self.send_wire(codec.bad_params("code", [("phone", "手机号格式错误")]))
            return
        try:
            await f.accounts.request_code(phone, self.address)
        except Throttled:
            self.send_wire(codec.frame("code", 1, "验证码发送太频繁，请稍后再试"))
            return
        except InvalidInput:
            self.send_wire(codec.bad_params("code", [("phone", "手机号格式错误")]))
            return
        self.code_phone = phone
        data = {"phone": phone}
        echoed = await f.accounts.last_sent_code(phone)
        if echoed:
            data["code"] = echoed  # --sms-echo, development only
        self.send_wire(codec.frame("code", 0, "发送成功", data))

    async def do_register(self, req) -> None:
        f = self.factory
        username = req.field("username").strip()
        password = req.field("password")
        repeat = next((req.field(k) for k in ("repeat-password", "repeat_password",
                                              "repassword") if req.has(k)), None)
        code = req.field("code").strip()
        problems = []
        if not username:
            problems.append(("username", "用户名不能为空"))
        elif len(username) > 32 or any(c.isspace() or ord(c) < 32 for c in username):
            problems.append(("username", "用户名为1-32位，不能有空格"))
        if not 6 <= len(password) <= 32:
            problems.append(("password", "密码长度为6-32位"))
        elif repeat is not None and repeat != password:
            problems.append(("repeat-password", "两次输入的密码不一致"))
        if problems:
            self.send_wire(codec.bad_params("register", problems))
            return
        phone = None
        if code:
            if self.code_phone is None:
                self.send_wire(codec.bad_params("register", [("code", "请先获取验证码")]))
                return
            try:
                await f.accounts.verify_code(self.code_phone, code)
            except CodeMismatch:
                self.send_wire(codec.bad_params("register", [("code", "验证码错误")]))
                return
            except CodeExpired:
                self.send_wire(codec.bad_params("register", [("code", "验证码已过期")]))
                return
            except CodeLocked:
                self.send_wire(codec.bad_params("register", [("code", "验证码错误次数过多")]))
                return
            phone = self.code_phone
        try:
            user = await f.accounts.register(password=password, username=username, phone=phone)
        except DuplicateUsername:
            self.send_wire(codec.bad_params("register", [("username", "用户名已存在")]))
            return
        except DuplicatePhone:
            self.send_wire(codec.bad_params("register", [("phone", "该手机号已注册")]))
            return
        except InvalidInput as e:
            self.send_wire(codec.bad_params("register", [("username", e.reason)]))
            return
        if phone:
            await f.accounts.consume_verification(phone)
        token = await f.accounts.issue_token(user.id)
        await self._log_in(user, token.token)
        self.send_wire(self._login_reply("register", "注册成功"))

    async def do_login(self, req) -> None:
        f = self.factory
        username = req.field("username").strip()
        password = req.field("password")
        problems = []
        if not username:
            problems.append(("username", "用户名不能为空"))
        if not password:
            problems.append(("password", "密码不能为空"))
        if problems:
            self.send_wire(codec.bad_params("login", problems))
            return
        if len(username) > 64 or len(password) > 256:
            self.send_wire(codec.bad_params("login", [("username", "用户名不存在")]))
            return
        key = username.lower()
        if await f.limits.peek("chat-login-fail", key, LOGIN_WINDOW) >= LOGIN_FAILURES:
            self.send_wire(codec.frame("login", 1, "登录失败次数过多，请稍后再试",
                                       [["username", "登录失败次数过多"]]))
            return
        try:
            try:
                user = await f.accounts.authenticate(username=username, password=password)
            except UnknownUser:
                if not username.isdigit():
                    raise
                user = await f.accounts.authenticate(phone=username, password=password)
        except UnknownUser:
            await f.limits.count("chat-login-fail", key, LOGIN_WINDOW)
            self.send_wire(codec.bad_params("login", [("username", "用户名不存在")]))
            return
        except WrongPassword:
            await f.limits.count("chat-login-fail", key, LOGIN_WINDOW)
            self.send_wire(codec.bad_params("login", [("password", "密码错误")]))
            return
        token = await f.accounts.issue_token(user.id)
        await self._log_in(user, token.token)
        self.send_wire(self._login_reply("login", "登录成功"))

    async def do_restore(self, req) -> None:
        f = self.factory
        old = req.field("token").strip()
        user = await f.accounts.user_for_token(old) if old else None
        if user is None:
            self.send_wire(codec.frame("restore", 2, codec.TOKEN_INVALID))
            return
        token = await f.accounts.issue_token(user.id)
        await f.accounts.revoke_token(old)
        await self._log_in(user, token.token)
        self.send_wire(self._login_reply("restore", "恢复成功"))

    async def do_logout(self, req) -> None:
        f = self.factory
        if self.user is not None:
            if self.token:
                await f.accounts.revoke_token(self.token)
            self.user, self.token = None, None
            await f.presence.bind_user(self.conn_id, None)
            await self._become(Member.guest(), "logout")
        self.send_wire(codec.frame("logout", 0, "退出成功"))

    async def do_userinfo(self, req) -> None:
        f = self.factory
        if self.user is None:
            self.send_wire(codec.frame("userinfo", -1, codec.PLEASE_LOGIN))
            return
        fields, problems = {}, []
        for name in PROFILE:
            if req.has(name):
                value = req.field(name).strip()
                if len(value) > 64:
                    problems.append((name, "内容过长"))
                elif name == "age" and value and not (value.isdigit() and int(value) <= 150):
                    problems.append((name, "年龄格式错误"))
                else:
                    fields[name] = value
        if problems:
            self.send_wire(codec.bad_params("userinfo", problems))
            return
        user = await f.accounts.update_profile(self.user.id, **fields)
        self.user = user
        data = {k: user.profile.get(k, "") for k in PROFILE if k != "gender"}
        data["gender"] = user.gender
        self.send_wire(codec.frame("userinfo", 0, "修改成功", data))

    async def do_send(self, req) -> None:
        f = self.factory
        if self.user is None:
            self.send_wire(codec.frame("send", -1, codec.NOT_LOGGED_IN))
            return
        text = req.field("message")
        if not text.strip():
            self.send_wire(codec.bad_params("send", [("message", "消息不能为空")]))
            return
        if len(text) > f.max_message:
            self.send_wire(codec.bad_params("send", [("message", "消息过长")]))
            return
        target = req.field("user_id").strip()
        if target in ("", "0"):  # user ids start at 10000: 0 is "nobody", as empty
            try:
                await f.rooms.post(self.room, self.member, text, dialect=DIALECT,
                                   conn_id=self.conn_id)
            except TooFast:   # the user's rate, all connections and processes together
                self.send_wire(codec.frame("send", 1, codec.TOO_FAST))
            return  # the sender gets the room's ``send`` like everyone else
        if not target.isdigit() or len(target) > 18:
            self.send_wire(codec.frame("send", -2, codec.TARGET_OFFLINE))
            return
        uid = int(target)
        if not await self._chat_online(uid):
            self.send_wire(codec.frame("send", -2, codec.TARGET_OFFLINE))
            return
        data = {"room": self.room, "to": uid, "text": text, "sender": self.member.to_dict(),
                "conn_id": self.conn_id}
        await f.bus.publish(f"user:{uid}", codec.PRIVATE, data, exclude=self.conn_id)
        self.send_wire(codec.frame("send", 0, "发送成功", codec.private_data(data)))

    async def _chat_online(self, uid: int) -> bool:
        """Whether the user has a 000 connection (other dialects do not show ``send``)."""
        f = self.factory
        for conn_id in await f.presence.connections_of(uid):
            record = await f.presence.record(conn_id)
            if record.get("dialect") == DIALECT:
                return True
        return False

    async def do_onlineaccount(self, req) -> None:
        members = await self.factory.rooms.members(self.room)
        data = {conn_id: codec.session(m, self.room) for conn_id, m in members}
        self.send_wire(codec.frame("onlineaccount", 0, "", data))

    async def do_changeroom(self, req) -> None:
        f = self.factory
        target = req.field("room_id").strip()
        try:
            check_name(target)
        except InvalidInput:
            self.send_wire(codec.bad_params("changeroom", [("room_id", "房间号错误")]))
            return
        if target == self.room and self.in_room:
            self.send_wire(codec.frame("changeroom"))
            return
        old, was_in = self.room, self.in_room
        try:
            await self._enter(target)
        except RoomFull:
            self.send_wire(codec.frame("changeroom", 1, codec.ROOM_FULL))
            return
        except CoreError as e:
            self.send_wire(codec.frame("changeroom", 1, e.reason))
            return
        if was_in:
            self.unfollow(f.bus, f"room:{old}")
            self.feed.left(old)
            await f.rooms.leave(old, self.conn_id, reason="leave")
        self.send_wire(codec.frame("changeroom"))


class ChatFactory(WebSocketServerFactory):
    protocol = ChatSession

    def __init__(self, *, config, reactor, accounts, rooms, bus, presence, limits):
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.accounts = accounts
        self.rooms = rooms
        self.bus = bus
        self.presence = presence
        self.limits = limits
        self.ping_interval = config.ping_interval
        self.idle_timeout = config.idle_timeout
        self.max_frame = config.max_frame
        self.max_message = config.chat_max_message   # characters of one chat message
        self.messages_per_second = config.messages_per_second
        self.codec = codec.ChatCodec(self.prepareMessage)
        self.sessions: set[ChatSession] = set()
        self.setProtocolOptions(
            maxMessagePayloadSize=config.max_frame * 2, maxFramePayloadSize=config.max_frame * 2,
            openHandshakeTimeout=10, failByDrop=False, **protocol_pings(config))
