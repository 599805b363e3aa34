"""
``/ws/chatroom``: one Autobahn session per 003 client, kept thin.

A packet is decoded by :mod:`.codec` and handled in order with the
connection's other packets. ``join`` authenticates with ``data.token`` (a
token from any login; ``--legacy-auth`` also admits the bare ``user_name``
the document shows), joins the room in the rooms core and follows its bus
topic; the joiner gets its own ``user`` packet directly, everyone else
through the bus. ``msg`` posts to the room (stored, then published: the
sender sees its own message come back like everyone else). Dead
connections are found by WebSocket pings (003 has no heartbeat of its own);
a closed connection leaves every room it was in. When the bus link to Redis
comes back after a loss, each session catches up
(:class:`~imserver.core.rooms.RoomFeed`): the ``msg`` packets it missed, in
order and once, and ``user`` packets for the joins and leaves.
"""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

from imserver import metrics
from imserver.core.errors import InvalidInput
from imserver.core.rooms import (AlreadyJoined, Member, RoomFeed, RoomFull, TooFast,
                                  check_name)
from imserver.dialects.chatroom import codec
from imserver.dialects.roomws import RoomSession, protocol_pings


DIALECT = "chatroom"


class ChatroomSession(RoomSession, WebSocketServerProtocol):
    dialect = DIALECT
    log_name = "003"

    def onOpen(self):
        f = self.factory
        self.codec = f.codec
        self.room_session_opened(f.presence.new_conn_id(), RoomFeed(f.rooms, f.reactor))
        self.user = None        # authenticated account, once a join carried a token
        self.joined: dict[str, Member] = {}
        self._enqueue(self._open)

    async def _open(self) -> None:
        await self.factory.presence.connect(self.conn_id, None, DIALECT)

    def _show(self, event, wire) -> None:
        if self.closed:
            return
        data = event.data
        if event.kind in ("room.member_joined", "room.member_left"):
            if data.get("conn_id") == self.conn_id:
                return  # the session told its client itself
        if data.get("room") not in self.joined:
            return
        self.send_wire(wire)

    # -- packets in -----------------------------------------------------------

    def onMessage(self, payload, isBinary):
        metrics.MESSAGES_IN.labels(DIALECT).inc()
        f = self.factory
        if len(payload) > f.max_frame:
            self.send_wire(codec.error(codec.INVALID_MSG))
            return
        try:
            packet = codec.decode(payload, f.max_message)
        except codec.PacketError as e:
            self.send_wire(codec.error(e.msg, e.room_name, e.user or None))
            return
        if (not self.within_rate(self.factory.reactor.seconds(),
                                 self.factory.messages_per_second)
                or self.backlogged):
            self.send_wire(codec.error(codec.TOO_MANY, packet.room_name, packet.user))
            return
        self._enqueue(getattr(self, "do_" + packet.type), packet)

    def _frame_failed(self, packet) -> None:
        self.send_wire(codec.error("server error", packet.room_name, packet.user))

    # -- identity -------------------------------------------------------------

    async def _member(self, packet) -> Member | None:
        """Who sends this packet: the token's user, the session's, or (legacy) the claimed name."""
        f = self.factory
        if packet.token:
            user = await f.accounts.user_for_token(packet.token)
            if user is None:
                return None
            self.user = user
        if self.user is not None:
            return Member.from_user(self.user)
        if not f.legacy_auth:
            return None
        name = packet.user_name.strip()
        if not name:
            return None
        account = await f.accounts.get_by_username(name)
        if account is not None:
            member = Member.from_user(account)
            member.avatar = packet.user_avatar or member.avatar
            return member
        return Member(user_id=None, name=name, avatar=packet.user_avatar, level="user")

    # -- packets --------------------------------------------------------------

    async def do_join(self, p) -> None:
        f = self.factory
        member = await self._member(p)
        if member is None:
            if f.legacy_auth and not p.token and not p.user_name.strip():
                self.send_wire(codec.error(codec.ILLEGAL_DATA, p.room_name, p.user))
            else:
                self.send_wire(codec.error(codec.INVALID_TOKEN, p.room_name, p.user))
            return
        try:
            check_name(p.room_name)
        except InvalidInput:
            self.send_wire(codec.error(codec.ILLEGAL_DATA, p.room_name, p.user))
            return
        topic = f"room:{p.room_name}"
        self.follow(f.bus, topic)
        self.joined[p.room_name] = member
        try:
            result = await f.rooms.join(p.room_name, member, self.conn_id, DIALECT,
                                        capacity=f.capacity)
        except AlreadyJoined:
            self.send_wire(codec.user_packet(member, p.room_name, "join"))
            return
        except RoomFull:
            del self.joined[p.room_name]
            self.unfollow(f.bus, topic)
            self.send_wire(codec.error(codec.FULL_ROOM, p.room_name, p.user))
            return
        except Exception:
            self.joined.pop(p.room_name, None)
            self.unfollow(f.bus, topic)
            raise
        self.feed.entered(p.room_name, result)
        if member.user_id is not None:
            await f.presence.bind_user(self.conn_id, member.user_id)
        self.send_wire(codec.user_packet(member, p.room_name,
                                         "create" if result.first else "join"))

    async def do_leave(self, p) -> None:
        f = self.factory
        member = self.joined.get(p.room_name)
        if member is None:
            room = await f.rooms.get(p.room_name)
            what = codec.ROOM_NOT_EXIST if room is None else codec.USER_NOT_EXIST
            self.send_wire(codec.encode("user", p.user, p.room_name, what))
            return
        await f.rooms.leave(p.room_name, self.conn_id, reason="leave")
        del self.joined[p.room_name]
        self.unfollow(f.bus, f"room:{p.room_name}")
        self.feed.left(p.room_name)
        self.send_wire(codec.user_packet(member, p.room_name, "leave"))

    async def do_msg(self, p) -> None:
        f = self.factory
        member = self.joined.get(p.room_name)
        if member is None:
            self.send_wire(codec.error(codec.USER_NOT_EXIST, p.room_name, p.user))
            return
        try:
            await f.rooms.post(p.room_name, member, p.msg, dialect=DIALECT,
                               conn_id=self.conn_id)
        except TooFast:   # the user's rate, all connections and processes together
            self.send_wire(codec.error(codec.TOO_MANY, p.room_name, p.user))


class ChatroomFactory(WebSocketServerFactory):
    protocol = ChatroomSession

    def __init__(self, *, config, reactor, accounts, rooms, bus, presence, capacity: int = 10):
        super().__init__()
        self.reactor = reactor
        self.accounts = accounts
        self.rooms = rooms
        self.bus = bus
        self.presence = presence
        self.capacity = capacity
        self.legacy_auth = config.legacy_auth
        self.max_frame = config.max_frame
        self.max_message = config.chat_max_message
        self.messages_per_second = config.messages_per_second
        self.codec = codec.ChatroomCodec(self.prepareMessage)
        self.sessions: set[ChatroomSession] = set()
        self.setProtocolOptions(
            maxMessagePayloadSize=config.max_frame * 2, maxFramePayloadSize=config.max_frame * 2,
            openHandshakeTimeout=10, failByDrop=False, **protocol_pings(config))
