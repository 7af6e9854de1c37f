"""When has staging caught up? Cheap, exact-enough probes against the staging server.

Why not poll a full comparison: reading 20k documents costs the test server ~0.8 s of CPU,
which would steal from the system under test on a 2-core machine and blur the end time.
Instead, every workload write sets `writeSeq` (see `bench.workload`), so each document's final
state is known in advance. The tracker reads only documents not yet confirmed, oldest final
write first, in `$in` batches of `PROBE_BATCH` documents, and never re-reads a confirmed one.
The end time is when the last pending document is confirmed; a full `verify_equal` follows,
untimed, and a run that does not verify does not count.

A staging document is found by a `StagingLocator`: by `_id` for the baselines (their staging
copy keeps production's `_id`); a system whose staging `_id`s differ brings its own
(`bench.product.BySyncPid`). A system that copies only part of production (a subset) says
which documents it copies (`SystemSpec.copies`); `expectations` marks the others as expected
absent (`Expected.copied` False), decided from the workload alone, never by reading staging.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from pymongo.collection import Collection

from bench.workload import MARKER, Expected, WriteRecord

# Documents per probe query. Small on purpose: SecantusDB's `$in` costs more per value the
# longer the list (20k documents, indexed `_id`: 100 values 26 ms, 500 values 450 ms, 2,000
# values 8.8 s; MongoDB's is linear), and the probes re-read the unconfirmed head every poll,
# so 500-document probes took most of the staging server's CPU from the system under test.
PROBE_BATCH = 100
# While the head stays unconfirmed, the pause between probes grows with the time being measured
# (this fraction of it, never below the base poll): the figure is overstated by at most ~1 %,
# and a system far behind is not probed 20-50 times a second, on this 2-core machine each probe
# being staging-server CPU taken from the system under test.
RELATIVE_POLL = 0.01


class StagingLocator(Protocol):
    """Fetches the staging documents standing for some production documents."""

    def fetch(self, coll: Collection[Any], wanted: Sequence[Expected]) -> dict[Any, dict[str, Any]]:
        """Map `Expected.id` -> the live staging document (soft-deleted ones left out)."""
        ...


@dataclass(frozen=True)
class ByProductionId:
    """Staging `_id` == production `_id` (the baselines copy documents whole)."""

    soft_delete_field: str | None = None

    def fetch(self, coll: Collection[Any], wanted: Sequence[Expected]) -> dict[Any, dict[str, Any]]:
        projection = {MARKER: 1, **({self.soft_delete_field: 1} if self.soft_delete_field else {})}
        found = coll.find({"_id": {"$in": [w.id for w in wanted]}}, projection)
        return {d["_id"]: d for d in found if not _soft_deleted(d, self.soft_delete_field)}


def _soft_deleted(doc: dict[str, Any], soft_delete_field: str | None) -> bool:
    return bool(soft_delete_field and doc.get(soft_delete_field))


def expectations(
    expected: Iterable[Expected], copies: Callable[[Expected], bool] | None = None
) -> list[Expected]:
    """What staging must show once everything is applied, for a system that copies only the
    documents `copies` accepts (None: all of them): any other is expected absent, whatever
    production did to it (`copied=False`). Why here and not in the system's locator: the
    completion time must count a document outside the subset as done exactly when staging
    has no live copy of it, and the harness decides membership from the workload alone."""
    if copies is None:
        return list(expected)
    return [e if copies(e) else replace(e, copied=False) for e in expected]


def _applied(doc: dict[str, Any] | None, wanted: Expected) -> bool:
    """Does this staging document (None = absent or soft-deleted) reflect `wanted`?"""
    if wanted.absent:
        return doc is None
    if doc is None:
        return False
    value = doc.get(MARKER)
    return isinstance(value, int) and value >= wanted.seq


def wait_until_applied(
    coll: Collection[Any],
    locator: StagingLocator,
    expected: Iterable[Expected],
    timeout: float,
    batch: int = PROBE_BATCH,
    poll: float = 0.05,
) -> tuple[float | None, int]:
    """Block until staging shows every expected final state, or `timeout` seconds pass.

    Returns (monotonic time the last document was confirmed or None on timeout, still pending).
    """
    pending = sorted(expected, key=lambda e: e.seq)
    started = time.monotonic()
    deadline = started + timeout
    while pending and time.monotonic() < deadline:
        head = pending[:batch]
        found = locator.fetch(coll, head)
        left = [e for e in head if not _applied(found.get(e.id), e)]
        pending = left + pending[batch:]
        if left:  # later writes are even less likely done: wait, then retry from the oldest
            time.sleep(max(poll, RELATIVE_POLL * (time.monotonic() - started)))
    return (time.monotonic() if not pending else None), len(pending)


@dataclass
class LagObserver:
    """Watches staging for each paced write and records its lag (steady-state scenario).

    A write counts as applied when staging shows its `writeSeq` or a later one, or — for a
    delete, or a document later deleted — shows the document gone. The lag recorded is the time
    of the probe that saw it minus the time the write was sent: an upper bound, within one poll
    interval (`poll`) plus one query.
    """

    coll: Collection[Any]
    locator: StagingLocator
    poll: float = 0.02
    batch: int = PROBE_BATCH
    lags: list[float] = field(default_factory=list)
    _pending: list[tuple[WriteRecord, Expected]] = field(default_factory=list)
    _deleted_at: dict[Any, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def add(self, record: WriteRecord, key: tuple[Any, ...]) -> None:
        op = record.op
        with self._lock:
            if op.kind == "delete":
                self._deleted_at[op.id] = op.seq
            self._pending.append((record, Expected(op.id, key, op.seq, op.kind == "delete")))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lag-observer", daemon=True)
        self._thread.start()

    def drain(self, timeout: float) -> int:
        """Wait until every added write is seen (or `timeout`); stop; return how many were not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    break
            time.sleep(0.05)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            return len(self._pending)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                head = self._pending[: self.batch]
            wait = self.poll
            if head:
                found = self.locator.fetch(self.coll, [e for _, e in head])
                seen_at = time.monotonic()
                done = {id(r) for r, e in head if self._seen(found.get(e.id), e)}
                with self._lock:
                    self.lags.extend(seen_at - r.sent for r, _ in head if id(r) in done)
                    self._pending = [p for p in self._pending if id(p[0]) not in done]
                unseen = [r.sent for r, _ in head if id(r) not in done]
                if unseen:  # relative to the youngest unseen write's age: its lag is >= that
                    wait = max(wait, RELATIVE_POLL * (seen_at - max(unseen)))
            self._stop.wait(wait)

    def _seen(self, doc: dict[str, Any] | None, wanted: Expected) -> bool:
        if _applied(doc, wanted):
            return True
        deleted = self._deleted_at.get(wanted.id)
        return doc is None and deleted is not None and deleted > wanted.seq


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]
