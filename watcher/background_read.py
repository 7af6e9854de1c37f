"""A slow read the stream loop asks for and never waits on: the heartbeat's reads of MongoDB.

The heartbeat runs on the stream loop's thread. Reading production's oplog window (`find` on
`local.oplog.rs` and a `$collStats`) or counting the open dead letters can take tens of
seconds on a loaded server; run on the loop, they stopped the watcher reading and flushing
for that long (issue 30). So each such read runs on a thread of its own:
- `ask()` only wakes that thread and returns at once; asks while a read is in flight are
  ignored, so at most one read of each kind is ever in flight;
- the loop publishes `last`, the value of the last read that succeeded, however old;
- a read that raises is logged and marks the value `stale`; it never reaches the loop;
- `close()` stops the thread; a read still in flight is not waited for beyond a moment (the
  thread is a daemon, and its result is dropped).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("stagesync.watcher")

T = TypeVar("T")
CLOSE_WAIT_SECONDS = 1.0


class BackgroundRead(Generic[T]):
    def __init__(self, name: str, read: Callable[[], T], every: float = 0.0) -> None:
        """`every`: the least time between two reads' starts (the reads one process shares,
        asked by each of its collections' loops, come no more often than that)."""
        self.name = name
        self._read = read
        self._every = every
        self._asked_at: float | None = None
        self._lock = threading.Lock()
        self._wanted = threading.Event()
        self._closed = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self._last: T | None = None
        self._stale = False

    @property
    def last(self) -> T | None:
        """The value of the last read that succeeded (None before the first one)."""
        with self._lock:
            return self._last

    @property
    def stale(self) -> bool:
        """Whether the latest read failed, so that `last` is older than it should be."""
        with self._lock:
            return self._stale

    def ask(self) -> None:
        """Start a read unless one is in flight; never blocks on the read itself."""
        with self._lock:
            now = time.monotonic()
            if self._closed or self._busy or (
                    self._asked_at is not None and now - self._asked_at < self._every):
                return
            self._busy, self._asked_at = True, now
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"stagesync-{self.name}", daemon=True)
                self._thread.start()
        self._wanted.set()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wanted.set()
        if thread is not None:
            thread.join(CLOSE_WAIT_SECONDS)

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            with self._lock:
                if self._closed:
                    return
            try:
                value = self._read()
            except Exception as error:
                log.warning("background read failed; its last value is kept, marked stale",
                            extra={"read": self.name, "error": f"{type(error).__name__}: "
                                                               f"{str(error)[:300]}"})
                with self._lock:
                    self._stale, self._busy = True, False
                continue
            with self._lock:
                self._last, self._stale, self._busy = value, False, False
