"""Document 003, the chatroom dialect: HTTP auth and rooms, and ``/ws/chatroom``."""

from imserver.dialects.chatroom.auth import AuthApi


class ChatroomDialect:
    name = "chatroom"

    def __init__(self, *, config, accounts, limits):
        self.auth = AuthApi(accounts, limits, config.max_body)

    def mount(self, router) -> None:
        router.add_klein(self.auth.app)

    def websocket_resource(self):
        return None

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
