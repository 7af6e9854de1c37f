"""Full resync as Celery tasks: copy production by `_id` range, then sweep staging.

A resync runs in two phases, each a series of chunks (`_id` ranges, see
`rules.id_ranges`) spread over every queue of the collection, partitions included:
- copy (`stagesync.resync_chunk`): each chunk reads its production range once, in `_id` order,
  and applies it through the same merge path as the stream (`tasks.full_resync.chunks`);
- sweep (`stagesync.resync_sweep`): each chunk pages through a range of staging and
  soft-deletes the documents whose production document is gone, through a normal apply.

Nobody walks the whole collection: chunk bounds are found a chunk ahead of need by a bounded
walk of the `_id` index (`tasks.full_resync.walk`), and at most `inflight` chunks of a resync are
queued or running at once. Each finished chunk plans and publishes the next one (`advance`),
so the coordinator (`stagesync.resync`) only sets the resync up and starts the first chunks.
Every task is short: a chunk that reaches its time budget records where it is and continues
in a new message. Bookkeeping lives in staging (`state.resync_progress`): a killed chunk
resumes at its last checkpoint, and finished chunks are never redone.

A change made during the resync takes a later version when it is applied, so it wins over
the resync's copy whatever the order.

Production's indexes are mirrored when the resync is set up, or, into a target that was empty,
once the copy is done, as a bulk loader builds its secondary indexes after the load: building
an index over the documents in place costs less than maintaining it on every insert, and the
mirrored indexes are never unique (`rules.index_translation`), so no write of the copy or of
the stream depends on them. Into an empty target stagesync's own indexes that no lookup uses
(the purge's and the tombstones' TTL) are built after the copy too, before the resync moves on
(`full_resync.indexes_after`); those the applies look copies up by exist before any write.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import timedelta
from typing import Any, NoReturn

from bson import MinKey
from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from pymongo.errors import NetworkTimeout
from stagesync.deployments.failures import describe_error, is_transient
from stagesync.deployments.staging_indexes import missing_deferred
from stagesync.protocol.names import RESYNC, RESYNC_CHUNK, RESYNC_SWEEP
from stagesync.protocol.routing import queues_of
from stagesync.rules.id_ranges import type_bracket
from stagesync.rules.identity import decode_id, encode_id
from stagesync.state.pii_state import reset_after_resync
from stagesync.state.resync_progress import (
    BATCH,
    BY_PARENTS,
    COMPLETE,
    EMPTY_START,
    FOLDS_SWEEP,
    FOLLOW_EMBEDDED,
    HI,
    INDEX,
    INDEXES_AFTER,
    INFLIGHT,
    NEXT,
    OWNER,
    PHASE,
    PHASES,
    PLANNED,
    SPAN,
    STATE,
    TOTAL,
    UNSYNCED_START,
    V0,
    RecordMissing,
    add_progress,
    advance_plan,
    begin_phase,
    chunk_id,
    claim_chunk,
    copy_swept_all,
    ensure_resync_indexes,
    fail,
    finish,
    finish_chunk,
    held_chunk,
    in_flight,
    load,
    load_chunk,
    new_resync,
    next_queued_chunk,
    note_follow_embedded,
    phase_plan,
    record_chunk,
    shrink_batch,
    stale_chunks,
    summary,
)
from stagesync.state.versions import take_version
from stagesync.tasks.apply.context import ApplyContext
from stagesync.tasks.celery_app import app
from stagesync.tasks.celery_options import soft_time_limit
from stagesync.tasks.environment_ops import continue_filling, parent_copied
from stagesync.tasks.full_resync.by_parents import (
    copies_by_parents,
    copy_by_parents,
    embedded_at_follow,
    indexed_follow,
)
from stagesync.tasks.full_resync.chunks import (
    SWEEP_PAGE,
    ChunkRun,
    Outcome,
    copy_chunk,
    may_hold_unsynced,
    sampled_share,
    stale_beyond_object_ids,
    sweep_chunk,
)
from stagesync.tasks.full_resync.collector import collector_paused
from stagesync.tasks.full_resync.indexes_after import complete_indexes, defer_indexes
from stagesync.tasks.full_resync.walk import (
    WHOLE_COLLECTION,
    IdIndex,
    ProductionIds,
    StagingIds,
    first_id,
    plan_chunk,
)
from stagesync.tasks.index_mirror_runs import mirror_for_resync
from stagesync.tasks.instrumented import stagesync_task
from stagesync.tasks.runtime import Runtime, get_runtime

log = logging.getLogger("stagesync.resync")

CHUNK_TASKS = {"copy": RESYNC_CHUNK, "sweep": RESYNC_SWEEP}
# Chunks per in-flight slot. The walk cuts chunks of equal size, and every chunk costs one
# walk step and one range read; large collections get more chunks anyway (below).
CHUNKS_PER_SLOT = 1
# A chunk is read with one cursor per task turn, in batches of `resync_chunk_size`; past this
# many batches the collection is cut into more chunks, so that a large collection has more
# chunks than workers (a worker done early takes the next one).
MAX_BATCHES_PER_CHUNK = 200
SWEEP_PAGES_PER_CHUNK = (10, 200)  # bounds of a sweep chunk, in pages of SWEEP_PAGE
# Planning steps one task may take before leaving the rest to the next finished chunk.
MAX_PLAN_STEPS = 64


def chunk_span(estimate: int, inflight: int, batch: int, share: float = 1.0) -> int:
    """Documents per copy chunk: enough chunks to keep `inflight` workers busy, no chunk
    applying more than MAX_BATCHES_PER_CHUNK batches. The span is rounded down: rounded up,
    181 documents over 18 slots gave spans of 11 and only 17 chunks.

    `share`: the part of a chunk's documents it applies. A small sample (`samples_by_id`)
    walks every `_id` and applies its percent, so its chunks are sized by what they apply:
    sized by the `_id`s, a 5 % environment of 20,000 users was cut into two chunks of about
    500 documents, each less than one batch, and planning them walked the `_id` index twice
    more (on the test server every such walk reads the whole collection)."""
    applied = math.ceil(max(estimate, 1) * share)
    wanted = applied // (max(inflight, 1) * CHUNKS_PER_SLOT)
    return math.floor(max(batch, min(wanted, batch * MAX_BATCHES_PER_CHUNK)) / share)


def sweep_span(estimate: int, inflight: int) -> int:
    smallest, largest = (SWEEP_PAGE * n for n in SWEEP_PAGES_PER_CHUNK)
    return max(smallest, min(math.ceil(max(estimate, 1) / max(inflight, 1)), largest))


def time_budget(runtime: Runtime) -> float:
    """Seconds a chunk task works before handing on: half its soft time limit, so that the
    hand-on (a new message) never races the limit. (It used to be at least 1 s, which with a
    hard limit under 17 s equalled the 1 s soft limit: the limit could fire while the task
    handed on, outside its body, and the chunk's message was lost.)"""
    return soft_time_limit(runtime.settings.worker) * 0.5


def stale_after(runtime: Runtime) -> timedelta:
    """A chunk whose holder has not checkpointed for this long may be taken over."""
    return timedelta(seconds=runtime.settings.worker.visibility_timeout_seconds)


@stagesync_task(RESYNC, max_retries=None)
def resync(self: Task, collection: str, resync_id: str | None = None) -> str:
    """Set a resync up and start its first chunks (also `celery -A stagesync.tasks call`-able).

    Idempotent: run again on a resync in progress, it re-publishes chunks whose messages were
    lost (no checkpoint for a visibility timeout) and plans what is missing.
    """
    runtime = get_runtime()
    state_db = runtime.state_db
    try:
        ensure_resync_indexes(state_db)
        if resync_id is None:
            resync_id = new_resync(state_db, collection, "celery call")
        record = load(state_db, resync_id)
        if record is None:
            log.warning("resync record missing", extra={"collection": collection,
                                                        "resync": resync_id})
            return resync_id
        if record[STATE] == "planning":
            _set_up(runtime, collection, resync_id, record)
        advance(runtime, collection, resync_id, revive=True)
    except Exception as error:
        # An overrun (a slow server: the soft time limit fired while planning) is retried
        # too: set-up and planning are idempotent and planned chunks are kept, so the next
        # run goes on from where this one stopped instead of failing the whole resync.
        if _retryable(error) or _overran(error):
            raise self.retry(exc=error, countdown=5, max_retries=None) from None
        fail(state_db, resync_id or "", describe_error(error))
        log.exception("resync failed", extra={"collection": collection, "resync": resync_id})
        raise
    return resync_id


def _set_up(runtime: Runtime, collection: str, resync_id: str, record: dict[str, Any]
            ) -> None:
    """Fix what the resync's chunks rely on, then open the copy phase. An environment's
    follower (`subset: {follow}`) is started with its parent's copy, so that what it can ask
    production beforehand is asked while that copy runs; it opens its copy only once the
    parent's is done (`environment_ops.parent_copied`), when the parent's finish starts it
    again."""
    context = runtime.context(collection)
    if context.environment is not None and not parent_copied(
            runtime.settings, runtime.state_db, context.name, context.environment):
        # Asked only where the copy may go by parents: the parent is itself a subset.
        if FOLLOW_EMBEDDED not in record and context.confirms_entered \
                and indexed_follow(context):
            note_follow_embedded(runtime.state_db, resync_id, embedded_at_follow(context))
        return
    settings = context.settings
    # Every version this resync's applies take is larger: the sweep tells by it which
    # staging documents no apply has written since the resync began. (The collection's
    # counter, also for a resync into an environment, `orders@pr-1`: one counter orders the
    # writes of every target.)
    started_at_version = take_version(runtime.state_db, context.name)
    target = context.target.collection
    empty = target.find_one({}, {"_id": 1}) is None
    unsynced = not empty and may_hold_unsynced(target)
    inflight = max(runtime.settings.watcher.max_inflight_batches, len(queues_of(settings)))
    production = ProductionIds(context.production)
    estimate = production.estimated_count()
    if copies_by_parents(runtime, context, empty, record.get(FOLLOW_EMBEDDED)):
        plan = phase_plan(WHOLE_COLLECTION, [MinKey()], encode_id)
    else:
        span = chunk_span(estimate, inflight, settings.resync_chunk_size,
                          sampled_share(context))
        plan = phase_plan(span, first_id(production), encode_id)
    by_parents = plan[SPAN] == WHOLE_COLLECTION
    if not empty and missing_deferred(target, settings):
        # An earlier resync's load that never built them (it failed).
        complete_indexes(runtime, collection)
    begin_phase(runtime.state_db, resync_id, "planning", "copy", plan, {
        V0: started_at_version, EMPTY_START: empty, UNSYNCED_START: unsynced,
        INFLIGHT: inflight, BATCH: settings.resync_chunk_size, TOTAL: estimate,
        BY_PARENTS: by_parents, FOLDS_SWEEP: not empty and not by_parents,
        INDEXES_AFTER: empty,
    })
    if empty:  # recorded first: a worker that starts from here on leaves them to us
        defer_indexes(runtime, collection)
    log.info("resync started", extra={"collection": collection, "resync": resync_id,
                                      "estimate": estimate, "chunk_docs": plan[SPAN],
                                      "inflight": inflight, "empty_staging": empty,
                                      "by_parents": by_parents})
    if not empty:
        mirror_for_resync(runtime, collection)


def advance(runtime: Runtime, collection: str, resync_id: str, revive: bool = False) -> None:
    """Plan and publish chunks while the phase has room; open the sweep, or finish, once a
    phase has no chunk left. Safe to run from any number of tasks at once."""
    state_db = runtime.state_db
    for _ in range(MAX_PLAN_STEPS):
        record = load(state_db, resync_id)
        if record is None or record.get(STATE) not in ("applying", "sweeping"):
            return
        phase = "copy" if record[STATE] == "applying" else "sweep"
        plan = record.get(phase) or {}
        busy = in_flight(state_db, resync_id, phase)
        if plan.get(COMPLETE):
            if busy:
                break
            if phase == "copy":
                _open_sweep(runtime, collection, record)
            else:
                _finish(runtime, collection, resync_id)
                return
            continue
        if busy >= int(record.get(INFLIGHT) or 1):
            break
        _plan_one(runtime, collection, record, phase)
    if revive:
        _revive(runtime, collection, resync_id)


def _index_of(runtime: Runtime, collection: str, phase: str) -> IdIndex:
    context = runtime.context(collection)
    if phase == "copy":
        return ProductionIds(context.production)
    return StagingIds(context.target.collection)


def _plan_one(runtime: Runtime, collection: str, record: dict[str, Any], phase: str) -> None:
    """Find the next chunk's bounds, record it, publish it, then count it as planned (after
    looking for the next bracket's first `_id`, when the chunk ends with its bracket)."""
    state_db = runtime.state_db
    plan = record[phase]
    index = int(plan[PLANNED])
    walk = _index_of(runtime, collection, phase)
    lo = decode_id(plan[NEXT])
    span = int(plan[SPAN])
    # TOTAL is the production estimate until the resync finishes.
    covers_rest = phase == "copy" and span >= int(record.get(TOTAL) or 0)
    chunk_range, following = plan_chunk(walk, lo, span, covers_rest)
    chunk = record_chunk(state_db, record["_id"], phase, index, chunk_range)
    if chunk.get(HI) != chunk_range.hi:
        # Recorded by a planner that died before counting it: its bounds stand.
        following = [decode_id(chunk[HI])] if chunk.get(HI) is not None else None
    if chunk[STATE] != "done":
        _publish(runtime, collection, record["_id"], phase, index)
    if following is None:  # the chunk ends with its bracket: the next one starts in another
        following = first_id(walk, type_bracket(lo))
    advance_plan(state_db, record["_id"], phase, index,
                 encode_id(following[0]) if following else None)


def _publish(runtime: Runtime, collection: str, resync_id: str, phase: str, index: int) -> None:
    queues = queues_of(runtime.context(collection).settings)
    app.send_task(CHUNK_TASKS[phase], args=[collection, resync_id, index],
                  queue=queues[index % len(queues)])


def _revive(runtime: Runtime, collection: str, resync_id: str) -> None:
    record = load(runtime.state_db, resync_id) or {}
    phase = {"applying": "copy", "sweeping": "sweep"}.get(record.get(STATE, ""))
    if phase is None:
        return
    for chunk in stale_chunks(runtime.state_db, resync_id, phase, stale_after(runtime)):
        log.warning("resync chunk re-published", extra={"collection": collection,
                                                        "resync": resync_id,
                                                        "chunk": chunk[INDEX]})
        _publish(runtime, collection, resync_id, phase, int(chunk[INDEX]))


def _open_sweep(runtime: Runtime, collection: str, record: dict[str, Any]) -> None:
    """Plan the sweep. None is needed after a copy into an empty staging: every staging
    document was then written by an apply that began after the resync did, so none can hold
    a version below the resync's first one (the sweep's criterion). Nor after a copy whose
    chunks swept their own spans (`chunks.SweptSpan`), when those covered every copy the
    sweep could pick."""
    context = runtime.context(collection)
    target = StagingIds(context.target.collection)
    swept = not record.get(EMPTY_START) and _copy_swept(runtime, context, record)
    if record.get(EMPTY_START) or swept:
        span, first = SWEEP_PAGE, []
    else:
        span = sweep_span(target.estimated_count(), int(record.get(INFLIGHT) or 1))
        first = first_id(target)
    if record.get(INDEXES_AFTER):
        complete_indexes(runtime, collection)
    plan = phase_plan(span, first, encode_id)
    if begin_phase(runtime.state_db, record["_id"], "applying", "sweep", plan):
        log.info("resync sweeping", extra={"collection": collection, "resync": record["_id"],
                                           "chunk_docs": span, "swept_by_copy": swept})
        if record.get(EMPTY_START):
            mirror_for_resync(runtime, collection)


def _copy_swept(runtime: Runtime, context: ApplyContext, record: dict[str, Any]) -> bool:
    """Whether the copy's chunks swept every copy the sweep could pick: every chunk was of
    ObjectIds (their spans tile all ObjectIds' spellings) and swept its whole span, and
    staging holds no such copy of another `_id` type."""
    return bool(record.get(FOLDS_SWEEP)) and \
        copy_swept_all(runtime.state_db, record["_id"]) and \
        not stale_beyond_object_ids(context, int(record[V0]))


def _finish(runtime: Runtime, collection: str, resync_id: str) -> None:
    result, copied = summary(runtime.state_db, resync_id)
    if finish(runtime.state_db, resync_id, result, copied):
        context = runtime.context(collection)
        if context.environment is None:
            reset_after_resync(runtime.state_db, collection, context.masker.fingerprint)
        log.info("resync finished", extra={"collection": collection, "resync": resync_id,
                                           "documents": copied, "summary": result})
    environment = runtime.context(collection).environment
    if environment is not None:
        # The next collections of the environment's copy, or `live` once all are done.
        continue_filling(runtime.settings, runtime.state_db, runtime.environment_store, app,
                         environment)


def _run_chunk(task: Task, phase: str, collection: str, resync_id: str, index: int) -> None:
    """Work on chunks of the resync within the time budget, then hand on or stop."""
    worker = ChunkWorker(get_runtime(), str(task.request.id), phase, collection, resync_id,
                         index)
    try:
        outcome = worker.work()
    except Exception as error:
        if _overran(error):
            try:
                smaller = shrink_batch(worker.runtime.state_db, worker.current_key)
            except Exception:  # the retry below matters more than the shrink
                smaller = None
            log.warning("resync batch took too long; the chunk goes on with smaller ones",
                        extra={"collection": collection, "resync": resync_id,
                               "chunk": worker.index, "batch": smaller})
            hand_on(task, worker.args, countdown=1, error=error)
        if _retryable(error):
            hand_on(task, worker.args, countdown=5, error=error)
        fail(worker.runtime.state_db, resync_id, describe_error(error))
        log.exception("resync chunk failed", extra={"collection": collection,
                                                    "resync": resync_id, "phase": phase,
                                                    "chunk": worker.index})
        raise
    if outcome == "more":
        # Same task id: the new message takes the chunk back from where it stands.
        hand_on(task, worker.args, countdown=0)


def hand_on(task: Task, args: list[Any], countdown: float,
            error: BaseException | None = None) -> NoReturn:
    """Continue in a new message of the same task id (`task.retry`). Should the soft time
    limit fire while that message is published (a loaded machine, a slow broker), Celery's
    retry rejects the message being run without requeueing it, and the chunk this task holds
    would wait for a coordinator to revive it (seen in CI: a resync that never finished). The
    message goes back to the queue instead (acks_late), and its redelivery takes the chunk
    back (`held_chunk`)."""
    try:
        raise task.retry(args=args, exc=error, countdown=countdown, max_retries=None)
    except Reject as rejected:
        if isinstance(rejected.reason, SoftTimeLimitExceeded):
            raise Reject(rejected.reason, requeue=True) from None
        raise


class ChunkWorker:
    """One task's turn: the chunk it holds or was sent, then, while its time budget lasts,
    further queued chunks of the same phase. A worker that finishes a chunk keeps its place
    instead of queueing behind the stream's batches; the other chunk's own message, when it
    comes, finds the chunk taken or done and gives way."""

    def __init__(self, runtime: Runtime, owner: str, phase: str, collection: str,
                 resync_id: str, index: int) -> None:
        self.runtime = runtime
        self.owner = owner
        self.phase = phase
        self.collection = collection
        self.resync_id = resync_id
        self.index = index
        self.budget = time_budget(runtime)
        self.deadline = time.monotonic() + self.budget

    @property
    def args(self) -> list[Any]:
        return [self.collection, self.resync_id, self.index, self.phase]

    @property
    def current_key(self) -> str:
        return chunk_id(self.resync_id, self.phase, self.index)

    def work(self) -> Outcome:
        state_db = self.runtime.state_db
        # A redelivered message first takes back what this task held when its worker died.
        chunk = held_chunk(state_db, self.resync_id, self.owner) or \
            load_chunk(state_db, self.current_key)
        outcome: Outcome = "lost"
        while chunk is not None:
            self.index, self.phase = int(chunk[INDEX]), str(chunk[PHASE])
            record = load(state_db, self.resync_id)
            if record is None or record.get(STATE) in ("done", "failed"):
                return "lost"  # expired, or a resync that has ended
            if chunk[STATE] == "done":
                outcome = "exhausted"  # a redelivery after it finished
            elif not claim_chunk(state_db, chunk, self.owner, stale_after(self.runtime)):
                outcome = "lost"  # a duplicate message: the chunk's holder is alive
            else:
                outcome = self._run(record, chunk)
                if outcome == "more":
                    return outcome
            advance(self.runtime, self.collection, self.resync_id)
            if time.monotonic() > self.deadline:
                break
            # The copy may have ended meanwhile: go on with the sweep, same task.
            current = (load(state_db, self.resync_id) or {}).get(STATE)
            self.phase = "sweep" if current == "sweeping" else self.phase
            chunk = next_queued_chunk(state_db, self.resync_id, self.phase)
        return outcome

    def _run(self, record: dict[str, Any], chunk: dict[str, Any]) -> Outcome:
        chunk[STATE], chunk[OWNER] = "running", self.owner
        run = ChunkRun(self.runtime, self.collection, record, chunk, self.owner, self.deadline,
                       self.budget)
        with collector_paused():
            if self.phase == "sweep":
                outcome = sweep_chunk(run)
            else:
                outcome = copy_by_parents(run) if record.get(BY_PARENTS) else copy_chunk(run)
        if outcome == "exhausted" and finish_chunk(self.runtime.state_db, chunk, self.owner):
            add_progress(self.runtime.state_db, self.resync_id, 0, {}, chunks_done=1)
        return outcome


def _retryable(error: BaseException) -> bool:
    return is_transient(error) or isinstance(error, RecordMissing)


def _overran(error: BaseException) -> bool:
    """A batch took too long: the soft time limit fired (possibly inside a library that
    re-raised it as its own error: pymongo reports it as InvalidBSON when it lands during
    decoding), or a server did not answer within the socket timeout. Retrying the same batch
    would take as long again; a smaller one will not."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, SoftTimeLimitExceeded | NetworkTimeout) or (
                "SoftTimeLimitExceeded" in str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@stagesync_task(RESYNC_CHUNK, max_retries=None)
def resync_chunk(self: Task, collection: str, resync_id: str, index: int,
                 phase: str = "copy") -> None:
    """Copy one `_id` range of production into staging (or, continued into the sweep, sweep
    one range of staging)."""
    _run_chunk(self, phase, collection, resync_id, index)


@stagesync_task(RESYNC_SWEEP, max_retries=None)
def resync_sweep(self: Task, collection: str, resync_id: str, index: int,
                 phase: str = "sweep") -> None:
    """Soft-delete the staging documents of one `_id` range whose production document is gone."""
    _run_chunk(self, phase, collection, resync_id, index)


assert set(PHASES) == set(CHUNK_TASKS)
