"""Adaptive micro-batching: one change per task when quiet, many per task under load.

Changes are buffered per queue (partition) and the buffers are flushed together:
- when any of them is full (`max_size`);
- when the workers have room (fewer than `max_inflight_batches` batches in flight) and either
  the stream has nothing more to give or the oldest buffered change waited `max_wait`: quiet
  times are low-latency, a lone change is flushed on the next empty read;
- when the workers are busy, only once the oldest change waited `busy_wait`: like a group
  commit, changes gather while the applies in flight run, so batches grow with the load and
  the fixed cost of an apply is paid once for many changes instead of once per trickle.
Several changes to one document in a buffer become one entry: one read and one write.
"""

from __future__ import annotations

from collections.abc import Callable

from watcher.events import Change


class MicroBatcher:
    def __init__(self, queue_for: Callable[[str], str], max_size: int, max_wait: float,
                 busy_wait: float | None = None) -> None:
        self._queue_for = queue_for
        self.max_size = max_size
        self.max_wait = max_wait
        self.busy_wait = max(busy_wait if busy_wait is not None else max_wait, max_wait)
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

    def due(self, now: float, stream_idle: bool, busy: bool = False) -> bool:
        if not self._buffers:
            return False
        if any(len(b) >= self.max_size for b in self._buffers.values()):
            return True
        waited = now - self._first_at if self._first_at is not None else 0.0
        if busy:
            return waited >= self.busy_wait
        return stream_idle or waited >= self.max_wait

    def drain(self) -> tuple[dict[str, list[tuple[str, str]]], int]:
        """The buffered changes per queue, and how many raw changes they stand for."""
        drained = {queue: list(buffer.items()) for queue, buffer in self._buffers.items()}
        seen = self.changes_seen
        self._buffers = {}
        self._first_at = None
        self.changes_seen = 0
        return drained, seen
