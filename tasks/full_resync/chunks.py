"""The work of one resync chunk: copy an `_id` range of production, or sweep one of staging.

Both walk their range in `_id` order and record a checkpoint (the last `_id` done) after every
batch, so a chunk killed halfway, or stopped at its time budget, resumes where it was.

Copy: one version is taken immediately before the range is read, then the range is read with
one cursor, in batches of `resync_chunk_size`, each masked and applied through the usual merge
path with that version. Every batch was read after its version was taken (later batches even
later), which is all "Versions order reads" needs (DESIGN): a production write after the read
produces a change whose apply takes a larger version and reads again.

A small sample (`subset: {percent}` of at most SAMPLE_BY_ID_PERCENT, an environment's
`--sample`) is not read whole: the range is walked on the `_id` index alone (a covered query
on MongoDB: no document is fetched), the sample is decided from the `_id`s (it is a keyed hash
of the `_id`), and only the sampled documents are read, by `_id`, in lists of `in_list_max`.
Past that percent, looking the sampled ones up costs more than reading the range whole.

Into a staging that was empty when the resync began, or where a probe finds no copy of a
batch's production `_id`s, the batch skips the staging read (`staging_known_empty`): a copy
that another apply creates meanwhile makes our insert fail on the unique `_sync.pid` index, and
the applier re-plans it against a fresh read, so the versions still decide.

A copy that already holds production's content is left as it is (`write_unchanged=False`):
moving its version would cost a staging write (an oplog entry, replicated) per document, and
into an already-synced staging that was nearly all of a resync's time (20k documents at 2 ms
on SecantusDB: 62 of 74 s of the staging server's profiled time).

A chunk of ObjectIds sweeps its own span of staging (`SweptSpan`), where the resync started
with copies to sweep (`FOLDS_SWEEP`): the spellings of ObjectIds sort as they do, so each
batch's copies are read by one range of `_sync.pid`, from where the previous batch ended to
its last `_id` (the chunk's first batch from its lower bound, or from the first ObjectId's
spelling for the resync's first chunk; its last to its upper bound, or to the last ObjectId's
spelling). The copies found in that span beside the batch's have no production document in
the range just read (gone, outside the filter or the sample): those that no apply has written
since the resync began are applied as sweeps, there and then. Where that would hold more than
a batch in memory (more of them than of the batch's, or more than a page in a stretch no view
read), or staging refused the batch, the chunk leaves its span to the sweep phase, which
pages (`leave_to_sweep`). The spans of the chunks tile every ObjectId's spelling, so when
every chunk was of ObjectIds and swept its span, and staging holds no such copy of another
`_id` type, the resync needs no sweep phase (`stale_beyond_object_ids`): no second read of
staging, and no look-up of every copy's `_id` in production.

Sweep: reads the chunk's staging range in `_id` order with one cursor per task turn (so never
for longer than the turn's time budget), a page at a time, picks the synced, live documents
that no apply has written since the resync began (`_sync.v` below the resync's starting
version: the copies that were unchanged, and those whose production document is gone), asks
production which of those `_id`s it still has (one indexed `_id` read per 200), and applies
the missing ones as deletes through the normal apply, which reads production again first.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from pymongo.collection import Collection
from pymongo.errors import ExecutionTimeout
from stagesync.deployments.in_lists import in_lists
from stagesync.deployments.staging import SIMPLE
from stagesync.protocol.names import split_scope
from stagesync.protocol.parts import WHOLE
from stagesync.rules.document import Document
from stagesync.rules.id_ranges import IdRange, with_filter
from stagesync.rules.identity import (
    FIRST_OBJECT_ID,
    LAST_OBJECT_ID,
    decode_id,
    encode_id,
    spells_object_id,
)
from stagesync.rules.sync_meta import (
    DELETED_AT_FIELD,
    PID_FIELD,
    SYNC,
    VERSION_FIELD,
    read_meta,
)
from stagesync.state.dead_letters import DeadLetterEntry
from stagesync.state.environments import FILLING
from stagesync.state.resync_progress import (
    BATCH,
    EMPTY_START,
    FOLDS_SWEEP,
    HI,
    INDEX,
    LO,
    RESUME,
    UNSYNCED_START,
    V0,
    add_progress,
    checkpoint,
    leave_to_sweep,
    shrink_batch,
)
from stagesync.state.versions import take_version
from stagesync.tasks.apply.applier import ApplyOptions, apply_changes, apply_documents
from stagesync.tasks.apply.context import ApplyContext, ApplyResult, WriteErrors
from stagesync.tasks.runtime import Runtime

BY_ID = [("_id", 1)]
SWEEP_PAGE = 1000
SAMPLE_BY_ID_PERCENT = 20.0

Outcome = Literal["exhausted", "more", "lost"]  # range done | budget spent | chunk taken over


@dataclass
class ChunkRun:
    """One task's turn at a chunk it has claimed."""

    runtime: Runtime
    collection: str
    record: Document  # the resync's record
    chunk: Document  # the chunk's record (its `resume` follows the checkpoints)
    owner: str  # the Celery task id holding the chunk
    deadline: float  # time.monotonic() past which the task hands the rest on
    budget: float  # seconds one task works on the chunk

    @property
    def range(self) -> IdRange:
        return IdRange(self.chunk[LO], self.chunk.get(HI))

    @property
    def context(self) -> ApplyContext:
        return self.runtime.context(self.collection)

    @cached_property
    def followers_later(self) -> bool:
        """This resync fills an environment, whose fill copies the collections that follow
        this one only once this copy is done (`environment_ops.fill_order`)."""
        name, environment = split_scope(self.collection)
        if environment is None:
            return False
        record = self.runtime.environment_store.get(environment)
        return record is not None and record.state in FILLING and \
            record.resyncs.get(name) == self.record["_id"]

    def over_budget(self) -> bool:
        return time.monotonic() > self.deadline

    def leave_to_sweep(self) -> None:
        leave_to_sweep(self.runtime.state_db, self.chunk["_id"])

    def record_batch(self, resume: str | None, docs: int, counts: Mapping[str, int],
                     copied: int = 0) -> bool:
        """Checkpoint a batch; `resume`: the encoded `_id` (or parent pid) to go on after."""
        state_db = self.runtime.state_db
        if not checkpoint(state_db, self.chunk, self.owner, resume, docs, counts):
            return False
        add_progress(state_db, self.record["_id"], copied, counts)
        return True


# How long a resync's set-up looks for a never-synced staging document. No index holds "no
# `_sync`", so a staging where every document is synced is read whole to prove it (on MongoDB a
# collection scan, minutes at a hundred million documents, past a task's time limit). Past this
# the resync assumes there may be some: every batch then reads staging (`EmptinessProbe`
# "never"), as a copy that sweeps its spans does anyway.
UNSYNCED_PROBE_MS = 5_000


def may_hold_unsynced(target: Collection[Document]) -> bool:
    """Whether staging may hold a document without `_sync` (one a sync may adopt by its
    business key): False only when a bounded look found none."""
    try:
        return target.find_one({SYNC: {"$exists": False}}, {"_id": 1},
                               max_time_ms=UNSYNCED_PROBE_MS) is not None
    except ExecutionTimeout:
        return True


class EmptinessProbe:
    """Whether a batch can skip the staging read (see module doc).

    `all`: staging held no document at all when the resync began. `probe`: it held no
    document without `_sync` (none to adopt by business key), so a batch whose production
    `_id`s have no synced copy skips the read; one range query on the `_sync.pid` index tells.
    The probing stops, for this chunk, at the first batch that has copies. `never`: staging
    holds documents that a sync may adopt by their business key; always read.
    """

    def __init__(self, mode: str, target: Collection[Document]) -> None:
        self.mode = mode
        self.target = target
        self.probing = mode == "probe"

    @classmethod
    def for_resync(cls, record: Mapping[str, Any], target: Collection[Document]
                   ) -> EmptinessProbe:
        if record.get(EMPTY_START):
            return cls("all", target)
        return cls("never" if record.get(UNSYNCED_START, True) else "probe", target)

    def known_empty(self, pids: list[str], span: Mapping[str, str] | None = None) -> bool:
        """`span`: the batch's span of `_sync.pid` (`SweptSpan`), which must then hold no
        copy at all, the batch's or another's."""
        if self.mode == "all":
            return True
        if not self.probing or not pids:
            return False
        # Encoded pids are strings: every pid of the batch lies in [min, max] as a string,
        # so finding nothing there proves that none has a copy (a hit may be a neighbour's).
        # Simple collation: byte order (which is Python's str order), and stagesync's index.
        found = self.target.find_one(
            {PID_FIELD: dict(span) if span else {"$gte": min(pids), "$lte": max(pids)}},
            {"_id": 1}, collation=SIMPLE,
        )
        if found is not None:
            self.probing = False
            return False
        return True


class SweptSpan:
    """The span of `_sync.pid` a chunk of ObjectIds has read so far, batch by batch (module
    doc): each batch's span starts where the last one ended."""

    def __init__(self, run: ChunkRun) -> None:
        resume = run.chunk.get(RESUME)
        if resume is not None:
            self.start = {"$gt": resume}
        elif int(run.chunk[INDEX]) == 0:  # nothing in production before it
            self.start = {"$gte": FIRST_OBJECT_ID}
        else:
            self.start = {"$gte": run.chunk[LO]}  # bounds are kept encoded, as pids are
        hi = run.chunk.get(HI)
        self.end = {"$lt": hi} if hi is not None else {"$lte": LAST_OBJECT_ID}

    @classmethod
    def of(cls, run: ChunkRun) -> SweptSpan | None:
        """None where the chunk leaves the sweep to the sweep phase."""
        if not run.record.get(FOLDS_SWEEP) or not spells_object_id(run.chunk[LO]):
            return None
        return cls(run)

    def through(self, pid: str) -> dict[str, str]:
        """The next batch's span, which ends with `pid`."""
        span = {**self.start, "$lte": pid}
        self.start = {"$gt": pid}
        return span

    def rest(self) -> dict[str, str]:
        """The last batch's span, to the chunk's end."""
        return {**self.start, **self.end}


def copy_chunk(run: ChunkRun) -> Outcome:
    context = run.context
    batch_size = int(run.chunk.get(BATCH) or run.record.get(BATCH)
                     or context.settings.resync_chunk_size)
    probe = EmptinessProbe.for_resync(run.record, context.target.collection)
    version = take_version(run.runtime.state_db, context.name)
    query = with_filter(run.range.query(after=run.chunk.get(RESUME)), context.settings.filter)
    ids_only = samples_by_id(context)
    swept = SweptSpan.of(run)
    cursor = context.production.find(query, {"_id": 1} if ids_only else None, sort=BY_ID,
                                     batch_size=batch_size, hint=BY_ID)
    try:
        batch: dict[str, Document | None] = {}
        last: Any = None
        read_any = False  # `last` cannot tell: an `_id` can be null
        for document in cursor:
            read_any = True
            last = document["_id"]
            pid = encode_id(last)
            if context.sampled(pid):  # outside a `subset: {percent}` sample: as if absent
                batch[pid] = document if ids_only else context.masker.mask(document)
            if len(batch) < batch_size:
                continue
            started = time.monotonic()
            if ids_only:
                batch = read_sampled(context, batch)
            resume = encode_id(last)
            if not copy_batch(run, version, batch, resume, probe,
                              swept.through(resume) if swept else None):
                return "lost"
            batch = {}
            if time.monotonic() - started > run.budget / 2:
                # Applies this slow would run into the time limit: smaller batches from here.
                shrink_batch(run.runtime.state_db, run.chunk["_id"])
                return "more"
            if run.over_budget():
                return "more"
        if ids_only:
            batch = read_sampled(context, batch)
        if (read_any or swept) and not copy_batch(
                run, version, batch, encode_id(last) if read_any else run.chunk.get(RESUME),
                probe, swept.rest() if swept else None):
            return "lost"
        return "exhausted"
    finally:
        close = getattr(cursor, "close", None)
        if close is not None:
            close()


def samples_by_id(context: ApplyContext) -> bool:
    """A sample small enough to be decided on the `_id` index and looked up (module doc)."""
    subset = context.settings.subset
    return subset is not None and subset.percent is not None and \
        subset.percent <= SAMPLE_BY_ID_PERCENT


def sampled_share(context: ApplyContext) -> float:
    """The part of the walked `_id`s a copy chunk applies: a small sample's (`samples_by_id`)
    percent, else all of them."""
    subset = context.settings.subset
    if samples_by_id(context) and subset is not None and subset.percent is not None:
        return subset.percent / 100
    return 1.0


def read_sampled(context: ApplyContext, batch: Mapping[str, Document | None]
                 ) -> dict[str, Document | None]:
    """The sampled documents whose `_id`s the walk found, read and masked; one deleted since
    is left out, as a full read that came after its delete would have left it."""
    found: dict[str, Document] = {}
    ids = [document["_id"] for document in batch.values() if document is not None]
    for values in in_lists(ids):
        for document in context.production.find({"_id": {"$in": values}}):
            found[encode_id(document["_id"])] = context.masker.mask(document)
    return {pid: found[pid] for pid in batch if pid in found}


def copy_batch(run: ChunkRun, version: int, batch: dict[str, Document | None],
               resume: str | None, probe: EmptinessProbe,
               span: Mapping[str, str] | None = None) -> bool:
    """Apply one batch of masked production documents, sweep the copies of its `span`
    (`SweptSpan`) that are not of it, then checkpoint at `resume`."""
    context = run.context
    context.record_unclassified()
    if not batch:  # nothing left to copy (none of it sampled, or the chunk's end after its
        # last full batch): sweep the span, move the checkpoint on
        return run.record_batch(resume, 0, sweep_span(run, span) if span else {})
    run.runtime.rate_limiter.acquire(run.context.name, len(batch))
    known_empty = probe.known_empty(list(batch), span)
    ops = dict.fromkeys(batch, "resync")
    try:
        # compare_content: staging is read in full and compared, so a resync repairs drift
        # made by hand in staging.
        result = apply_documents(context, version, dict(batch), ops, ApplyOptions(
            compare_content=True, staging_known_empty=known_empty, write_unchanged=False,
            followers_later=run.followers_later,
            # Filling an environment, which no apply leaves documents out of untombstoned
            # before it is live (`ApplyContext.filling`): the copy's creates need no check.
            confirm_entered=not run.followers_later, pid_span=span))
        others = result.others
    except WriteErrors as refused:
        # A copy has no retry budget of its own: record what staging refused, go on.
        result = dead_letter_refused(run.runtime, run.collection, refused, "resync")
        others = None
    outcomes = Counter(result.outcomes)
    if span is not None and others is None:  # refused, or more copies beside it than in it
        run.leave_to_sweep()
    elif others:
        outcomes.update(_apply_gone(run, unwritten_since_start(run, others.values())))
    if not run.record_batch(resume, len(batch), outcomes, copied=len(batch)):
        return False
    run.runtime.report_done(run.collection, None, WHOLE, result, source="resync")
    return True


def sweep_chunk(run: ChunkRun) -> Outcome:
    context = run.context
    target = context.target.collection
    query = {
        **run.range.query(after=run.chunk.get(RESUME)),
        PID_FIELD: {"$exists": True},
        DELETED_AT_FIELD: {"$exists": False},
        VERSION_FIELD: {"$lt": int(run.record[V0])},
    }
    # One query per turn rather than one per page: a query costs a setup of its own, and on
    # SecantusDB an `_id` range query costs time in proportion to the whole collection (6 s
    # at 200k documents, however few it returns), which made a page-per-query sweep quadratic.
    cursor = target.find(query, {SYNC: 1}, sort=BY_ID, batch_size=SWEEP_PAGE, hint=BY_ID)
    try:
        page: list[Document] = []
        for document in cursor:
            page.append(document)
            if len(page) < SWEEP_PAGE:
                continue
            if not _sweep_and_record(run, page):
                return "lost"
            page = []
            if run.over_budget():
                return "more"
        if page and not _sweep_and_record(run, page):
            return "lost"
        return "exhausted"
    finally:
        cursor.close()


def _sweep_and_record(run: ChunkRun, page: list[Document]) -> bool:
    outcomes = _sweep_page(run, [doc[SYNC]["pid"] for doc in page])
    return run.record_batch(encode_id(page[-1]["_id"]), len(page), outcomes)


def _sweep_page(run: ChunkRun, pids: list[str]) -> Counter[str]:
    context = run.context
    present = {
        encode_id(doc["_id"])
        for ids in in_lists(decode_id(pid) for pid in pids)
        for doc in context.production.find(
            with_filter({"_id": {"$in": ids}}, context.settings.filter), {"_id": 1})
    }
    # Missing, outside the configured filter, or outside the sample: the apply soft-deletes.
    return _apply_gone(run, [pid for pid in pids if pid not in present
                             or not context.sampled(pid)])


def unwritten_since_start(run: ChunkRun, copies: Iterable[Mapping[str, Any]]) -> list[str]:
    """The pids of these copies that the sweep would pick (`sweep_chunk`'s query): synced,
    live, and written by no apply since the resync began."""
    v0 = int(run.record[V0])
    return [meta.pid for meta in map(read_meta, copies) if meta.pid is not None
            and meta.deleted_at is None and meta.version is not None and meta.version < v0]


def sweep_span(run: ChunkRun, span: Mapping[str, str]) -> Counter[str]:
    """Sweep the copies of a span of `_sync.pid` that no view read (a stretch with nothing in
    the sample, a chunk's end after its last full batch), or, past a page of them, leave them
    to the sweep phase, which pages."""
    query = {PID_FIELD: dict(span), DELETED_AT_FIELD: {"$exists": False},
             VERSION_FIELD: {"$lt": int(run.record[V0])}}
    found = list(run.context.target.collection.find(query, {SYNC: 1}, collation=SIMPLE,
                                                    limit=SWEEP_PAGE + 1))
    if len(found) > SWEEP_PAGE:
        run.leave_to_sweep()
        return Counter()
    return _apply_gone(run, unwritten_since_start(run, found))


def stale_beyond_object_ids(context: ApplyContext, v0: int) -> bool:
    """Whether staging holds a copy the sweep would pick (`unwritten_since_start`) whose pid
    is no ObjectId: the swept spans of a copy of ObjectIds do not reach it."""
    return any(context.target.collection.find_one(
        {PID_FIELD: beyond, DELETED_AT_FIELD: {"$exists": False}, VERSION_FIELD: {"$lt": v0}},
        {"_id": 1}, collation=SIMPLE) is not None
        for beyond in ({"$lt": FIRST_OBJECT_ID}, {"$gt": LAST_OBJECT_ID}))


def _apply_gone(run: ChunkRun, gone: list[str]) -> Counter[str]:
    """Apply these pids as sweeps: the apply reads production again, and soft-deletes the
    copies whose document is gone, outside the filter or outside the sample."""
    context = run.context
    if not gone:
        return Counter()
    run.runtime.rate_limiter.acquire(run.context.name, len(gone))
    try:
        result = apply_changes(context, dict.fromkeys(gone, "sweep"))
    except WriteErrors as refused:
        result = dead_letter_refused(run.runtime, run.collection, refused, "sweep")
    run.runtime.report_done(run.collection, None, WHOLE, result, source="resync")
    return result.outcomes


def dead_letter_refused(runtime: Runtime, collection: str, refused: WriteErrors, op: str
                        ) -> ApplyResult:
    # The collection's counter, also for an environment's resync (`orders@pr-1`).
    version = take_version(runtime.state_db, split_scope(collection)[0])
    runtime.dead_letters.record(
        DeadLetterEntry(collection=collection, pid=pid, op=op, reason="write_error",
                        error=message, version=version)
        for pid, message in refused.errors.items()
    )
    result = ApplyResult(version)
    result.outcomes["dead_lettered"] = len(refused.errors)
    return result
