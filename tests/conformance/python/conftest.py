"""Fixtures for the Python server SDK conformance suite.

A real herald binary is started once per session (HERALD_BIN, else target/release/herald, else
target/debug/herald) on a free loopback port; the official `pusher` SDK talks to its HTTP API and
raw `websockets` clients speak the Pusher protocol v7 to it.

Every test uses channel and user names with a fresh random suffix, so tests sharing the server do
not see each other's channels.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pusher
import pytest

from pusher_ws import APP_ID, APP_KEY, APP_SECRET

ROOT = Path(__file__).resolve().parents[3]

# Upper bound for any single test's async part; individual waits are shorter.
TEST_TIMEOUT = 30.0


def find_herald_bin() -> Path:
    env = os.environ.get("HERALD_BIN")
    if env:
        path = Path(env)
        if not (path.is_file() and os.access(path, os.X_OK)):
            pytest.exit(f"HERALD_BIN={env} is not an executable file", returncode=2)
        return path
    for candidate in (ROOT / "target/release/herald", ROOT / "target/debug/herald"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.exit(
        "no herald binary: set HERALD_BIN or build one (cargo build --release -p herald-server)",
        returncode=2,
    )
    raise AssertionError("unreachable")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HeraldServer:
    """One herald process on 127.0.0.1:<port>, optionally with a TOML config file."""

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        config_toml: str | None = None,
        extra_args: list[str] | None = None,
    ):
        self.binary = binary
        self.workdir = workdir
        self.config_toml = config_toml
        self.extra_args = list(extra_args or [])
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "herald.log"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return (
            f"ws://127.0.0.1:{self.port}/app/{APP_KEY}"
            "?protocol=7&client=js&version=8.4.0&flash=false"
        )

    def start(self, ready_timeout: float = 20.0) -> None:
        cmd = [str(self.binary), "start", "--host", "127.0.0.1"]
        if self.config_toml is not None:
            cfg = self.workdir / "herald.toml"
            cfg.write_text(self.config_toml)
            cmd += ["--config", str(cfg)]
        cmd += self.extra_args
        # A port picked by binding to 0 can in principle be taken again before herald binds it;
        # retry a few times if the process dies at start-up.
        for _attempt in range(3):
            self.port = free_port()
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                cmd + ["--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            log.close()
            if self._wait_ready(ready_timeout):
                return
            self.stop()
        raise RuntimeError(f"herald did not become ready; log:\n{self.log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.http_base}/up", timeout=1) as resp:
                    if resp.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            # Polling interval for readiness (not synchronisation between test steps).
            time.sleep(0.05)
        return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"


class RedisServer:
    """A private redis-server (REDIS_SERVER or redis-server on PATH) on a free loopback port,
    without persistence: stop() loses its data, start() starts it again on the same port."""

    def __init__(self, workdir: Path):
        self.binary = os.environ.get("REDIS_SERVER", "redis-server")
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def start(self, ready_timeout: float = 10.0) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self._ping():
                return
            # Polling interval for readiness (not synchronisation between test steps).
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not become ready on port {self.port}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


# Fast stop at teardown; the default app (id "1", key "app-key", secret "app-secret") is
# declared explicitly so the suite does not depend on the built-in demo app.
CONFIG_TOML = f"""
activity_timeout = "30s"

[drain]
delay = "0s"
window = "0s"
deadline = "1s"

[[apps]]
id = "{APP_ID}"
key = "{APP_KEY}"
secret = "{APP_SECRET}"
client_events = true
# Pusher documents info=subscription_count as available when subscription counting is enabled
# for the app; enabling it also makes herald broadcast pusher_internal:subscription_count,
# which the socket helper treats as interleaving noise.
subscription_count = true
"""


@pytest.fixture(scope="session")
def herald(tmp_path_factory) -> HeraldServer:
    server = HeraldServer(find_herald_bin(), tmp_path_factory.mktemp("herald"), CONFIG_TOML)
    server.start()
    yield server
    server.stop()


def start_herald(
    tmp_path_factory, config_toml: str, extra_args: list[str] | None = None, name: str = "herald"
) -> HeraldServer:
    """Starts one more herald with its own config (the caller stops it)."""
    server = HeraldServer(find_herald_bin(), tmp_path_factory.mktemp(name), config_toml, extra_args)
    server.start()
    return server


def make_client(server: HeraldServer, secret: str = APP_SECRET) -> pusher.Pusher:
    return pusher.Pusher(
        app_id=APP_ID,
        key=APP_KEY,
        secret=secret,
        host="127.0.0.1",
        port=server.port,
        ssl=False,
        timeout=10,
    )


@pytest.fixture
def sdk(herald) -> pusher.Pusher:
    return make_client(herald)


@pytest.fixture
def uid() -> str:
    """A random suffix for channel and user names."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
def run():
    """Runs a coroutine to completion, bounded by TEST_TIMEOUT."""

    def _run(coro):
        return asyncio.run(asyncio.wait_for(coro, TEST_TIMEOUT))

    return _run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        servers = [v for v in item.funcargs.values() if isinstance(v, HeraldServer)]
        for v in item.funcargs.values():
            servers += [s for s in getattr(v, "servers", []) if isinstance(s, HeraldServer)]
        for server in servers:
            report.sections.append((f"herald :{server.port} log (tail)", server.log_tail()))
