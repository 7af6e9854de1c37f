"""Dead-letter replay: apply dead-lettered changes again through the normal apply path.

An entry goes only when its change is done this time (written, superseded or a no-op): the
apply clears the entries it makes obsolete and records the ones that fail again, with their
attempts counted. Replays take versions like any apply, so a replay can never bring back an
older state than the stream has written since.
"""

from __future__ import annotations

import logging
from collections import Counter

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from stagesync.deployments.failures import is_transient
from stagesync.protocol.names import REPLAY_DEAD_LETTERS
from stagesync.protocol.parts import WHOLE
from stagesync.state.dead_letters import OP, PID, DeadLetterEntry
from stagesync.state.environments import FROZEN
from stagesync.state.replay_jobs import finish_replay_job
from stagesync.state.versions import take_version
from stagesync.tasks.apply.applier import apply_changes
from stagesync.tasks.apply.context import WriteErrors
from stagesync.tasks.instrumented import stagesync_task
from stagesync.tasks.runtime import get_runtime

log = logging.getLogger("stagesync.replay")

REPLAY_BATCH = 200


@stagesync_task(REPLAY_DEAD_LETTERS)
def replay_dead_letters(
    self: Task, collection: str, job_id: str | None = None, pids: list[str] | None = None,
    reason: str | None = None,
) -> dict[str, int]:
    runtime = get_runtime()
    wanted = set(pids) if pids else None
    counts: Counter[str] = Counter()
    try:
        context = runtime.context(collection)
        if context.environment is not None and runtime.environment_store.require(
                context.environment).state == FROZEN:
            # A frozen environment holds still: its entries wait for its thaw (the watcher
            # replays waiting environment failures again later).
            log.info("replay skipped: the environment is frozen",
                     extra={"collection": collection})
            skipped = {"entries": 0, "resolved": 0, "still_failing": 0}
            if job_id:
                finish_replay_job(runtime.state_db, job_id, skipped)
            return skipped
        entries = [
            entry for entry in runtime.dead_letters.list(collection, reason)
            if wanted is None or entry[PID] in wanted
        ]
        for start in range(0, len(entries), REPLAY_BATCH):
            chunk = entries[start:start + REPLAY_BATCH]
            ops = {entry[PID]: str(entry.get(OP) or "replay") for entry in chunk}
            runtime.rate_limiter.acquire(context.name, len(ops))
            try:
                result = apply_changes(context, ops)
            except WriteErrors as refused:
                # Still refused: the entries stay, with the new error and one more attempt.
                # The collection's counter (`context.name`), also for an environment's
                # entries (`orders@pr-1`): one counter orders every target's writes.
                version = take_version(runtime.state_db, context.name)
                runtime.dead_letters.record(
                    DeadLetterEntry(collection=collection, pid=pid, op=ops[pid],
                                    reason="write_error", error=message, version=version)
                    for pid, message in refused.errors.items()
                )
                counts["dead_lettered"] += len(refused.errors)
                continue
            counts.update(result.outcomes)
            runtime.report_done(collection, None, WHOLE, result, source="replay")
    except Exception as error:
        # Out of time is passing too: what this turn resolved is gone from the next one.
        if is_transient(error) or isinstance(error, SoftTimeLimitExceeded):
            raise self.retry(exc=error, countdown=5, max_retries=None) from None
        raise
    summary = {
        "entries": len(entries),
        "resolved": len(entries) - counts.get("dead_lettered", 0),
        "still_failing": counts.get("dead_lettered", 0),
    }
    if job_id:
        finish_replay_job(runtime.state_db, job_id, summary)
    log.info("dead letters replayed", extra={"collection": collection, **summary})
    return summary
