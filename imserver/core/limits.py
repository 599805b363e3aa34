"""
Rate limits counted in Redis, so that they hold across processes.

A fixed-window counter per (name, key): ``allow`` counts one hit and says
whether it is within ``limit`` hits per ``window`` seconds.
"""

from imserver.store import keys
from imserver.store.scripts import RATE_HIT


class Limits:
    def __init__(self, store, clock):
        self.store = store
        self.clock = clock

    async def allow(self, name: str, key, limit: int, window: float) -> bool:
        return await self.count(name, key, window) <= limit

    async def count(self, name: str, key, window: float) -> int:
        """Count one hit and return the number of hits in the current window."""
        window = max(1, int(window))
        start = int(self.clock.seconds() // window)
        return int(await self.store.eval(
            RATE_HIT, [keys.rate(name, key, start)], [window + 1]))

    async def peek(self, name: str, key, window: float) -> int:
        window = max(1, int(window))
        start = int(self.clock.seconds() // window)
        return int(await self.store.execute("GET", keys.rate(name, key, start)) or 0)
