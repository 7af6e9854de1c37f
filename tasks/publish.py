"""Enqueueing apply tasks: small primitive arguments, straight to the queue by name.

Messages carry encoded production `_id`s and the operation seen, never a document. Celery
publishes a declared direct queue through the anonymous exchange (routing key = queue name),
so a publish right after a Redis FLUSHALL, which also deletes kombu's binding tables, still
lands in the list the workers read.
"""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery

from tasks.constants import APPLY_BATCH

Change = tuple[str, str]  # (encoded production _id, operation)


def publish_apply(
    app: Celery, queue: str, collection: str, batch: str | None, part: str,
    changes: Sequence[Change],
) -> None:
    """`batch` identifies the watcher's batch for its done reports; None for replays."""
    app.send_task(
        APPLY_BATCH,
        args=[collection, batch, part, [list(change) for change in changes]],
        queue=queue,
    )
