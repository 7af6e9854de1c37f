"""Prometheus metrics of the watcher (served on `metrics.watcher_port`; 0 disables it)."""

from __future__ import annotations

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
