"""Scheduled jobs (Celery beat): verification reports and the erasure of old soft deletes.

- `stagesync.verify` compares a collection (see tasks.verification.verifier) and keeps the latest
  report in the state database (`state.verifications`), where `status` shows it.
- `stagesync.expire_environments` deletes the environments past their lifetime (`--ttl`),
  with their databases and records (`tasks.environment_ops.delete_environment`), and finishes
  deletes that a killed process left halfway. Beat runs it every EXPIRY_EVERY_SECONDS, so an
  environment goes within about a minute of its expiry.
- `stagesync.purge_deleted` hard-deletes staging documents soft-deleted longer ago than the
  collection's `purge_deleted_after`, for erasure requests. Only documents that came from
  production (they record a production `_id`) are ever purged; QA fixtures never are.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery import Task
from stagesync.protocol.names import EXPIRE_ENVIRONMENTS, PURGE_DELETED, VERIFY
from stagesync.rules.sync_meta import DELETED_AT_FIELD, PID_FIELD
from stagesync.state.environments import NoSuchEnvironment
from stagesync.state.verifications import record_verification
from stagesync.tasks.environment_ops import delete_environment
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


@stagesync_task(EXPIRE_ENVIRONMENTS)
def expire_environments(self: Task) -> list[str]:
    """Delete every environment past its lifetime; the names deleted."""
    runtime = get_runtime()
    deleted = []
    for environment in runtime.environment_store.expired():
        try:
            delete_environment(runtime.settings, runtime.state_db, runtime.environment_store,
                               runtime.environment_client(), environment.name, runtime.redis)
        except NoSuchEnvironment:
            continue  # deleted meanwhile by `env delete`
        deleted.append(environment.name)
        log.info("environment expired", extra={"environment": environment.name,
                                               "expired_at": str(environment.expires_at)})
    return deleted
