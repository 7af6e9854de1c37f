"""`ReadAhead`: a copy chunk's documents, read a page ahead by a thread: every document once and
in order, a cursor's failure raised where the chunk iterates, never more than two pages read
beyond what the chunk took, and the cursor closed by the reader whenever the turn ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stagesync.tasks.full_resync.read_ahead import ReadAhead


class Cursor:
    """A cursor over `count` documents that counts what it handed out and who closed it."""

    def __init__(self, count: int, fail_at: int | None = None) -> None:
        self.count = count
        self.fail_at = fail_at
        self.read = 0
        self.closed_by: list[str] = []

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self.count):
            if i == self.fail_at:
                raise ConnectionError("production went away")
            self.read += 1
            yield {"_id": i}

    def close(self) -> None:
        self.closed_by.append(threading.current_thread().name)


def _wait_closed(cursor: Cursor) -> None:
    deadline = time.monotonic() + 5
    while not cursor.closed_by and time.monotonic() < deadline:
        time.sleep(0.01)


@settings(deadline=None, max_examples=50)
@given(st.integers(0, 60), st.integers(1, 12))
def test_every_document_once_and_in_order(count: int, size: int) -> None:
    cursor = Cursor(count)
    documents = ReadAhead(cursor, size)
    try:
        assert [d["_id"] for d in documents] == list(range(count))
    finally:
        documents.close()
    _wait_closed(cursor)
    assert cursor.closed_by == ["resync-read-ahead"]


def test_a_failing_cursor_fails_the_turn_after_the_documents_before_it() -> None:
    cursor = Cursor(50, fail_at=23)
    documents = ReadAhead(cursor, 5)
    seen: list[int] = []
    with pytest.raises(ConnectionError, match="went away"):
        seen.extend(d["_id"] for d in documents)
    documents.close()
    assert seen == list(range(20))  # the partial page before the failure is not handed over
    _wait_closed(cursor)
    assert cursor.closed_by == ["resync-read-ahead"]


def test_a_turn_that_stops_early_reads_at_most_two_pages_beyond_it() -> None:
    cursor = Cursor(10_000)
    documents = ReadAhead(cursor, 100)
    for taken, _ in enumerate(documents, start=1):
        if taken == 250:
            break
    time.sleep(0.3)  # let the reader run as far as it can
    assert cursor.read <= 300 + 2 * 100 + 1
    documents.close()
    _wait_closed(cursor)
    assert cursor.closed_by == ["resync-read-ahead"]
    assert cursor.read <= 300 + 2 * 100 + 1
