"""
The envelope of document 004's HTTP replies, the group API's
(:mod:`.groups_http`) and the uploads' (:mod:`.upload`):
``{"code", "message"[, "data"]}``. Success is the document's code for each;
a refusal is one of these negative codes, which no client mistakes for
success, and a message saying why:

====  ==============================================================
 -1   missing or invalid parameter; for an upload, no file, or a file
      that is empty, corrupt or of a type the endpoint does not take
 -2   no valid token (``token``, ``access_token`` or ``Authorization: Bearer``)
 -3   not allowed
 -4   no such group
 -5   too many requests
 -6   service unavailable; try again
 -7   file too large (HTTP status 413)
====  ==============================================================
"""

from __future__ import annotations

from imserver.core.errors import CoreError, Forbidden, InvalidInput, NotFound, RateLimited
from imserver.core.media import MediaTooLarge

BAD_REQUEST, NO_TOKEN, FORBIDDEN, NOT_FOUND, TOO_MANY, UNAVAILABLE, TOO_LARGE = range(-1, -8, -1)


class NoToken(CoreError):
    reason = "login required: pass a valid token"


# the first class an exception is an instance of gives its code
_CODES = ((NoToken, NO_TOKEN), (MediaTooLarge, TOO_LARGE), (InvalidInput, BAD_REQUEST),
          (Forbidden, FORBIDDEN), (NotFound, NOT_FOUND), (RateLimited, TOO_MANY))


def refusal_code(exc: Exception) -> int:
    """The envelope's code for a refusal (anything unexpected: try again)."""
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return UNAVAILABLE
