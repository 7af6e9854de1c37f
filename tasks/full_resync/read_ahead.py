"""Production's next batch is read while the current one is applied.

A copy chunk's turn goes back and forth between two servers: production's cursor hands over a
batch (the server walks its range, the documents cross the network), then staging reads that
batch's copies and takes its writes. Done in turn, each server waits for the other, and so does
the chunk: into a staging that already held production (20,000 documents, 2 ms) the pool
processes were busy a fifth of the time, and the two servers' work added up to the run's length.
Here a thread reads the cursor a batch ahead, so that production's read of the next batch
overlaps staging's work on this one, as a bulk loader's reader runs ahead of its writer.

Bounds: the reader fills one page of `size` documents while at most one full page waits, so a
turn holds at most three batches at once (the one applied included). A turn that stops early
(its time budget, an error, the soft time limit) drops what was read ahead: the chunk's
checkpoint is the last batch applied, and the next turn reads on from there. The cursor is
used and closed by the reader's thread alone (a pymongo cursor is not for two threads); a
reader blocked in a slow read when the turn ends is not waited for: it is a daemon, it closes
the cursor once the read returns, and what it read is dropped.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from stagesync.rules.document import Document

WAIT_SECONDS = 0.2  # how often a blocked reader looks whether the turn has ended
JOIN_SECONDS = 1.0


class _End:
    """The cursor is exhausted (`error` None) or failed."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class ReadAhead:
    """Iterate a cursor's documents, read a page ahead by a thread of its own."""

    def __init__(self, cursor: Iterable[Document], size: int) -> None:
        self._cursor = cursor
        self._size = max(1, size)
        self._pages: queue.Queue[list[Document] | _End] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="resync-read-ahead",
                                        daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[Document]:
        while True:
            page = self._pages.get()
            if isinstance(page, _End):
                if page.error is not None:
                    raise page.error
                return
            yield from page

    def close(self) -> None:
        """Stop reading; what was read ahead is dropped."""
        self._stop.set()
        self._thread.join(JOIN_SECONDS)

    def _read(self) -> None:
        end = _End()
        try:
            page: list[Document] = []
            for document in self._cursor:
                if self._stop.is_set():
                    return
                page.append(document)
                if len(page) >= self._size:
                    if not self._hand_over(page):
                        return
                    page = []
            if page and not self._hand_over(page):
                return
        except BaseException as error:  # handed to the turn, which decides (retry, fail)
            end = _End(error)
        finally:
            _close(self._cursor)
        self._hand_over(end)

    def _hand_over(self, item: list[Document] | _End) -> bool:
        """Queue a page (or the end) for the turn; False once the turn has ended."""
        while not self._stop.is_set():
            try:
                self._pages.put(item, timeout=WAIT_SECONDS)
                return True
            except queue.Full:
                continue
        return False


def _close(cursor: Any) -> None:
    """Best effort: a server forgets an idle cursor by itself (after ten minutes on MongoDB),
    and the turn must get its end whatever happens here."""
    close = getattr(cursor, "close", None)
    if close is None:
        return
    with contextlib.suppress(Exception):
        close()
