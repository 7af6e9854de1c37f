"""The heartbeat's slow reads run off the stream loop (issue 30): the loop asks, never waits."""

from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager
from types import SimpleNamespace
from typing import Any

from stagesync.settings.model import Settings
from stagesync.watcher.background_read import BackgroundRead
from stagesync.watcher.inflight import InflightWindow
from stagesync.watcher.stream import CollectionWatcher, WatcherLinks, oplog_window_read

SLOW = 2.0  # seconds one read takes: far longer than the loop may ever wait
QUICK = 0.2  # what the loop may spend on a call that only asks


def wait_until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class SlowReader:
    """A read that takes SLOW seconds (or until released), counting calls and overlaps."""

    def __init__(self, value: Any = 42, seconds: float = SLOW) -> None:
        self.value = value
        self.seconds = seconds
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.release = threading.Event()
        self.error: Exception | None = None

    def __call__(self) -> Any:
        self.calls += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            self.release.wait(self.seconds)
            if self.error is not None:
                raise self.error
            return self.value
        finally:
            self.in_flight -= 1


def test_asking_returns_at_once_and_the_value_arrives_later() -> None:
    reader = SlowReader(seconds=0.3)
    read = BackgroundRead("test", reader)
    began = time.monotonic()
    read.ask()
    assert time.monotonic() - began < QUICK
    assert read.last is None
    wait_until(lambda: read.last == 42)
    assert not read.stale
    read.close()


def test_one_read_in_flight_at_a_time() -> None:
    reader = SlowReader()
    read = BackgroundRead("test", reader)
    for _ in range(20):
        read.ask()
    wait_until(lambda: reader.calls == 1)
    reader.release.set()
    wait_until(lambda: read.last == 42)
    assert reader.calls == 1 and reader.most_in_flight == 1
    read.ask()
    wait_until(lambda: reader.calls == 2)
    read.close()


def test_a_failed_read_keeps_the_last_value_marked_stale() -> None:
    reader = SlowReader(seconds=0)
    read = BackgroundRead("test", reader)
    read.ask()
    wait_until(lambda: read.last == 42)
    reader.error = RuntimeError("server gone")
    read.ask()
    wait_until(lambda: read.stale)
    assert read.last == 42
    reader.error = None
    reader.value = 7
    read.ask()
    wait_until(lambda: read.last == 7)
    assert not read.stale
    read.close()


def test_close_does_not_wait_for_a_stuck_read() -> None:
    reader = SlowReader(seconds=30)
    read = BackgroundRead("test", reader)
    read.ask()
    wait_until(lambda: reader.calls == 1)
    began = time.monotonic()
    read.close()
    assert time.monotonic() - began < 2.0
    read.ask()  # closed: asks are ignored
    reader.release.set()


class FakeRedis:
    """Enough of redis for the heartbeat's record and queue depths."""

    def pipeline(self, transaction: bool = False) -> AbstractContextManager[Any]:
        class Pipe:
            def __enter__(self) -> Pipe:
                return self

            def __exit__(self, *_: object) -> None:
                pass

            def __getattr__(self, _name: str) -> Any:
                return lambda *_args, **_kwargs: None

            def execute(self) -> list[int]:
                return [0, 0, 0, 0]

        return Pipe()


class NoDeadLetters:
    def __getitem__(self, _name: str) -> Any:
        return SimpleNamespace(find=lambda *_args, **_kwargs: iter(()))


def test_the_watchers_heartbeat_never_waits_for_the_oplog_window() -> None:
    settings = Settings(prod={"uri": "mongodb://prod:27017/"},
                        staging={"uri": "mongodb://staging:27017/", "state_db": "ours"},
                        collections=[{"name": "orders", "source": "p.orders",
                                      "target": "s.orders", "business_key": ["k"],
                                      "indexes": "none"}])
    reader = SlowReader(value=SimpleNamespace(seconds=3600.0))
    production = SimpleNamespace(oplog_window=reader)
    links = WatcherLinks(production=production, state_db=NoDeadLetters(),  # type: ignore[arg-type]
                         redis=FakeRedis(), celery=None,  # type: ignore[arg-type]
                         run_id="run", stop=threading.Event(),
                         oplog_window=oplog_window_read(production, settings))  # type: ignore[arg-type]
    watcher = CollectionWatcher(settings, settings.collections[0], None,  # type: ignore[arg-type]
                                links)
    began = time.monotonic()
    watcher.heartbeat(InflightWindow())  # asks for the oplog window: a read of SLOW seconds
    watcher.heartbeat(InflightWindow())
    assert time.monotonic() - began < QUICK
    wait_until(lambda: reader.calls == 1)
    reader.release.set()
    wait_until(lambda: watcher._oplog_seconds.last == 3600.0)
    watcher.heartbeat(InflightWindow())
    # Not due again for `oplog_check_seconds`, whichever collection's watcher asks.
    other = CollectionWatcher(settings, settings.collections[0], None,  # type: ignore[arg-type]
                              links)
    other.heartbeat(InflightWindow())
    assert reader.calls == 1
    assert other._oplog_seconds.last == 3600.0
    links.oplog_window.close()
    other._dead_letters.close()
    watcher._dead_letters.close()
