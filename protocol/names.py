"""Every name stagesync uses, declared once: tasks, queues, Redis keys, state collections,
index names, server error codes, and the format of a done report.

Task and queue names are part of the interface (operators route, scale and watch them in
Flower), so they never change. Redis is the broker and a cache: everything under `stagesync:`
may vanish with a FLUSHALL and is rebuilt (done reports are re-earned by re-publishing;
counters restart). What must survive lives in the staging state database (`staging.state_db`).
"""

from __future__ import annotations

from stagesync.protocol.parts import BatchPart

# Celery task names.
APPLY_BATCH = "stagesync.apply_batch"
RESYNC = "stagesync.resync"
RESYNC_CHUNK = "stagesync.resync_chunk"
RESYNC_SWEEP = "stagesync.resync_sweep"
REPLAY_DEAD_LETTERS = "stagesync.replay_dead_letters"
PURGE_DELETED = "stagesync.purge_deleted"
VERIFY = "stagesync.verify"
EXPIRE_ENVIRONMENTS = "stagesync.expire_environments"
THAW_ENVIRONMENT = "stagesync.thaw_environment"

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
GUARD_MARKERS = "guard"  # markers of the same-deployment check (deployments.guard)
ENVIRONMENTS = "environments"  # one document per environment: state, lifetime, its databases
# What a frozen environment missed: one document per environment, collection and production
# `_id` (not per event), drained by its thaw.
ENVIRONMENT_BACKLOG = "environment_backlog"
# Dead-letter replay jobs, one document per `stagesync dlq replay` (or schema-version replay).
# Until this collection existed they were kept in `resyncs` with `kind: "replay"`.
REPLAY_JOBS = "replay_jobs"
# Every collection of the state database. Only the stores in `state/` open them (see
# tests/unit/test_rooms.py, which recognises a state collection by this list).
STATE_COLLECTIONS = (WATCHERS, COUNTERS, DEAD_LETTERS, RESYNCS, REPLAY_JOBS, PENDING_REFERENCES,
                     RUNTIME, VERIFICATIONS, UNCLASSIFIED, INDEX_MIRROR, GUARD_MARKERS,
                     ENVIRONMENTS, ENVIRONMENT_BACKLOG)

# Indexes stagesync creates; only names with this prefix are ever dropped by it.
OWN_INDEX_PREFIX = "stagesync_"
PID_INDEX = "stagesync_pid"
KEY_INDEX = "stagesync_key"
BUSINESS_KEY_INDEX = "stagesync_business_key"
DELETED_AT_INDEX = "stagesync_deleted_at"
TOMBSTONE_TTL_INDEX = "stagesync_tombstone_ttl"
DEAD_LETTERS_INDEX = "stagesync_dead_letters"
RESOLVED_TTL_INDEX = "stagesync_resolved_ttl"
PENDING_INDEX = "stagesync_pending"
PENDING_BY_COLLECTION_INDEX = "stagesync_pending_by_collection"
RESYNC_CHUNKS_INDEX = "stagesync_resync_chunks"
RESYNCS_TTL_INDEX = "stagesync_resyncs_ttl"

# Server error codes the product acts on (MongoDB's error_codes list).
DUPLICATE_KEY = 11000

PREFIX = "stagesync"
QUEUE_PREFIX = "stagesync"
RATE_LIMIT_KEY_PREFIX = f"{PREFIX}:limits"  # the `limits` library's storage prefix


# A collection's copies in an environment are a *target* of their own; what the state database
# keeps per target (dead letters, pending references, resyncs, stats) is keyed by the scoped
# name `<collection>@<environment>`. Collection and environment names never hold `@`.
SCOPE_SEPARATOR = "@"


def scoped_name(collection: str, environment: str | None) -> str:
    """`orders` for the main staging, `orders@pr-1` for environment pr-1."""
    return collection if environment is None else f"{collection}{SCOPE_SEPARATOR}{environment}"


def split_scope(name: str) -> tuple[str, str | None]:
    """(collection, environment or None) of a possibly scoped name."""
    collection, separator, environment = name.partition(SCOPE_SEPARATOR)
    return collection, (environment if separator else None)


def queue_names(collection: str, partitions: int) -> list[str]:
    """Every Celery queue of a collection: `stagesync.<name>`, or `stagesync.<name>.<n>` for
    each of its partitions."""
    if partitions == 1:
        return [f"{QUEUE_PREFIX}.{collection}"]
    return [f"{QUEUE_PREFIX}.{collection}.{n}" for n in range(partitions)]


def version_counter_id(collection: str) -> str:
    """`_id` of a collection's version counter in the `counters` collection."""
    return f"version:{collection}"


def done_key(collection: str) -> str:
    """List of `batch_id|part` strings (`done_report`) pushed by workers once a part of a
    batch is done."""
    return f"{PREFIX}:{collection}:done"


def done_report(batch: str, part: BatchPart) -> str:
    """One entry of the done list: the watcher's batch id and the part of it that is done
    (`protocol.parts`: the whole batch, or a half of a split one)."""
    return f"{batch}|{part.wire}"


def parse_done_report(report: bytes | str) -> tuple[str, BatchPart]:
    """(batch, part) of a done report; parts never hold `|`."""
    text = report.decode() if isinstance(report, bytes) else report
    batch, _, part = text.rpartition("|")
    return batch, BatchPart.from_wire(part)


# Replaced after every change of the environment store, and of the rate-limit overrides
# (`deployments.broker.ChangeSignal`): the workers' caches of them read the token, not the store.
ENVIRONMENTS_CHANGED_KEY = f"{PREFIX}:environments:changed"
RATE_LIMITS_CHANGED_KEY = f"{PREFIX}:ratelimits:changed"


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

