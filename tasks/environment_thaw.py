"""`stagesync.thaw_environment`: a thawed environment catches up on what it missed while frozen.

One task per environment and collection applies a chunk of the remembered documents
(`state.environment_backlog`), then publishes itself for the next chunk, so that no task runs
long and a killed worker loses at most one chunk's work (the message is acknowledged late and
delivered again; a chunk applied twice is harmless). The documents are read from production
now, after a version of their own, exactly as the stream's applies read them: the versions
order these writes against the stream's, which writes into the environment again meanwhile.
When a collection's backlog is empty it is recorded as caught up; the last one ends the thaw.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from celery import Task
from stagesync.deployments.failures import describe_error, is_transient
from stagesync.protocol.names import THAW_ENVIRONMENT, split_scope
from stagesync.protocol.routing import home_queue
from stagesync.state.environment_backlog import EnvironmentBacklog
from stagesync.state.environments import DRAIN, LIVE, EnvironmentStore
from stagesync.state.versions import take_version
from stagesync.tasks.apply.applier import apply_changes_read
from stagesync.tasks.celery_app import app
from stagesync.tasks.instrumented import stagesync_task
from stagesync.tasks.runtime import get_runtime

log = logging.getLogger("stagesync.environments")

# Documents per task: one production read of an `$in` list this long, one plan, one bulk write.
THAW_CHUNK = 500


@stagesync_task(THAW_ENVIRONMENT)
def thaw_environment(self: Task, scope: str) -> int:
    """Apply one chunk of `scope`'s backlog (`orders@pr-1`); the documents applied."""
    runtime = get_runtime()
    collection, name = split_scope(scope)
    assert name is not None, f"{scope!r} names no environment"
    environment = runtime.environment_store.get(name)
    if environment is None or environment.state != LIVE or environment.thaw_mode != DRAIN:
        return 0  # frozen again, reset or deleted meanwhile: its backlog waits for them
    context = runtime.context(scope)

    def apply(ops: dict[str, str]) -> None:
        version = take_version(runtime.state_db, collection)
        apply_changes_read(context, version, context.read_production(ops), ops)

    try:
        applied = drain_chunk(runtime.environment_store, runtime.environment_backlog, name,
                              collection, [c.name for c in runtime.settings.collections],
                              apply)
    except Exception as error:
        if not is_transient(error):
            raise
        log.warning("thaw chunk failed, retrying",
                    extra={"collection": scope, "error": describe_error(error)})
        raise self.retry(exc=error, countdown=2, max_retries=None) from None
    if applied is None:
        return 0
    app.send_task(THAW_ENVIRONMENT, args=[scope],
                  queue=home_queue(runtime.settings.collection(collection)))
    return applied


def drain_chunk(store: EnvironmentStore, backlog: EnvironmentBacklog, name: str,
                collection: str, collections: Sequence[str],
                apply: Callable[[dict[str, str]], None], size: int = THAW_CHUNK) -> int | None:
    """One round of a collection's drain: apply up to `size` remembered documents and forget
    them; None once nothing is left (the collection is recorded caught up, and the thaw ends
    with the last one). The entries are forgotten only after `apply` returned."""
    chunk = backlog.chunk(name, collection, size)
    if not chunk.ops:
        if store.thawed(name, collection, collections):
            log.info("environment thawed", extra={"environment": name})
        return None
    apply(chunk.ops)
    backlog.forget(name, collection, chunk)
    return len(chunk.ops)
