"""Prometheus metrics of the watcher (served on `metrics.watcher_port`; 0 disables it)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge

READ = Counter("stagesync_changes_read_total", "Change events read from production",
               ["collection"])
ENQUEUED = Counter("stagesync_changes_enqueued_total",
                   "Changes enqueued after coalescing (one per document per batch)",
                   ["collection"])
LAG = Gauge("stagesync_lag_seconds", "Age of the oldest change not yet applied (0 when none)",
            ["collection"])
UNAPPLIED = Gauge("stagesync_unapplied_changes", "Changes enqueued and not yet done",
                  ["collection"])
CHECKPOINT_AGE = Gauge("stagesync_checkpoint_age_seconds",
                       "Seconds since the checkpoint was last saved", ["collection"])
QUEUE_DEPTH = Gauge("stagesync_queue_depth", "Messages waiting in a queue", ["queue"])
DEAD_LETTERS = Gauge("stagesync_dead_letters", "Open dead-letter entries", ["collection"])
STREAMING = Gauge("stagesync_watcher_streaming",
                  "1 while this process streams the collection (0: standby or restarting)",
                  ["collection"])
REPUBLISHED = Counter("stagesync_batches_republished_total",
                      "Batches enqueued again after a timeout or a Redis wipe", ["collection"])
ACTIVE = Gauge("stagesync_watcher_active",
               "The watcher's role: 1 while this process holds the collection's lease "
               "(active), 0 while it stands by", ["collection"])
HISTORY_LOST = Counter("stagesync_history_lost_total",
                       "Times the stream could not go on from the checkpoint (history lost, "
                       "an unusable resume token, a drop or rename) and a full resync started",
                       ["collection"])
OPLOG_HEADROOM = Gauge("stagesync_oplog_headroom_seconds",
                       "Production's oplog window minus the checkpoint's age: how long the "
                       "watcher may stay away before the checkpoint falls off the oplog "
                       "(absent while the oplog cannot be read)", ["collection"])
RESYNCS_RUNNING = Gauge("stagesync_resyncs_running", "Full resyncs of the collection not yet "
                        "done or failed", ["collection"])
RESYNC_RUNNING_SECONDS = Gauge("stagesync_resync_running_seconds",
                               "Age of the oldest running resync (0 when none runs)",
                               ["collection"])
RESYNC_DONE = Gauge("stagesync_resync_documents_done",
                    "Documents the newest resync of the collection has copied so far",
                    ["collection"])
RESYNC_EXPECTED = Gauge("stagesync_resync_documents_expected",
                        "Documents the newest resync of the collection expects (production's "
                        "estimated count when it began, the exact count once done)",
                        ["collection"])
INDEX_DRIFT = Gauge("stagesync_index_drift",
                    "Production indexes not (yet) as they should be in staging, by kind: "
                    "missing, extra, changed, failed (a build staging refused), demoted (the "
                    "safety net took it down after staging refused sync writes on it)",
                    ["collection", "kind"])
INDEX_DRIFT_KINDS = ("missing", "extra", "changed", "failed", "demoted")

# What only the active watcher of a collection keeps up to date.
_ACTIVE_ONLY = (LAG, UNAPPLIED, CHECKPOINT_AGE, DEAD_LETTERS, OPLOG_HEADROOM, RESYNCS_RUNNING,
                RESYNC_RUNNING_SECONDS, RESYNC_DONE, RESYNC_EXPECTED)


def forget_active(collection: str, queues: Iterable[str]) -> None:
    """A watcher standing by drops the figures it kept while active: frozen at their last
    value they would pass for the active watcher's (a stale lag, a stale headroom) in every
    aggregation over watchers. Counters stay."""
    for gauge in _ACTIVE_ONLY:
        gauge.remove(collection)
    for queue in queues:
        QUEUE_DEPTH.remove(queue)
    for kind in INDEX_DRIFT_KINDS:
        INDEX_DRIFT.remove(collection, kind)
