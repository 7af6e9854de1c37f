"""Index mirror passes a worker runs for a resync: in a thread of the worker's own, so
neither the resync nor any apply waits for a build."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from stagesync.deployments.index_mirror import IndexMirror
from stagesync.state.index_mirror_records import IndexMirrorRecords

if TYPE_CHECKING:
    from stagesync.tasks.runtime import Runtime

log = logging.getLogger("stagesync.indexes")

_running: dict[str, threading.Thread] = {}
_running_lock = threading.Lock()


def run_in_background(mirror: IndexMirror, retry_failed: bool) -> bool:
    """A pass in a thread of this process (a worker's resync must not wait for builds);
    False when one for the collection is still running here."""
    name = mirror.collection.name
    with _running_lock:
        current = _running.get(name)
        if current is not None and current.is_alive():
            return False

        def work() -> None:
            try:
                mirror.run(retry_failed=retry_failed)
            except Exception as error:  # a worker thread: log, never take the process down
                log.error("index mirror pass failed", extra={
                    "collection": name, "error": f"{type(error).__name__}: {str(error)[:200]}"})

        thread = threading.Thread(target=work, name=f"indexes-{name}", daemon=True)
        _running[name] = thread
        thread.start()
        return True


def mirror_for_resync(runtime: Runtime, collection: str) -> None:
    """Every resync makes staging's indexes match production's again, failed builds
    included; in a thread of this worker, so neither the resync nor any apply waits for a
    build."""
    context = runtime.context(collection)
    if context.settings.indexes == "mirror":
        # An environment's copies (`orders@pr-1`) keep their records under the scoped name,
        # apart from the main staging's, and their indexes where the environment lives.
        records = IndexMirrorRecords(runtime.state_db, context.scope)
        settings = context.settings if context.environment is None else \
            context.settings.model_copy(update={"name": context.scope})
        client = runtime.staging if context.environment is None else \
            runtime.environment_client()
        run_in_background(IndexMirror(settings, context.production, client, records),
                          retry_failed=True)
