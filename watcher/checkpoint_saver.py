"""Which resume token the checkpoint may move to, and when it is written.

The loop notes a token whenever one becomes allowed (the low watermark of the in-flight window
moved, or the stream idles with nothing in flight); the saver writes the newest noted token at
most every `checkpoint_interval_seconds` (or at once when forced: a new stream, a stop), and
only while the watcher holds its lease (`WatcherRecord.save_checkpoint` is fenced).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from stagesync.state.checkpoints import LeaseLost, WatcherRecord
from stagesync.watcher.timers import Timers

Token = Mapping[str, Any]


class CheckpointSaver:
    def __init__(self, record: WatcherRecord, interval: float) -> None:
        self.record = record
        self._timers = Timers({"save": interval})
        self._pending: Token | None = None
        self._saved: Token | None = None
        self.saved_at = 0.0  # wall-clock time of the last save (0: none by this process)

    def note(self, token: Token | None) -> None:
        """The checkpoint may move to `token` (None: nothing new)."""
        if token is not None:
            self._pending = token

    def save(self, force: bool = False) -> None:
        """Persist the newest allowed token, at most once per interval unless forced."""
        token = self._pending
        if token is None or token == self._saved:
            return
        now = time.monotonic()
        if not force and not self._timers.ready("save", now):
            return
        if not self.record.save_checkpoint(token):
            raise LeaseLost()
        self.saved_at = time.time()
        self._saved = token
        self._timers.restart("save", now)
