"""
Domain errors. Each carries ``reason``, a short English text a dialect may
show; dialects map the classes to their own wire codes.
"""


class CoreError(Exception):
    reason = "request refused"

    def __init__(self, reason: str | None = None):
        if reason is not None:
            self.reason = reason
        super().__init__(self.reason)


class InvalidInput(CoreError):
    reason = "invalid input"


class NotFound(CoreError):
    reason = "not found"


class Conflict(CoreError):
    reason = "already exists"


class Forbidden(CoreError):
    reason = "not allowed"


class Unauthorized(CoreError):
    reason = "not authenticated"


class RateLimited(CoreError):
    reason = "too many requests"
