"""twistd plugin: ``twistd -n imserver``. Imports nothing heavy until used."""

from twisted.application.service import ServiceMaker

imserver = ServiceMaker(
    "imserver",
    "imserver.tap",
    "Chat, karaoke and IM server for five protocol dialects on one Redis.",
    "imserver",
)
