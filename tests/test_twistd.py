"""
The real ``twistd``: the plugin is found, bad options fail in one line, and
the server keeps its users across a clean stop and a SIGKILL.
"""

import gc
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from tests.conftest import free_port

TWISTD = str(pathlib.Path(sys.executable).with_name("twistd"))


def run(*args, timeout=60):
    return subprocess.run([TWISTD, *args], capture_output=True, text=True, timeout=timeout)


def test_twistd_help_lists_imserver():
    """After the README's install, `twistd --help` lists the imserver plugin."""
    out = run("--help")
    assert out.returncode == 0
    assert any(line.split()[:1] == ["imserver"] for line in out.stdout.splitlines())


def test_bad_option_fails_in_one_line(tmp_path):
    """An invalid value stops start-up with a one-line reason, no traceback."""
    out = run("-n", "--pidfile=", "imserver", "--listen", "bogus:1", "--data-dir", str(tmp_path))
    assert out.returncode != 0
    assert "Traceback" not in out.stderr + out.stdout
    errors = [l for l in out.stderr.splitlines() if l.startswith("imserver: error:")]
    assert len(errors) == 1 and "--listen" in errors[0]


def get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, json.loads(r.read())


class Server:
    def __init__(self, data_dir, port):
        self.port = port
        self.log = open(data_dir.parent / f"twistd-{port}-{time.monotonic_ns()}.log", "w")
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMSERVER_")}
        env["IMSERVER_ARGON2_MEMORY_COST"] = "1024"
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "imserver", "--listen",
             f"tcp:{port}:interface=127.0.0.1", "--data-dir", str(data_dir)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def url(self, path, **params):
        q = ("?" + urllib.parse.urlencode(params)) if params else ""
        return f"http://127.0.0.1:{self.port}{path}{q}"

    def wait_healthy(self, within=10.0):
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                if get(self.url("/health"))[0] == 200:
                    return time.monotonic()
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            assert self.proc.poll() is None, "twistd exited during start-up"
            time.sleep(0.05)
        raise AssertionError(f"/health not 200 within {within}s")

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        self.proc.wait(20)
        self.log.close()


def test_persistence_across_stop_and_sigkill(tmp_path):
    """Healthy within 10 s; a registered user still logs in after a stop and after SIGKILL."""
    data = tmp_path / "data"
    port = free_port()
    srv = Server(data, port)
    try:
        srv.wait_healthy(10)
        assert get(srv.url("/auth/register", user_tel="13800000001", user_name="alice",
                           user_password="pw1"))[1] == {"res": "register successfully"}
    finally:
        srv.stop()
    srv = Server(data, port)
    try:
        srv.wait_healthy(10)
        body = get(srv.url("/auth/login", user_tel="13800000001", user_password="pw1"))[1]
        assert body["res"] == "login successfully"
    finally:
        srv.stop(signal.SIGKILL)
    # the embedded redis-server outlived its parent; the next start copes alone
    srv = Server(data, port)
    try:
        srv.wait_healthy(15)
        body = get(srv.url("/auth/login", user_tel="13800000001", user_password="pw1"))[1]
        assert body["res"] == "login successfully"
    finally:
        srv.stop()
    leftovers = subprocess.run(["pgrep", "-f", str(data / "redis" / "redis.sock")],
                               capture_output=True, text=True).stdout.split()
    assert leftovers == []


def test_gc_is_tuned_for_the_process_once_the_service_is_ready():
    from twisted.internet import defer

    from imserver.tap import tune_gc

    class Service:
        ready = defer.Deferred()

    before = gc.get_threshold()
    try:
        tune_gc(Service)
        assert gc.get_threshold() == (50_000, 20, 100)
        assert gc.get_freeze_count() == 0
        results = []
        Service.ready.addCallback(results.append)
        Service.ready.callback("service")
        assert gc.get_freeze_count() > 0
        assert results == ["service"]      # the ready value passes through
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
