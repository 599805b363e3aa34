"""The composition root: a start that fails lets go of everything it started."""

import socket
import threading

import pytest
import pytest_twisted
from twisted.internet import reactor

from imserver.config import Config
from imserver.service import IMService
from tests.conftest import FAST_ARGON2


def pool_threads():
    return [t for t in threading.enumerate() if "imserver-blocking" in t.name]


@pytest_twisted.ensureDeferred
async def test_a_failed_start_stops_what_it_started(redis_url, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        config = Config(listen=(f"tcp:{port}:interface=127.0.0.1",), redis=redis_url,
                        data_dir=tmp_path / "data", **FAST_ARGON2).check()
        service = IMService(config, reactor)
        service._in_test = True
        before = pool_threads()
        service.startService()
        # the failure comes after the thread pool and the Redis links are up
        with pytest.raises(Exception, match="Address already in use|Couldn't listen"):
            await service.ready
        assert pool_threads() == before          # the pool's threads are gone
        assert service.store is None and service.bus is None and service.core is None
        await service.stopService()              # twistd's shutdown after it: a no-op
    finally:
        taken.close()
