"""
Document 003, the chatroom dialect: HTTP auth (:mod:`.auth`), the room
endpoints (:mod:`.http`) and ``/ws/chatroom`` (:mod:`.ws`), over the shared
accounts and rooms.
"""

from imserver.core.rooms import Shared
from imserver.dialects.chatroom.auth import AuthApi
from imserver.dialects.chatroom.http import ChatroomApi
from imserver.dialects.chatroom.ws import ChatroomFactory
from imserver.web.wsbase import UpgradedResource

STOP_TIMEOUT = 5.0


def refusal(status: int, reason: str) -> dict:
    """A request the site refused (body too large, no route) in 003's form."""
    return {"res": reason}


class ChatroomDialect:
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

    def websocket_resource(self):
        return self.resource

    def start(self) -> None:
        pass

    def repair(self) -> None:
        """The bus link came back: every session catches up on its rooms."""
        sessions = [s for s in self.factory.sessions if not s.closed]
        if sessions:
            found = Shared(self.rooms.resync())  # one read of each room for all sessions
            for session in sessions:
                session.catch_up(found.get())

    def stop(self):
        """Drop the sessions; the Deferred fires once they have left their rooms."""
        d = self.factory.close_all()
        self.factory.stopFactory()
        d.addTimeout(STOP_TIMEOUT, self.reactor)
        d.addErrback(lambda f: None)
        return d
