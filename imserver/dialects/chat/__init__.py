"""
Document 000, the chat dialect: ``/ws/chat`` (type/data JSON chat rooms)
and ``GET /video.php`` (the video list), over the shared rooms, accounts and
catalogue.
"""

from imserver.dialects.chat.http import FAILED, VideoApi
from imserver.dialects.chat.ws import ChatFactory
from imserver.dialects.roomws import RoomDialect
from imserver.web.wsbase import UpgradedResource



def refusal(status: int, reason: str) -> dict:
    """A request the site refused (body too large, no route) in 000's failure form."""
    return {"errCode": "1", "info": FAILED, "data": reason}


class ChatDialect(RoomDialect):
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
