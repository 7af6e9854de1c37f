"""Enqueueing tasks by name: the one module the watcher and the CLI use to give workers work.

It imports no module that defines a task, nor the workers' Celery app: publishers make their own
with `broker_app`, which knows the broker, the queues and the serializer and registers no task.
Arguments are small primitives: encoded production `_id`s and the operation seen, never a
document, so no PII reaches Redis. Celery publishes a declared direct queue through the
anonymous exchange (routing key = queue name), so a publish right after a Redis FLUSHALL, which
also deletes kombu's binding tables, still lands in the list the workers read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery
from pymongo.database import Database
from stagesync.protocol.names import APPLY_BATCH, REPLAY_DEAD_LETTERS, RESYNC
from stagesync.protocol.parts import BatchPart
from stagesync.settings.model import Settings
from stagesync.state.replay_jobs import new_replay_job
from stagesync.state.resync_progress import ensure_resync_indexes, new_resync
from stagesync.tasks.celery_options import celery_options

QueuedChange = tuple[str, str]  # (encoded production _id, operation seen)


def broker_app(settings: Settings) -> Celery:
    """The Celery app of a process that only publishes (the watcher, the CLI).

    It takes the workers' options (broker, transport, declared queues, serializer), so what it
    sends is what the workers expect, but registers no task and imports no task module: tasks
    are sent by name. Not the current app, so it never stands in for the workers' one."""
    app = Celery("stagesync", set_as_current=False)
    app.conf.update(celery_options(settings))
    return app


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
    """Record a dead-letter replay job (`state.replay_jobs`) and enqueue it; returns the job
    id."""
    job_id = new_replay_job(state_db, collection, reason)
    app.send_task(REPLAY_DEAD_LETTERS, args=[collection, job_id, pids, reason], queue=queue)
    return job_id
