"""Scheduled jobs (Celery beat): verification reports and the erasure of old soft deletes.

- `stagesync.verify` compares a collection (see tasks.verification.verifier) and keeps the latest
  report in the state database (`state.verifications`), where `status` shows it.
- `stagesync.purge_deleted` hard-deletes staging documents soft-deleted longer ago than the
  collection's `purge_deleted_after`, for erasure requests. Only documents that came from
  production (they record a production `_id`) are ever purged; QA fixtures never are.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery import Task
from stagesync.protocol.names import PURGE_DELETED, VERIFY
from stagesync.rules.sync_meta import DELETED_AT_FIELD, PID_FIELD
from stagesync.state.verifications import record_verification
from stagesync.tasks.instrumented import stagesync_task
from stagesync.tasks.runtime import get_runtime
from stagesync.tasks.verification.verifier import verify_collection

log = logging.getLogger("stagesync.maintenance")


@stagesync_task(VERIFY)
def verify(self: Task, collection: str) -> dict[str, Any]:
    runtime = get_runtime()
    report = verify_collection(runtime.settings, collection, sample=0, settle=30)
    summary = report.as_dict()
    record_verification(runtime.state_db, collection, report.equal, summary["counts"],
                        report.mismatched())
    log.info("verified", extra={"collection": collection, "equal": report.equal,
                                "mismatched": len(report.mismatched())})
    return {"equal": report.equal, "mismatched": len(report.mismatched())}


@stagesync_task(PURGE_DELETED)
def purge_deleted(self: Task, collection: str) -> int:
    runtime = get_runtime()
    settings = runtime.settings.collection(collection)
    after = settings.purge_after()
    if after is None:
        return 0
    cutoff = datetime.now(UTC) - after
    target = runtime.staging[settings.target_db][settings.target_collection]
    removed = target.delete_many(
        {PID_FIELD: {"$exists": True}, DELETED_AT_FIELD: {"$lt": cutoff}}
    ).deleted_count
    log.info("purged soft-deleted documents",
             extra={"collection": collection, "removed": removed, "older_than": str(after)})
    return int(removed)
