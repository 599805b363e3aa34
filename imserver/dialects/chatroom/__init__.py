"""
Document 003, the chatroom dialect: HTTP auth (:mod:`.auth`), the room
endpoints (:mod:`.http`) and ``/ws/chatroom`` (:mod:`.ws`), over the shared
accounts and rooms.
"""

from imserver.dialects.chatroom.auth import AuthApi
from imserver.dialects.chatroom.http import ChatroomApi
from imserver.dialects.chatroom.ws import ChatroomFactory
from imserver.dialects.roomws import RoomDialect
from imserver.web.wsbase import UpgradedResource


def refusal(status: int, reason: str) -> dict:
    """A request the site refused (body too large, no route) in 003's form."""
    return {"res": reason}


class ChatroomDialect(RoomDialect):
    name = "chatroom"

    def __init__(self, *, config, accounts, limits, reactor, rooms, bus, presence):
        self.reactor = reactor
        self.auth = AuthApi(accounts, limits, config.max_body)
        self.rooms_api = ChatroomApi(accounts, rooms, config.max_body,
                                     legacy_auth=config.legacy_auth,
                                     capacity=config.chatroom_capacity)
        self.factory = ChatroomFactory(config=config, reactor=reactor, accounts=accounts,
                                       rooms=rooms, bus=bus, presence=presence,
                                       capacity=config.chatroom_capacity)
        self.factory.startFactory()
        self.resource = UpgradedResource(self.factory)
        self.rooms = rooms
        bus.on_resync(self.repair)

    def mount(self, router) -> None:
        router.add_klein(self.auth.app, refusal=refusal)
        router.add_klein(self.rooms_api.app, refusal=refusal)
        router.add_refusal(refusal, prefixes=("/auth/", "/chatroom/"))
        router.add("/ws/chatroom", self.resource)
