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

A flush can hold changes back (`drain(held=...)`): while the workers are busy, the watcher
holds the change of a document that a batch still in flight contains, so two applies of one
document do not run at once (the later one would lose its write race and plan again, and move
the version of a copy the first had just brought up to date). A held change stays buffered,
and the flush may only checkpoint up to the resume token read just before it
(`Drained.token`), so a restart reads it again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from stagesync.watcher.events import Change

Token = Mapping[str, Any]


@dataclass
class _Buffered:
    """When a document's oldest unpublished change was buffered."""

    seq: int
    before: Token | None  # the resume token read just before that change
    happened_at: datetime | None


class Drained(NamedTuple):
    per_queue: dict[str, list[tuple[str, str]]]  # what to publish, per queue
    seen: int  # raw changes read since the last drain
    token: Token | None  # how far the checkpoint may move once these are applied
    oldest: datetime | None  # when the oldest published change happened


class MicroBatcher:
    def __init__(self, queue_for: Callable[[str], str], max_size: int, max_wait: float,
                 busy_wait: float | None = None) -> None:
        self._queue_for = queue_for
        self.max_size = max_size
        self.max_wait = max_wait
        self.busy_wait = max(busy_wait if busy_wait is not None else max_wait, max_wait)
        self._buffers: dict[str, dict[str, str]] = {}
        self._buffered: dict[str, _Buffered] = {}
        self._seq = 0
        self._first_at: float | None = None
        self.changes_seen = 0

    def add(self, change: Change, now: float, before: Token | None = None,
            happened_at: datetime | None = None) -> None:
        """Buffer a change; `before` is the resume token read just before it, `happened_at`
        when it happened if the event does not say (`change.happened_at`)."""
        happened = change.happened_at or happened_at
        buffer = self._buffers.setdefault(self._queue_for(change.pid), {})
        buffer.pop(change.pid, None)  # re-insert so the latest operation is remembered
        buffer[change.pid] = change.op
        entry = self._buffered.get(change.pid)
        if entry is None:
            self._buffered[change.pid] = _Buffered(self._seq, before, happened)
            self._seq += 1
        elif happened and (entry.happened_at is None or happened < entry.happened_at):
            entry.happened_at = happened
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

    def drain(self, position: Token | None = None, held: Callable[[str], bool] | None = None,
              now: float = 0.0) -> Drained:
        """The buffered changes per queue, less those `held` keeps back (their wait clock
        restarts at `now`). `position` is the resume token after everything read so far."""
        per_queue: dict[str, list[tuple[str, str]]] = {}
        kept: dict[str, dict[str, str]] = {}
        oldest: datetime | None = None
        for queue, buffer in self._buffers.items():
            for pid, op in buffer.items():
                if held is not None and held(pid):
                    kept.setdefault(queue, {})[pid] = op
                    continue
                per_queue.setdefault(queue, []).append((pid, op))
                happened = self._buffered.pop(pid).happened_at
                if happened is not None and (oldest is None or happened < oldest):
                    oldest = happened
        token = position
        if kept:
            first = min((self._buffered[pid] for buffer in kept.values() for pid in buffer),
                        key=lambda entry: entry.seq)
            token = first.before
        seen = self.changes_seen
        self._buffers = kept
        self._first_at = now if kept else None
        self.changes_seen = 0
        return Drained(per_queue, seen, token, oldest)
