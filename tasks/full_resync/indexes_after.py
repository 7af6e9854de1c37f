"""A resync into an empty target builds some of stagesync's indexes after its copy.

mongorestore and MongoDB's initial sync insert the documents first and build the secondary
indexes over them after, because building an index costs the server less than maintaining it
on every insert. A resync whose target was empty when it was set up does the same with the
indexes that no write or lookup of the sync uses while it loads
(`deployments.staging_indexes.DEFERRED`): the purge's `_sync.deletedAt` and the tombstones'
TTL. It keeps the three that the stream's applies look copies up by, since the stream keeps
applying during the load: `_sync.pid`, the unique `_sync.key` and the raw business key.
Without them every apply of a new document would scan the collection being loaded (on MongoDB,
a collection scan per apply for as long as the load lasts), and the missing uniqueness would
let a copy and the stream give one business key to two documents. Deferring those too was
measured faster on the test server (below); it would take holding the stream's applies of the
collection back for the load, which is not built.

Measured at 20,000 documents, 2 ms, on SecantusDB (which rewrites every index entry on every
insert): the resync 10.8 s before, 9.6-10.3 s with these two deferred, 9.1-9.7 s with
`_sync.key` and the business key deferred as well (bench/README, "A load builds its indexes
after").

The build runs where the copy ends (`tasks.resync._open_sweep`), before the resync moves on,
so a resync is never done while its target lacks an index; a build interrupted by a worker's
death or a time limit is run again by the task's retry (creating an index that exists, or is
being built, is no error). A resync that failed before its build leaves the indexes to the next
resync of the collection (`complete_indexes` at its set-up) or to the next start-up.
"""

from __future__ import annotations

import logging
import time

from stagesync.deployments.staging_indexes import deferred_indexes, drop_deferred, ensure
from stagesync.tasks.runtime import Runtime

log = logging.getLogger("stagesync.resync")


def defer_indexes(runtime: Runtime, collection: str) -> None:
    """Drop the deferred indexes of a target about to be loaded."""
    dropped = drop_deferred(runtime.context(collection).target.collection)
    log.info("resync loads before building indexes",
             extra={"collection": collection, "indexes": dropped})


def complete_indexes(runtime: Runtime, collection: str) -> None:
    """Build the deferred indexes over what the copy loaded."""
    context = runtime.context(collection)
    started = time.monotonic()
    ensure(context.target.collection, deferred_indexes(context.settings))
    log.info("resync built its indexes after the copy",
             extra={"collection": collection, "seconds": round(time.monotonic() - started, 2)})
