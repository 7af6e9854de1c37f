"""The changes in flight and the low watermark that the checkpoint may move to.

Each flush of the micro-batcher forms a group: the batches published for it (one per queue)
and the resume token of the last event read before it. The checkpoint may move to a group's
token once that group and every group before it are done, so a restart from the checkpoint
can never skip a change that was not applied.

A batch is done when its done reports cover it. Workers split a failing batch in halves (and
halves of halves: `protocol.parts.BatchPart`), and each part reports by itself; duplicate
reports (a redelivered message) are harmless because coverage is a set, not a count.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stagesync.protocol.parts import WHOLE, BatchPart

Changes = Sequence[tuple[str, str]]


@dataclass
class BatchInFlight:
    batch_id: str
    queue: str
    changes: Changes
    published_at: float
    parts_done: set[BatchPart] = field(default_factory=set)
    complete: bool = False

    def covered(self, part: BatchPart = WHOLE) -> bool:
        return part.covered_by(self.parts_done)


@dataclass
class FlushGroup:
    token: Mapping[str, Any] | None
    batches: dict[str, BatchInFlight]
    oldest_change_at: datetime | None

    @property
    def complete(self) -> bool:
        return all(batch.complete for batch in self.batches.values())


class InflightWindow:
    def __init__(self) -> None:
        self._groups: OrderedDict[int, FlushGroup] = OrderedDict()
        self._batches: dict[str, tuple[int, BatchInFlight]] = {}
        self._next_seq = 0
        self.unapplied = 0
        # Counted as batches open and complete, not by a scan: the watcher asks before every
        # event it reads, and a burst keeps hundreds of batches in flight.
        self.batches_in_flight = 0
        # How many incomplete batches hold each production `_id`: a new change of one of these
        # waits (`MicroBatcher.drain(held=...)`).
        self._pids: dict[str, int] = {}

    def open_group(
        self,
        token: Mapping[str, Any] | None,
        batches: Mapping[str, tuple[str, Changes]],
        now: float,
        oldest_change_at: datetime | None,
    ) -> int:
        """Register a flush: `batches` maps batch id -> (queue, changes)."""
        seq = self._next_seq
        self._next_seq += 1
        entries = {
            batch_id: BatchInFlight(batch_id, queue, list(changes), now)
            for batch_id, (queue, changes) in batches.items()
        }
        self._groups[seq] = FlushGroup(token, entries, oldest_change_at)
        for batch_id, entry in entries.items():
            self._batches[batch_id] = (seq, entry)
            self.unapplied += len(entry.changes)
            for pid, _ in entry.changes:
                self._pids[pid] = self._pids.get(pid, 0) + 1
        self.batches_in_flight += len(entries)
        return seq

    def part_done(self, batch_id: str, part: BatchPart) -> bool:
        """Record a done report; True when it completed its batch. Unknown ids are ignored
        (reports addressed to an earlier run of the watcher)."""
        found = self._batches.get(batch_id)
        if found is None:
            return False
        _, batch = found
        if batch.complete:
            return False
        batch.parts_done.add(part)
        if batch.covered():
            batch.complete = True
            self.unapplied -= len(batch.changes)
            self.batches_in_flight -= 1
            for pid, _ in batch.changes:
                left = self._pids[pid] - 1
                if left:
                    self._pids[pid] = left
                else:
                    del self._pids[pid]
            return True
        return False

    def advance(self) -> Mapping[str, Any] | None:
        """Drop the leading complete groups; return the newest token they allow, if any."""
        token = None
        advanced = False
        while self._groups:
            seq, group = next(iter(self._groups.items()))
            if not group.complete:
                break
            del self._groups[seq]
            for batch_id in group.batches:
                self._batches.pop(batch_id, None)
            token = group.token
            advanced = True
        return token if advanced else None

    def holds(self, pid: str) -> bool:
        """Whether a batch still in flight holds a change of this production `_id`."""
        return pid in self._pids

    def incomplete(self) -> list[BatchInFlight]:
        return [batch for _, batch in self._batches.values() if not batch.complete]

    def any_expired(self, now: float, timeout: float, since: float = 0.0) -> bool:
        return any(now - max(batch.published_at, since) > timeout
                   for batch in self.incomplete())

    def expired(self, now: float, timeout: float, since: float = 0.0) -> list[BatchInFlight]:
        """Incomplete batches that waited more than `timeout`, counted from their publication
        or from `since`, whichever is later; their clock restarts."""
        stale = [b for b in self.incomplete() if now - max(b.published_at, since) > timeout]
        for batch in stale:
            batch.published_at = now
        return stale

    def oldest_pending_change(self) -> datetime | None:
        for group in self._groups.values():
            if not group.complete:
                return group.oldest_change_at
        return None

    @property
    def empty(self) -> bool:
        return not self._groups

    @property
    def groups(self) -> int:
        return len(self._groups)
