"""The stream's task: apply one batch of changes of one collection (one queue partition).

One message is one ack-and-retry unit. A message is acknowledged only after its changes are
done: written, superseded, a no-op or dead-lettered. Failure handling, in order:
- the infrastructure failed (server down, step-down, network): retry with exponential backoff
  and jitter, capped below the visibility timeout so Redis does not redeliver a waiting task;
- the batch failed for another reason: split it in two and enqueue both halves, until the bad
  change stands alone; a lone change is retried `max_retries` times, then dead-lettered;
- the message keeps killing its worker (started more than `max_deliveries` times without
  finishing): split or dead-letter it the same way instead of looping.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from celery import Task
from stagesync.deployments.failures import describe_error, is_transient
from stagesync.protocol.names import APPLY_BATCH
from stagesync.protocol.parts import BatchPart
from stagesync.protocol.routing import home_queue
from stagesync.state.dead_letters import DeadLetterEntry
from stagesync.state.versions import take_version
from stagesync.tasks import metrics
from stagesync.tasks.apply.context import ApplyContext, WriteErrors
from stagesync.tasks.apply.targets import EnvironmentsUnrecorded, TargetBatch
from stagesync.tasks.celery_app import app
from stagesync.tasks.enqueue import QueuedChange, publish_apply, start_replay
from stagesync.tasks.instrumented import stagesync_task
from stagesync.tasks.runtime import Runtime, get_runtime

log = logging.getLogger("stagesync.apply")


@stagesync_task(APPLY_BATCH)
def apply_batch(
    self: Task, collection: str, batch: str | None, part_path: str, changes: list[list[str]]
) -> None:
    """`part_path` is the wire spelling of the part of the batch this message carries."""
    runtime = get_runtime()
    part = BatchPart.from_wire(part_path)
    settings = runtime.settings.worker
    pairs: list[QueuedChange] = [(pid, op) for pid, op in changes]
    started = runtime.count_delivery(self.request.id, self.request.retries)
    if started > settings.max_deliveries:
        log.error(
            "message keeps failing its worker",
            extra={"collection": collection, "changes": len(pairs), "deliveries": started},
        )
        _isolate(runtime, self, _Part(collection, batch, part, pairs), "poison",
                 f"worker lost {started - 1} times while applying")
        return
    ops = dict(pairs)
    began = time.monotonic()
    fanout: TargetBatch | None = None
    try:
        waited = runtime.rate_limiter.acquire(collection, len(ops))
        # The main staging, then every environment, from one production read
        # (tasks.apply.targets); the environments are applied once the batch is reported.
        main, *environments = runtime.targets(collection)
        assert isinstance(main, ApplyContext)  # the main staging's is never a BrokenTarget
        home = home_queue(runtime.settings.collection(collection))
        fanout = TargetBatch(
            main, environments, ops, refresh=lambda: runtime.environment_targets(collection),
            replay=lambda scope, pids: start_replay(app, runtime.state_db, scope, home, pids,
                                                    "environment_error"))
        result = fanout.apply_main()
    except Exception as error:
        if fanout is not None and isinstance(error, WriteErrors):
            _fan_out(self, collection, fanout)  # the rest of the batch is done in the main
        if is_transient(error):
            metrics.FAILURES.labels(collection, "transient").inc()
            countdown = _backoff(self.request.retries, settings.retry_backoff_max_seconds)
            log.warning(
                "transient failure, retrying",
                extra={"collection": collection, "error": describe_error(error),
                       "retry_in": round(countdown, 2), "attempt": self.request.retries + 1},
            )
            raise self.retry(exc=error, countdown=countdown, max_retries=None) from None
        if len(pairs) == 1 and self.request.retries < settings.max_retries:
            raise self.retry(
                exc=error, countdown=_backoff(self.request.retries, 5.0), max_retries=None
            ) from None
        if isinstance(error, WriteErrors) and 0 < len(error.errors) < len(pairs):
            # The rest of the batch is done: report it as one half, and publish only the
            # refused changes, as the other half, to be retried.
            refused = [pair for pair in pairs if pair[0] in error.errors]
            refused_half, done_half = part.halves
            runtime.report_done(collection, batch, done_half, None, {})
            publish_apply(app, _queue(runtime, self, collection), collection, batch,
                          refused_half, refused)
            metrics.FAILURES.labels(collection, "split").inc()
            return
        log.warning("apply failed", exc_info=not isinstance(error, WriteErrors),
                    extra={"collection": collection, "changes": len(pairs),
                           "error": describe_error(error)})
        reason = "write_error" if isinstance(error, WriteErrors) else "apply_error"
        _isolate(runtime, self, _Part(collection, batch, part, pairs), reason,
                 describe_error(error))
        return
    runtime.report_done(collection, batch, part, result)
    _fan_out(self, collection, fanout)
    metrics.observe_apply(collection, len(ops), time.monotonic() - began, waited,
                          result.outcomes)
    log.info(
        "applied",
        extra={
            "collection": collection, "changes": len(ops), "version": result.version,
            "rounds": result.rounds, "writes": result.staging_writes,
            "outcomes": dict(result.outcomes), "rate_wait_s": round(waited, 3),
            "seconds": round(time.monotonic() - began, 4),
        },
    )


def _fan_out(task: Task, collection: str, fanout: TargetBatch) -> None:
    """The environments' applies, and their metrics (labelled by environment). Where an
    environment's failed changes could not be recorded, the whole message is retried (the
    main staging's part again is superseded or a no-op)."""
    began = time.monotonic()
    try:
        results = fanout.apply_environments()
    except EnvironmentsUnrecorded as error:
        log.warning("environment changes not recorded, retrying",
                    extra={"collection": collection, "error": str(error)})
        raise task.retry(exc=error, countdown=_backoff(task.request.retries, 5.0),
                         max_retries=None) from None
    metrics.observe_environments(collection, results, time.monotonic() - began)


@dataclass(frozen=True)
class _Part:
    """The part of a watcher batch that one message carries."""

    collection: str
    batch: str | None
    part: BatchPart
    pairs: Sequence[QueuedChange]


def _isolate(runtime: Runtime, task: Task, message: _Part, reason: str, error: str) -> None:
    """Split a failing batch in two, or dead-letter a lone failing change."""
    collection, batch, part, pairs = message.collection, message.batch, message.part, \
        message.pairs
    queue = _queue(runtime, task, collection)
    metrics.FAILURES.labels(collection, reason).inc()
    if len(pairs) > 1:
        middle = len(pairs) // 2
        first, second = part.halves
        publish_apply(app, queue, collection, batch, first, pairs[:middle])
        publish_apply(app, queue, collection, batch, second, pairs[middle:])
        return
    pid, op = pairs[0]
    # A version of its own: any apply that reads production after this verdict outranks it.
    version = take_version(runtime.state_db, collection)
    runtime.dead_letters.record([DeadLetterEntry(
        collection=collection, pid=pid, op=op, reason=reason, error=error, version=version,
    )])
    runtime.report_done(collection, batch, part, None, {"dead_lettered": 1})


def _queue(runtime: Runtime, task: Task, collection: str) -> str:
    """The queue this message came from (its partition), where its pieces go back."""
    routing_key = (task.request.delivery_info or {}).get("routing_key")
    return str(routing_key or home_queue(runtime.settings.collection(collection)))


def _backoff(attempt: int, cap: float) -> float:
    """Exponential backoff with full jitter: 0.5 s, 1 s, 2 s ... up to `cap`."""
    return random.uniform(0.1, min(cap, 0.5 * 2**attempt))
