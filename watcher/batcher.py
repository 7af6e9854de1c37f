"""Adaptive micro-batching: one change per task when quiet, many per task under load.

Changes are buffered per queue (partition). The buffers are flushed together when any of them
is full, when the oldest buffered change has waited `max_wait` seconds, or as soon as the
stream has nothing more to give, which is what makes quiet times low-latency: a lone change is
flushed on the next empty read. Several changes to one document in a buffer become one entry,
so they cost one read and one write.
"""

from __future__ import annotations

from collections.abc import Callable

from watcher.events import Change


class MicroBatcher:
    def __init__(self, queue_for: Callable[[str], str], max_size: int, max_wait: float) -> None:
        self._queue_for = queue_for
        self.max_size = max_size
        self.max_wait = max_wait
        self._buffers: dict[str, dict[str, str]] = {}
        self._first_at: float | None = None
        self.changes_seen = 0

    def add(self, change: Change, now: float) -> None:
        buffer = self._buffers.setdefault(self._queue_for(change.pid), {})
        buffer.pop(change.pid, None)  # re-insert so the latest operation is remembered
        buffer[change.pid] = change.op
        self.changes_seen += 1
        if self._first_at is None:
            self._first_at = now

    @property
    def size(self) -> int:
        return sum(len(buffer) for buffer in self._buffers.values())

    def due(self, now: float, stream_idle: bool) -> bool:
        if not self._buffers:
            return False
        if stream_idle or any(len(b) >= self.max_size for b in self._buffers.values()):
            return True
        return self._first_at is not None and now - self._first_at >= self.max_wait

    def drain(self) -> tuple[dict[str, list[tuple[str, str]]], int]:
        """The buffered changes per queue, and how many raw changes they stand for."""
        drained = {queue: list(buffer.items()) for queue, buffer in self._buffers.items()}
        seen = self.changes_seen
        self._buffers = {}
        self._first_at = None
        self.changes_seen = 0
        return drained, seen
