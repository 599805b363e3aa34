"""
SMS senders: how a verification code reaches a phone.

``LogSender`` (the default) writes that a code was sent, and the code itself
only when ``--sms-echo`` is on. ``HttpSender`` POSTs ``phone`` and ``code``
as a form to a gateway URL with treq (the HTTP client is a parameter so that
tests can point it at a local server).
"""

from twisted.logger import Logger

from imserver.core.errors import CoreError

log = Logger()


class SmsSendFailed(CoreError):
    reason = "the SMS gateway refused the message"


def mask(phone: str) -> str:
    return phone[:3] + "****" + phone[-2:] if len(phone) > 5 else "****"


class LogSender:
    def __init__(self, echo: bool = False):
        self.echo = echo

    async def send(self, phone: str, code: str) -> None:
        if self.echo:
            log.info("SMS code {code} sent to {phone}", code=code, phone=phone)
        else:
            log.info("SMS code sent to {phone}", phone=mask(phone))


class HttpSender:
    def __init__(self, url: str, http_client, timeout: float = 10.0):
        self.url = url
        self.http = http_client
        self.timeout = timeout

    async def send(self, phone: str, code: str) -> None:
        try:
            response = await self.http.post(
                self.url, data={"phone": phone, "code": code}, timeout=self.timeout)
            await response.content()
        except Exception as e:
            log.warn("SMS gateway unreachable for {phone}: {error}", phone=mask(phone),
                     error=e.__class__.__name__)
            raise SmsSendFailed("the SMS gateway could not be reached") from None
        if not 200 <= response.code < 300:
            log.warn("SMS gateway answered {code} for {phone}", code=response.code,
                     phone=mask(phone))
            raise SmsSendFailed()
        log.info("SMS code sent to {phone} through the gateway", phone=mask(phone))
