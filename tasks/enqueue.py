"""Enqueueing tasks by name: the one module the watcher and the CLI use to give workers work.

It imports no module that defines a task, nor Celery's app: the caller passes its app (the
watcher's is configured for the broker only). Arguments are small primitives: encoded
production `_id`s and the operation seen, never a document, so no PII reaches Redis. Celery
publishes a declared direct queue through the anonymous exchange (routing key = queue name),
so a publish right after a Redis FLUSHALL, which also deletes kombu's binding tables, still
lands in the list the workers read.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from pymongo.database import Database
from stagesync.protocol.names import APPLY_BATCH, REPLAY_DEAD_LETTERS, RESYNC, RESYNCS
from stagesync.protocol.parts import BatchPart
from stagesync.state.resync_progress import ensure_resync_indexes, new_resync

QueuedChange = tuple[str, str]  # (encoded production _id, operation seen)


def publish_apply(
    app: Celery, queue: str, collection: str, batch: str | None, part: BatchPart,
    changes: Sequence[QueuedChange],
) -> None:
    """`batch` identifies the watcher's batch for its done reports, None for work the watcher
    does not track (replays, references); `part` is the part of it the message carries."""
    app.send_task(
        APPLY_BATCH,
        args=[collection, batch, part.wire, [list(change) for change in changes]],
        queue=queue,
        # What Flower and the worker's logs show for the arguments. Celery's default, a
        # `saferepr` of up to 1 KiB of the change list, was 40 % of a publish's CPU and says
        # less than a count.
        argsrepr=f"[{collection!r}, {batch!r}, {part.wire!r}, <{len(changes)} changes>]",
    )


def start_resync(
    app: Celery, state_db: Database[dict[str, Any]], collection: str, queue: str, reason: str
) -> str:
    """Record a new resync and enqueue its coordinator; returns the resync id."""
    ensure_resync_indexes(state_db)
    resync_id = new_resync(state_db, collection, reason)
    app.send_task(RESYNC, args=[collection, resync_id], queue=queue)
    return resync_id


def start_replay(
    app: Celery, state_db: Database[dict[str, Any]], collection: str, queue: str,
    pids: list[str] | None = None, reason: str | None = None,
) -> str:
    """Record a dead-letter replay job and enqueue it; returns the job id."""
    job_id = f"replay-{collection}-{uuid.uuid4().hex[:8]}"
    state_db[RESYNCS].insert_one({
        "_id": job_id, "kind": "replay", "collection": collection, "state": "queued",
        "startedAt": datetime.now(UTC), "reason": reason,
    })
    app.send_task(REPLAY_DEAD_LETTERS, args=[collection, job_id, pids, reason], queue=queue)
    return job_id
