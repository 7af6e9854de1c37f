"""A resync's bookkeeping in the `resyncs` collection: one record per resync, one per chunk.

Why it stays cheap whatever the collection size or the number of past resyncs:
- every query names a record by `_id`, or a resync's chunks by the indexed
  `(resync, phase, state)` (`stagesync_resync_chunks`), and the only counts ask for the chunks
  still in flight, of which there are at most a handful;
- progress is a set of counters on the resync record (`$inc` per applied batch), so reading
  it costs one document;
- finished resyncs and their chunk records expire (`expireAt`, TTL index `stagesync_resyncs_ttl`).

Which numbers are exact: a chunk record counts what its own batches did, under a
compare-and-swap on its checkpoint, so the summary written when a resync ends (summed over its
chunk records) is exact. The live counters on the resync record are added after each batch
and can miss one batch when a worker dies between the two writes.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError
from stagesync.protocol.names import RESYNC_CHUNKS_INDEX, RESYNCS, RESYNCS_TTL_INDEX
from stagesync.rules.document import Document
from stagesync.rules.id_ranges import IdRange
from stagesync.rules.identity import FIRST_OBJECT_ID, LAST_OBJECT_ID

SUMMARY_OUTCOMES = ("created", "updated", "unchanged", "soft_deleted", "dead_lettered",
                    "superseded")
PHASES = ("copy", "sweep")
PHASE_STATE = {"copy": "applying", "sweep": "sweeping"}
IN_FLIGHT = ("queued", "running")
# A finished resync stays readable (`stagesync resync --wait`, `status`) this long.
RECORD_TTL = timedelta(days=30)
# A chunk record outlives any realistic resync; refreshed at every checkpoint.
CHUNK_TTL = timedelta(days=14)
MIN_BATCH = 10  # the smallest `resync_chunk_size` accepted
# Field names of the records (the resync's and its chunks'): every room reads them by these.
KIND = "kind"  # "resync" for a resync record, "chunk" for a chunk record
COLLECTION_FIELD = "collection"
STATE = "state"  # a resync: planning, applying, sweeping, done, failed; a chunk: IN_FLIGHT, done
REASON = "reason"
STARTED_AT = "startedAt"
FINISHED_AT = "finishedAt"
DOCS = "docs"  # production documents done so far (a chunk: by its batches)
TOTAL = "total"  # the production estimate, then the documents the copy read
CHUNKS_DONE = "chunksDone"
COUNTS = "counts"  # outcome -> documents, live
SUMMARY = "summary"  # outcome -> documents, exact, once done
ERROR = "error"
EXPIRE_AT = "expireAt"  # TTL (`stagesync_resyncs_ttl`)
# Fixed when the copy opens (`tasks.resync`):
V0 = "v0"  # the version taken before the copy: the sweep's criterion
EMPTY_START = "emptyStart"  # staging held nothing: batches insert without reading
UNSYNCED_START = "unsyncedStart"  # staging held documents without `_sync`
INFLIGHT = "inflight"  # most chunks in flight at once
BATCH = "batch"  # documents per apply (a chunk may hold a smaller one of its own)
# The copy reads only the followers of the parent's copies (`tasks.full_resync.by_parents`);
# its chunks' `resume` is then the last parent pid done, not an `_id`.
BY_PARENTS = "byParents"
# The copy's chunks of ObjectIds sweep their own spans of staging (`tasks.full_resync.chunks`):
# set where the resync starts with copies to sweep, by planners that know how.
FOLDS_SWEEP = "foldsSweep"
# The target was empty: the copy loads it with the `DEFERRED` indexes dropped and builds them
# once the copy is done (`tasks.full_resync.indexes_after`).
INDEXES_AFTER = "indexesAfter"
# Whether production held an embedded document at the followed path, asked while the parent's
# copy still ran (`tasks.resync`: a follower's set-up waits for it, its probe need not).
FOLLOW_EMBEDDED = "followEmbedded"
# A phase's plan, under the phase's name (`copy`, `sweep`; see `phase_plan`):
PLANNED = "planned"
NEXT = "next"
SPAN = "span"
COMPLETE = "complete"
# A chunk record:
RESYNC = "resync"  # the resync's id
PHASE = "phase"
INDEX = "index"
LO = "lo"
HI = "hi"
OWNER = "owner"  # the task holding it
RESUME = "resume"  # the last `_id` (or parent pid, BY_PARENTS) done, encoded: where to go on
UNSWEPT = "unswept"  # a copy chunk of FOLDS_SWEEP left part of its span to the sweep phase
BEAT_AT = "beatAt"
FINISHED = ("done", "failed")



class RecordMissing(RuntimeError):
    """A bookkeeping write did not take; the task retries (see deployments.failures)."""


def resyncs(state_db: Database[Document]) -> Collection[Document]:
    return state_db[RESYNCS]


def ensure_resync_indexes(state_db: Database[Document]) -> None:
    """Idempotent; both names are stagesync's own (nobody else creates them)."""
    resyncs(state_db).create_indexes([
        IndexModel([(RESYNC, ASCENDING), (PHASE, ASCENDING), (STATE, ASCENDING)],
                   name=RESYNC_CHUNKS_INDEX),
        IndexModel([(EXPIRE_AT, ASCENDING)], name=RESYNCS_TTL_INDEX,
                   expireAfterSeconds=0),
    ])


def now() -> datetime:
    return datetime.now(UTC)


def new_resync(state_db: Database[Document], collection: str, reason: str) -> str:
    resync_id = f"{collection}-{now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    resyncs(state_db).insert_one({
        "_id": resync_id, KIND: "resync", COLLECTION_FIELD: collection, STATE: "planning",
        REASON: reason, STARTED_AT: now(), DOCS: 0, CHUNKS_DONE: 0,
        COUNTS: dict.fromkeys(SUMMARY_OUTCOMES, 0),
    })
    return resync_id


def started_since(state_db: Database[Document], collection: str, moment: datetime) -> bool:
    """Whether a resync of `collection` began after `moment` (its history was lost since, or
    someone asked for one)."""
    return resyncs(state_db).find_one(
        {KIND: "resync", COLLECTION_FIELD: collection, STARTED_AT: {"$gt": moment}},
        {"_id": 1}) is not None


def resync_ids_of(collection: str) -> str:
    """A regular expression matching exactly the `_id`s `new_resync` gives the collection's
    resync records (not their chunk records), anchored, so that a query by it walks only the
    collection's part of the `_id` index."""
    return f"^{re.escape(collection)}-[0-9]{{8}}T[0-9]{{6}}-[0-9a-f]{{6}}$"


def resync_records(state_db: Database[Document], collection: str) -> list[Document]:
    """The collection's resync records (not their chunks), with the fields `STATE`,
    `STARTED_AT`, `DOCS` and `TOTAL`. The `_id`s start with the collection's name, so the
    `_id` index bounds the scan (chunk records share the prefix but fail the anchored pattern
    on the index key)."""
    return list(resyncs(state_db).find(
        {"_id": {"$regex": resync_ids_of(collection)}, KIND: "resync",
         COLLECTION_FIELD: collection},
        {STATE: 1, STARTED_AT: 1, DOCS: 1, TOTAL: 1}))


def loading(state_db: Database[Document], collections: Iterable[str]) -> set[str]:
    """The collections whose resync is loading them with their deferred indexes dropped
    (`INDEXES_AFTER`, still copying): a worker starting now leaves those indexes to it."""
    return {name for name in collections if resyncs(state_db).find_one(
        {"_id": {"$regex": resync_ids_of(name)}, KIND: "resync", COLLECTION_FIELD: name,
         STATE: "applying", INDEXES_AFTER: True}, {"_id": 1}) is not None}


def load(state_db: Database[Document], resync_id: str) -> Document | None:
    return resyncs(state_db).find_one({"_id": resync_id})


def load_chunk(state_db: Database[Document], key: str) -> Document | None:
    """A chunk record by its `chunk_id`."""
    return resyncs(state_db).find_one({"_id": key})


def phase_plan(span: int, first: list[Any], encode: Any) -> Document:
    """Where a phase's planning starts: its chunk size and the first chunk's lower bound."""
    return {SPAN: span, PLANNED: 0, NEXT: encode(first[0]) if first else None,
            COMPLETE: not first}


def begin_phase(
    state_db: Database[Document], resync_id: str, from_state: str, phase: str,
    plan: Document, extra: Mapping[str, Any] | None = None,
) -> bool:
    """Move the resync into a phase, exactly once however many tasks try."""
    moved = resyncs(state_db).update_one(
        {"_id": resync_id, STATE: from_state},
        {"$set": {STATE: PHASE_STATE[phase], phase: plan, **(extra or {})},
         "$currentDate": {f"{phase}StartedAt": True}},
    )
    return moved.modified_count == 1


def note_follow_embedded(state_db: Database[Document], resync_id: str, embedded: bool
                         ) -> None:
    resyncs(state_db).update_one({"_id": resync_id, STATE: "planning"},
                                 {"$set": {FOLLOW_EMBEDDED: embedded}})


def chunk_id(resync_id: str, phase: str, index: int) -> str:
    return f"{resync_id}:{phase}:{index}"


def record_chunk(
    state_db: Database[Document], resync_id: str, phase: str, index: int, chunk: IdRange,
) -> Document:
    """The chunk's record, created queued; an existing one (a planner that died after
    recording it) keeps its bounds, which the caller must then use."""
    key = chunk_id(resync_id, phase, index)
    try:
        document = resyncs(state_db).find_one_and_update(
            {"_id": key},
            {"$setOnInsert": {KIND: "chunk", RESYNC: resync_id, PHASE: phase,
                              INDEX: index, LO: chunk.lo, HI: chunk.hi,
                              STATE: "queued", BEAT_AT: now(), DOCS: 0,
                              EXPIRE_AT: now() + CHUNK_TTL}},
            upsert=True, return_document=ReturnDocument.AFTER,
        )
    except DuplicateKeyError:  # two planners upserted at once: the other one's stands
        document = None
    if document is None:
        document = resyncs(state_db).find_one({"_id": key})
    if document is None:
        raise RecordMissing(f"chunk record {key} neither created nor found")
    return document


def advance_plan(
    state_db: Database[Document], resync_id: str, phase: str, index: int, next_lo: str | None,
) -> bool:
    """Count chunk `index` as planned; False when another planner got there first."""
    moved = resyncs(state_db).update_one(
        {"_id": resync_id, f"{phase}.{PLANNED}": index},
        {"$set": {f"{phase}.{PLANNED}": index + 1, f"{phase}.{NEXT}": next_lo,
                  f"{phase}.{COMPLETE}": next_lo is None}},
    )
    return moved.modified_count == 1


def leave_to_sweep(state_db: Database[Document], chunk_key: str) -> None:
    """A copy chunk left part of its span of staging to the sweep phase
    (`tasks.full_resync.chunks`)."""
    resyncs(state_db).update_one({"_id": chunk_key}, {"$set": {UNSWEPT: True}})


def copy_swept_all(state_db: Database[Document], resync_id: str) -> bool:
    """Whether the resync's copy had chunks, every one a range of ObjectIds (bounds are
    kept encoded: `IdRange`) that swept its whole span."""
    query = {RESYNC: resync_id, PHASE: "copy"}
    unswept = {"$or": [{LO: {"$lt": FIRST_OBJECT_ID}}, {LO: {"$gt": LAST_OBJECT_ID}},
                       {UNSWEPT: True}]}
    chunks = resyncs(state_db)
    return chunks.find_one(query, {"_id": 1}) is not None and \
        chunks.find_one({**query, **unswept}, {"_id": 1}) is None


def in_flight(state_db: Database[Document], resync_id: str, phase: str) -> int:
    """Chunks of the phase queued or running: at most the in-flight bound, so this stays
    a short index range whatever the collection's size."""
    return resyncs(state_db).count_documents(
        {RESYNC: resync_id, PHASE: phase, STATE: {"$in": list(IN_FLIGHT)}}
    )


def stale_chunks(
    state_db: Database[Document], resync_id: str, phase: str, older_than: timedelta,
) -> list[Document]:
    """In-flight chunks nobody has reported on lately (their message lost with a Redis)."""
    limit = now() - older_than
    return [chunk for chunk in resyncs(state_db).find(
        {RESYNC: resync_id, PHASE: phase, STATE: {"$in": list(IN_FLIGHT)}},
        {INDEX: 1, BEAT_AT: 1},
    ) if chunk.get(BEAT_AT) is None or _aware(chunk[BEAT_AT]) < limit]


def held_chunk(state_db: Database[Document], resync_id: str, owner: str) -> Document | None:
    """The chunk this task was working on (when its message comes back after a kill)."""
    for phase in PHASES:
        held = resyncs(state_db).find_one(
            {RESYNC: resync_id, PHASE: phase, STATE: "running", OWNER: owner})
        if held is not None:
            return held
    return None


def next_queued_chunk(state_db: Database[Document], resync_id: str, phase: str
                      ) -> Document | None:
    """The oldest chunk of the phase that nobody has started."""
    return resyncs(state_db).find_one(
        {RESYNC: resync_id, PHASE: phase, STATE: "queued"}, sort=[(INDEX, 1)])


def claim_chunk(
    state_db: Database[Document], chunk: Document, owner: str, stale_after: timedelta,
) -> bool:
    """Take the chunk for this task: a redelivery of the same task (same id) takes it back;
    a duplicate message gives way unless the holder has gone quiet for `stale_after`."""
    holder = chunk.get(OWNER)
    beat = chunk.get(BEAT_AT)
    quiet = beat is None or _aware(beat) < now() - stale_after
    if holder not in (None, owner) and not quiet:
        return False
    taken = resyncs(state_db).update_one(
        {"_id": chunk["_id"], STATE: chunk[STATE], OWNER: holder},
        {"$set": {STATE: "running", OWNER: owner, BEAT_AT: now()}},
    )
    return taken.modified_count == 1


def checkpoint(
    state_db: Database[Document], chunk: Document, owner: str, resume: str | None,
    docs: int, counts: Mapping[str, int],
) -> bool:
    """Record a batch as done (where to resume, what it did); False when this task no
    longer holds the chunk or the batch was already recorded."""
    incs: dict[str, int] = {DOCS: docs}
    incs.update({f"{COUNTS}.{k}": int(v) for k, v in counts.items() if v})
    moved = resyncs(state_db).update_one(
        {"_id": chunk["_id"], OWNER: owner, RESUME: chunk.get(RESUME)},
        {"$set": {RESUME: resume, BEAT_AT: now(), EXPIRE_AT: now() + CHUNK_TTL},
         "$inc": incs},
    )
    if moved.modified_count == 1:
        chunk[RESUME] = resume
        return True
    return False


def add_progress(
    state_db: Database[Document], resync_id: str, docs: int, counts: Mapping[str, int],
    chunks_done: int = 0,
) -> None:
    """The live counters `progress` shows (one `$inc` on the resync record)."""
    incs: dict[str, int] = {f"{COUNTS}.{k}": int(v) for k, v in counts.items()
                            if v and k in SUMMARY_OUTCOMES}
    if docs:
        incs[DOCS] = docs
    if chunks_done:
        incs[CHUNKS_DONE] = chunks_done
    if incs:
        resyncs(state_db).update_one({"_id": resync_id}, {"$inc": incs})


def shrink_batch(state_db: Database[Document], chunk_key: str) -> int:
    """Halve a chunk's batch after one took too long for the task's time limit, so that a
    chunk always makes progress, however slow its applies are."""
    chunk = resyncs(state_db).find_one({"_id": chunk_key}, {BATCH: 1, RESYNC: 1}) or {}
    batch = chunk.get(BATCH)
    if batch is None:
        batch = (load(state_db, str(chunk.get(RESYNC))) or {}).get(BATCH) or MIN_BATCH * 2
    smaller = max(MIN_BATCH, int(batch) // 2)
    resyncs(state_db).update_one({"_id": chunk_key}, {"$set": {BATCH: smaller}})
    return smaller


def finish_chunk(state_db: Database[Document], chunk: Document, owner: str) -> bool:
    finished = resyncs(state_db).update_one(
        {"_id": chunk["_id"], OWNER: owner, STATE: "running"},
        {"$set": {STATE: "done", FINISHED_AT: now(), EXPIRE_AT: now() + CHUNK_TTL},
         "$unset": {OWNER: ""}},
    )
    return finished.modified_count == 1


def summary(state_db: Database[Document], resync_id: str) -> tuple[dict[str, int], int]:
    """Exact outcome counts over every chunk of the resync, and production documents read."""
    totals: Counter[str] = Counter()
    copied = 0
    for chunk in resyncs(state_db).find({RESYNC: resync_id}, {COUNTS: 1, DOCS: 1,
                                                                 PHASE: 1}):
        totals.update(chunk.get(COUNTS) or {})
        if chunk.get(PHASE) == "copy":
            copied += int(chunk.get(DOCS) or 0)
    return {k: int(totals.get(k, 0)) for k in SUMMARY_OUTCOMES}, copied


def finish(state_db: Database[Document], resync_id: str, result: Mapping[str, int],
           total: int) -> bool:
    done = resyncs(state_db).update_one(
        {"_id": resync_id, STATE: "sweeping"},
        {"$set": {STATE: "done", SUMMARY: dict(result), TOTAL: total,
                  EXPIRE_AT: now() + RECORD_TTL},
         "$currentDate": {FINISHED_AT: True}},
    )
    return done.modified_count == 1


def fail(state_db: Database[Document], resync_id: str, error: str) -> None:
    resyncs(state_db).update_one(
        {"_id": resync_id, STATE: {"$in": ["planning", "applying", "sweeping"]}},
        {"$set": {STATE: "failed", ERROR: error, EXPIRE_AT: now() + RECORD_TTL},
         "$currentDate": {FINISHED_AT: True}},
    )


def progress(state_db: Database[Document], resync_id: str) -> dict[str, Any]:
    """Where a resync stands, from its one record: state, documents done / total, summary."""
    record = load(state_db, resync_id)
    if record is None:
        raise KeyError(f"no resync {resync_id!r}")
    planned = sum(int((record.get(phase) or {}).get(PLANNED) or 0) for phase in PHASES)
    counts = record.get(COUNTS) or {}
    return {
        "id": resync_id, "collection": record.get(COLLECTION_FIELD), "state": record.get(STATE),
        "total": record.get(TOTAL), "done": int(record.get(DOCS) or 0),
        "chunks": planned, "chunks_done": int(record.get(CHUNKS_DONE) or 0),
        "summary": record.get(SUMMARY) or {k: int(counts.get(k, 0))
                                             for k in SUMMARY_OUTCOMES},
        "startedAt": record.get(STARTED_AT), "finishedAt": record.get(FINISHED_AT),
        "error": record.get(ERROR),
    }


def _aware(moment: datetime) -> datetime:
    """Dates come back naive (UTC) unless the client asked for aware ones."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
