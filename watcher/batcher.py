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

import math
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

    def batches(self, max_size: int) -> list[tuple[str, list[tuple[str, str]]]]:
        """What to publish: (queue, changes), at most `max_size` changes each."""
        return [(queue, changes[start:start + max_size])
                for queue, changes in self.per_queue.items()
                for start in range(0, len(changes), max_size)]


def least_batch(room: bool, queue_waiting: bool, max_size: int) -> int:
    """The fewest changes a batch may carry if it is published now (issue 30).

    A message costs a whole apply whatever it carries (a version, the production read, the
    staging reads, a bulk write, a done report), and a message behind others in a queue is
    not applied any sooner for being small. So once the workers are busy (`room` False: the
    collection has `max_inflight_batches` batches in flight) and messages already wait in its
    queues, only full batches (`max_size`) are published; the rest stays in the buffer, where
    later changes join it and changes to one document coalesce. Without that rule, a burst
    that filled the window kept it full of tiny groups: under backpressure nothing is read, so
    each flush carried only the few changes a completion released from hold-back, published
    at once into a queue thousands deep, and each of those completions released the next few
    (TCP's silly window syndrome; a sender that waits for a full segment or an empty pipe, as
    Nagle's algorithm does, avoids it). Batches therefore grow with the backlog and never
    shrink under it: whatever has gathered goes as soon as the workers have room or the
    queues are empty (the very last changes of a burst, or a batch in flight whose message
    was lost: nothing waits behind it then).
    """
    if room or not queue_waiting:
        return 1
    return max_size


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
        # Per queue, the changes a drain left in the buffer (held, or too few to publish): the
        # size trigger counts only what came since, so a buffer of held changes does not make
        # every later change a flush of its own.
        self._kept: dict[str, int] = {}
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

    @property
    def only_kept(self) -> bool:
        """Something is buffered, and nothing came since the last drain left it there."""
        return bool(self._buffers) and all(len(buffer) <= self._kept.get(queue, 0)
                                           for queue, buffer in self._buffers.items())

    def due(self, now: float, stream_idle: bool, busy: bool = False) -> bool:
        if not self._buffers:
            return False
        if any(len(b) - self._kept.get(q, 0) >= self.max_size
               for q, b in self._buffers.items()):
            return True
        waited = now - self._first_at if self._first_at is not None else 0.0
        if busy:
            return waited >= self.busy_wait
        return stream_idle or waited >= self.max_wait

    def wait_left(self, now: float, busy: bool) -> float:
        """Seconds until `due` turns true by time alone (infinite with nothing buffered)."""
        if not self._buffers:
            return math.inf
        waited = now - self._first_at if self._first_at is not None else 0.0
        return max(0.0, (self.busy_wait if busy else self.max_wait) - waited)

    def drain(self, position: Token | None = None, held: Callable[[str], bool] | None = None,
              now: float = 0.0, least: int = 1) -> Drained:
        """The buffered changes per queue, less those `held` keeps back and less a queue's
        last batch if it would carry fewer than `least` changes (`least_batch`): those stay
        buffered, and their wait clock restarts at `now`. `position` is the resume token
        after everything read so far."""
        per_queue: dict[str, list[tuple[str, str]]] = {}
        kept: dict[str, dict[str, str]] = {}
        oldest: datetime | None = None
        for queue, buffer in self._buffers.items():
            ready = []
            for pid, op in buffer.items():
                if held is not None and held(pid):
                    kept.setdefault(queue, {})[pid] = op
                else:
                    ready.append((pid, op))
            short = len(ready) % self.max_size
            if least > 1 and 0 < short < least:  # the newest changes wait for more
                kept.setdefault(queue, {}).update(ready[-short:])
                ready = ready[:-short]
            if ready:
                per_queue[queue] = ready
            for pid, _ in ready:
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
        self._kept = {queue: len(buffer) for queue, buffer in kept.items()}
        self._first_at = now if kept else None
        self.changes_seen = 0
        return Drained(per_queue, seen, token, oldest)
