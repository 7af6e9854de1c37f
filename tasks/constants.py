"""Every name stagesync keeps state under, in Redis and in the staging state database.

Redis is the broker and a cache: everything here under `stagesync:` may vanish with a
FLUSHALL and is rebuilt (done reports are re-earned by re-publishing; counters restart).
What must survive lives in the staging state database (`staging.state_db`).
"""

from __future__ import annotations

# Celery task names, declared once (see tasks.names for queues).
APPLY_BATCH = "stagesync.apply_batch"
RESYNC = "stagesync.resync"
RESYNC_CHUNK = "stagesync.resync_chunk"
RESYNC_SWEEP = "stagesync.resync_sweep"
REPLAY_DEAD_LETTERS = "stagesync.replay_dead_letters"
PURGE_DELETED = "stagesync.purge_deleted"
VERIFY = "stagesync.verify"

# Collections of the staging state database.
WATCHERS = "watchers"  # one document per collection: lease, checkpoint, watcher figures
COUNTERS = "counters"  # version counters, one document per collection
DEAD_LETTERS = "dead_letters"
RESYNCS = "resyncs"  # one document per full resync: chunks, progress, summary
PENDING_REFERENCES = "pending_references"  # references waiting for their referenced copy
RUNTIME = "runtime"  # settings changed at run time (per-queue rate limits)
VERIFICATIONS = "verifications"  # the latest scheduled verification per collection
UNCLASSIFIED = "unclassified_paths"  # paths a strict collection left out (no values), bounded
# Production's indexes mirrored into staging: one document per staging index stagesync created
# (ownership: only those are ever dropped), per failed build, and per collection's last pass.
INDEX_MIRROR = "index_mirror"
# "guard": markers of the same-deployment check (deployments.guard.MARKERS)

PREFIX = "stagesync"


def done_key(collection: str) -> str:
    """List of `batch_id|part` strings pushed by workers once a part of a batch is done."""
    return f"{PREFIX}:{collection}:done"


def stats_key(collection: str) -> str:
    """Hash of running counters (read, applied, dead_lettered, ...) shown by `status`."""
    return f"{PREFIX}:{collection}:stats"


def watcher_key(collection: str) -> str:
    """Hash the active watcher refreshes: heartbeat, lag, in-flight window, last error."""
    return f"{PREFIX}:{collection}:watcher"


def epoch_key(collection: str) -> str:
    """Set by the watcher; its disappearance means Redis was wiped and in-flight work lost."""
    return f"{PREFIX}:{collection}:epoch"


def deliveries_key(task_id: str) -> str:
    """How many times one task message was started, to stop poison messages from looping."""
    return f"{PREFIX}:deliveries:{task_id}"


def rate_limit_prefix(collection: str) -> str:
    """Namespace of the shared token bucket of a collection's queues (`limits` storage)."""
    return f"{PREFIX}:{collection}:rate"

