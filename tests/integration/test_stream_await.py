"""The change stream's getMore waits until the loop's next duty (`watcher.loop`): an idle
stream costs production about one getMore per wait, and a change that arrives during a long
wait is returned at once, as the MongoDB manual describes awaitData cursors."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient, monitoring
from stagesync.watcher.loop import STREAM_AWAIT_MS, set_stream_await

from tests.support.backends import MongoPair


class GetMores(monitoring.CommandListener):
    def __init__(self) -> None:
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "getMore":
            self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def watched(mongo_pair: MongoPair) -> Iterator[tuple[Any, Any, GetMores]]:
    listener = GetMores()
    reader: MongoClient[Any] = MongoClient(mongo_pair.prod_uri, event_listeners=[listener])
    writer: MongoClient[Any] = MongoClient(mongo_pair.prod_uri)
    collection = reader.stream_await_test.items
    writer.stream_await_test.items.insert_one({"_id": "seed"})
    stream = collection.watch(max_await_time_ms=STREAM_AWAIT_MS)
    yield stream, writer.stream_await_test.items, listener
    stream.close()
    writer.drop_database("stream_await_test")
    reader.close()
    writer.close()


def _idle_reads(stream: Any, listener: GetMores, seconds: float) -> int:
    before = listener.count
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert stream.try_next() is None
    return listener.count - before


def test_an_idle_stream_waits_as_long_as_it_is_told(
        watched: tuple[Any, Any, GetMores]) -> None:
    stream, _, listener = watched
    short = _idle_reads(stream, listener, 2.0)
    set_stream_await(stream, 1.0)
    long = _idle_reads(stream, listener, 2.0)
    # One-second waits: at most three in two seconds (the first may have been asked with
    # the short wait, and one is under way when the time is up). 100 ms waits: about twenty.
    assert long <= 3 < short


def test_a_change_ends_a_long_wait(watched: tuple[Any, Any, GetMores]) -> None:
    stream, writer, _ = watched
    assert stream.try_next() is None
    set_stream_await(stream, 30.0)
    threading.Timer(0.3, writer.insert_one, args=[{"_id": "late"}]).start()
    began = time.monotonic()
    event = stream.try_next()
    assert event is not None and event["documentKey"] == {"_id": "late"}
    assert time.monotonic() - began < 15.0  # answered when the change came, not after 30 s
