"""
Document 000, the chat dialect: ``/ws/chat`` (type/data JSON chat rooms)
and ``GET /video.php`` (the video list), over the shared rooms, accounts and
catalogue.
"""

from imserver.core.rooms import Shared
from imserver.dialects.chat.http import FAILED, VideoApi
from imserver.dialects.chat.ws import ChatFactory
from imserver.web.wsbase import UpgradedResource


STOP_TIMEOUT = 5.0


def refusal(status: int, reason: str) -> dict:
    """A request the site refused (body too large, no route) in 000's failure form."""
    return {"errCode": "1", "info": FAILED, "data": reason}


class ChatDialect:
    name = "chat"

    def __init__(self, *, config, reactor, accounts, rooms, bus, presence, limits, catalog,
                 blocking):
        self.factory = ChatFactory(config=config, reactor=reactor, accounts=accounts,
                                   rooms=rooms, bus=bus, presence=presence, limits=limits)
        self.factory.startFactory()
        self.resource = UpgradedResource(self.factory)
        self.http = VideoApi(catalog, blocking, config.max_body)
        self.rooms = rooms
        bus.on_resync(self.repair)

    def mount(self, router) -> None:
        router.add("/ws/chat", self.resource)
        router.add_klein(self.http.app, refusal=refusal)

    def websocket_resource(self):
        return self.resource

    def start(self) -> None:
        pass

    def repair(self) -> None:
        """The bus link came back: every session catches up on its room."""
        sessions = [s for s in self.factory.sessions if not s.closed]
        if sessions:
            found = Shared(self.rooms.resync())  # one read of each room for all sessions
            for session in sessions:
                session.catch_up(found.get())

    def stop(self):
        """Drop the sessions; the Deferred fires once they have left their rooms."""
        d = self.factory.close_all()
        self.factory.stopFactory()
        d.addTimeout(STOP_TIMEOUT, self.factory.reactor)
        d.addErrback(lambda f: None)  # shutting down regardless
        return d
