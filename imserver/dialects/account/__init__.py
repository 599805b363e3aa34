"""
Document 001, the account dialect (HTTP only): SMS registration, avatar
upload, login, live rooms, friends, gold and gifts, at ``/register /upload
/log /room /list /friend /golden``. The wire format is :mod:`.codec`, the
routes :mod:`.http`; the domain is :mod:`imserver.core.accounts`,
:mod:`imserver.core.friends`, :mod:`imserver.core.wallet`,
:mod:`imserver.core.live` and :mod:`imserver.core.media`.
"""

from imserver.dialects.account import codec
from imserver.dialects.account.http import AccountApi


def refusal(status: int, reason: str) -> dict:
    """A request the site refused (body too large) in 001's envelope: 0009, bad request."""
    return codec.reply(codec.BAD_REQUEST, reason)


class AccountDialect:
    name = "account"

    def __init__(self, *, config, reactor, accounts, limits, friends, wallet, live=None,
                 media=None):
        self.api = AccountApi(accounts=accounts, limits=limits, friends=friends,
                              wallet=wallet, clock=reactor, live=live, media=media,
                              max_body=config.max_body, max_upload=config.max_upload)

    def mount(self, router) -> None:
        router.add_klein(self.api.app, refusal=refusal)

    def websocket_resource(self):
        return None

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


__all__ = ["AccountDialect", "AccountApi"]
