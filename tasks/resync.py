"""Full resync as Celery tasks: plan chunks, apply them in parallel, then sweep.

- `stagesync.resync` (the coordinator) walks production's `_id`s once, cuts them into chunks
  of `resync_chunk_size` and enqueues one chunk task each, spread over the collection's queues.
  A chunk never spans two BSON type brackets, because MongoDB range queries on `_id` only
  match values of the bound's own type: that is how collections whose `_id`s mix types are
  covered completely.
- `stagesync.resync_chunk` takes a version, reads its range (masked at once) and applies it
  through the same merge path as the stream. A change made during the resync takes a later
  version when it is applied, so it wins over the resync's copy whatever the order.
- `stagesync.resync_sweep` runs once every chunk is done: staging documents that came from
  production but whose production document is gone (or left the configured filter) are
  soft-deleted, each through a normal apply that re-reads production first, so a document
  inserted during the resync is never swept. Documents that never came from production are
  not even looked at.

Progress lives in staging (`resyncs`, one document per resync and one per finished chunk), so
`stagesync resync --wait` and `status` can follow it from anywhere and a redelivered chunk is
counted once.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from bson import Decimal128, Int64
from celery import Celery, Task
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from tasks.app import app
from tasks.applier import ApplyResult, WriteErrors, apply_changes, apply_documents
from tasks.constants import RESYNC, RESYNC_CHUNK, RESYNC_SWEEP, RESYNCS
from tasks.dead_letters import DeadLetterEntry
from tasks.errors import describe_error, is_transient
from tasks.pii_state import reset_after_resync
from tasks.rules.identity import decode_id, encode_id
from tasks.rules.sync_meta import DELETED_AT_FIELD, PID_FIELD, SYNC
from tasks.runtime import Runtime, get_runtime
from tasks.versions import take_version

log = logging.getLogger("stagesync.resync")

SWEEP_BATCH = 1000
SUMMARY_OUTCOMES = ("created", "updated", "unchanged", "soft_deleted", "dead_lettered",
                    "superseded")
# Planning and sweeping walk whole collections; they may run longer than one apply.
LONG_TASK_LIMIT = 3600


def start_resync(
    celery: Celery, state_db: Database[dict[str, Any]], collection: str, queue: str, reason: str
) -> str:
    """Record a new resync and enqueue its coordinator; returns the resync id."""
    resync_id = f"{collection}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    state_db[RESYNCS].insert_one({
        "_id": resync_id, "kind": "resync", "collection": collection, "state": "planning",
        "reason": reason, "startedAt": datetime.now(UTC),
    })
    celery.send_task(RESYNC, args=[collection, resync_id], queue=queue)
    return resync_id


def type_bracket(value: Any) -> str:
    """MongoDB's comparison bracket of a value: range queries never cross brackets."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float | Int64 | Decimal128):
        return "number"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def plan_chunks(ids: Iterator[Any], chunk_size: int) -> Iterator[tuple[Any, Any, int]]:
    """(first, last, count) of consecutive `_id`s, cut by size and by type bracket."""
    first = last = None
    count = 0
    bracket = None
    for value in ids:
        value_bracket = type_bracket(value)
        if count and (count >= chunk_size or value_bracket != bracket):
            yield first, last, count
            count = 0
        if count == 0:
            first, bracket = value, value_bracket
        last = value
        count += 1
    if count:
        yield first, last, count


@app.task(name=RESYNC, bind=True, acks_late=True, reject_on_worker_lost=True,
          time_limit=LONG_TASK_LIMIT, soft_time_limit=LONG_TASK_LIMIT - 60)
def resync(self: Task, collection: str, resync_id: str | None = None) -> str:
    """Plan and enqueue the chunks of a full resync (also `celery -A tasks call`-able)."""
    runtime = get_runtime()
    settings = runtime.settings.collection(collection)
    resyncs = runtime.state_db[RESYNCS]
    if resync_id is None:
        resync_id = f"{collection}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        resyncs.insert_one({"_id": resync_id, "kind": "resync", "collection": collection,
                            "state": "planning", "reason": "celery call",
                            "startedAt": datetime.now(UTC)})
    record = resyncs.find_one({"_id": resync_id}) or {}
    if record.get("state") != "planning":
        return resync_id  # a redelivered coordinator: the chunks are already out
    production = runtime.context(collection).production
    ids = (doc["_id"] for doc in production.find(
        settings.filter or {}, {"_id": 1}, sort=[("_id", 1)], batch_size=10_000
    ))
    chunks = 0
    total = 0
    queues = settings.queues
    for index, (first, last, count) in enumerate(plan_chunks(ids, settings.resync_chunk_size)):
        app.send_task(
            RESYNC_CHUNK, args=[collection, resync_id, index, encode_id(first), encode_id(last)],
            queue=queues[index % len(queues)],
        )
        chunks += 1
        total += count
    resyncs.update_one({"_id": resync_id}, {
        "$set": {"state": "applying", "chunks": chunks, "total": total},
        "$currentDate": {"plannedAt": True},
    })
    log.info("resync planned", extra={"collection": collection, "resync": resync_id,
                                      "chunks": chunks, "documents": total})
    if _chunks_done(runtime.state_db, resync_id) >= chunks:
        _start_sweep(runtime, collection, resync_id, queues[0])  # chunks beat the planner
    return resync_id


@app.task(name=RESYNC_CHUNK, bind=True, acks_late=True, reject_on_worker_lost=True)
def resync_chunk(
    self: Task, collection: str, resync_id: str, index: int, first: str, last: str
) -> None:
    runtime = get_runtime()
    context = runtime.context(collection)
    chunk_id = f"{resync_id}:{index}"
    resyncs = runtime.state_db[RESYNCS]
    if resyncs.find_one({"_id": chunk_id}, {"_id": 1}):
        return  # redelivered after it was recorded
    try:
        version = take_version(runtime.state_db, collection)
        query: dict[str, Any] = {"_id": {"$gte": decode_id(first), "$lte": decode_id(last)}}
        if context.settings.filter:
            query = {"$and": [query, dict(context.settings.filter)]}
        production = {
            encode_id(doc["_id"]): context.masker.mask(doc)
            for doc in context.production.find(query)
        }
        runtime.rate_limiter.acquire(collection, len(production))
        try:
            result = apply_documents(context, version, dict(production),
                                     dict.fromkeys(production, "resync"))
        except WriteErrors as refused:
            # A copy has no retry budget of its own: record what staging refused, go on.
            result = _dead_letter_refused(runtime, collection, refused)
    except Exception as error:
        if is_transient(error):
            raise self.retry(exc=error, countdown=5, max_retries=None) from None
        log.exception("resync chunk failed", extra={"collection": collection, "chunk": index})
        raise
    try:
        resyncs.insert_one({
            "_id": chunk_id, "kind": "chunk", "resync": resync_id, "documents": len(production),
            "counts": {k: result.outcomes.get(k, 0) for k in SUMMARY_OUTCOMES},
            "at": datetime.now(UTC),
        })
    except DuplicateKeyError:
        return
    runtime.report_done(collection, None, "", result, source="resync")
    record = resyncs.find_one({"_id": resync_id}) or {}
    chunks = record.get("chunks")
    if chunks is not None and _chunks_done(runtime.state_db, resync_id) >= chunks:
        _start_sweep(runtime, collection, resync_id, context.settings.queues[0])


@app.task(name=RESYNC_SWEEP, bind=True, acks_late=True, reject_on_worker_lost=True,
          time_limit=LONG_TASK_LIMIT, soft_time_limit=LONG_TASK_LIMIT - 60)
def resync_sweep(self: Task, collection: str, resync_id: str) -> None:
    runtime = get_runtime()
    context = runtime.context(collection)
    outcomes: Counter[str] = Counter()
    try:
        for pids in _live_synced_pids(context.target.collection, SWEEP_BATCH):
            present = {
                encode_id(doc["_id"])
                for doc in context.production.find(
                    _with_filter({"_id": {"$in": [decode_id(p) for p in pids]}},
                                 context.settings.filter),
                    {"_id": 1},
                )
            }
            gone = [pid for pid in pids if pid not in present]
            if gone:
                runtime.rate_limiter.acquire(collection, len(gone))
                result = apply_changes(context, dict.fromkeys(gone, "sweep"))
                outcomes.update(result.outcomes)
    except Exception as error:
        if is_transient(error):
            raise self.retry(exc=error, countdown=5, max_retries=None) from None
        runtime.state_db[RESYNCS].update_one(
            {"_id": resync_id}, {"$set": {"state": "failed", "error": describe_error(error)}}
        )
        raise
    summary = _summary(runtime.state_db, resync_id)
    summary["soft_deleted"] += outcomes.get("soft_deleted", 0)
    summary["dead_lettered"] += outcomes.get("dead_lettered", 0)
    runtime.state_db[RESYNCS].update_one({"_id": resync_id}, {
        "$set": {"state": "done", "summary": summary},
        "$currentDate": {"finishedAt": True},
    })
    reset_after_resync(runtime.state_db, collection, context.masker.fingerprint)
    log.info("resync finished", extra={"collection": collection, "resync": resync_id,
                                       "summary": summary})


def _dead_letter_refused(runtime: Runtime, collection: str, refused: WriteErrors
                         ) -> ApplyResult:
    version = take_version(runtime.state_db, collection)
    runtime.dead_letters.record(
        DeadLetterEntry(collection=collection, pid=pid, op="resync", reason="write_error",
                        error=message, version=version)
        for pid, message in refused.errors.items()
    )
    result = ApplyResult(version)
    result.outcomes["dead_lettered"] = len(refused.errors)
    return result


def _start_sweep(runtime: Runtime, collection: str, resync_id: str, queue: str) -> None:
    """Move to sweeping exactly once, however many chunks finish at the same moment."""
    moved = runtime.state_db[RESYNCS].update_one(
        {"$and": [{"_id": resync_id}, {"state": {"$eq": "applying"}}]},
        {"$set": {"state": "sweeping"}},
    )
    if moved.modified_count == 1:
        app.send_task(RESYNC_SWEEP, args=[collection, resync_id], queue=queue)


def _chunks_done(state_db: Database[dict[str, Any]], resync_id: str) -> int:
    return sum(1 for _ in state_db[RESYNCS].find({"resync": {"$eq": resync_id}}, {"_id": 1}))


def _summary(state_db: Database[dict[str, Any]], resync_id: str) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for chunk in state_db[RESYNCS].find({"resync": {"$eq": resync_id}}, {"counts": 1}):
        totals.update(chunk.get("counts") or {})
    return {k: int(totals.get(k, 0)) for k in SUMMARY_OUTCOMES}


def progress(state_db: Database[dict[str, Any]], resync_id: str) -> dict[str, Any]:
    """Where a resync stands: state, documents done / total, summary so far."""
    record = state_db[RESYNCS].find_one({"_id": resync_id})
    if record is None:
        raise KeyError(f"no resync {resync_id!r}")
    done = 0
    chunks_done = 0
    for chunk in state_db[RESYNCS].find({"resync": {"$eq": resync_id}}, {"documents": 1}):
        done += int(chunk.get("documents", 0))
        chunks_done += 1
    return {
        "id": resync_id, "collection": record.get("collection"), "state": record.get("state"),
        "total": record.get("total"), "done": done, "chunks": record.get("chunks"),
        "chunks_done": chunks_done, "summary": record.get("summary") or _summary(
            state_db, resync_id),
        "startedAt": record.get("startedAt"), "finishedAt": record.get("finishedAt"),
        "error": record.get("error"),
    }


def _live_synced_pids(target: Any, batch: int) -> Iterator[list[str]]:
    query = {PID_FIELD: {"$exists": True}, DELETED_AT_FIELD: {"$exists": False}}
    pids: list[str] = []
    for doc in target.find(query, {SYNC: 1}).sort("_id", 1):
        pids.append(doc[SYNC]["pid"])
        if len(pids) >= batch:
            yield pids
            pids = []
    if pids:
        yield pids


def _with_filter(query: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    return {"$and": [query, dict(extra)]} if extra else query

