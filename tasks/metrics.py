"""Prometheus metrics of the workers.

Celery's prefork children are separate processes, so each child serves its own registry on
its own port: the first free port from `metrics.worker_port_base` + the child's pool index
(README, "Metrics"). Scrape each worker host's port range. 0 disables it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("stagesync.metrics")

PORT_ATTEMPTS = 64

APPLIED = Counter(
    "stagesync_applied_total", "Changes done by workers, by outcome "
    "(created, updated, unchanged, soft_deleted, tombstoned, superseded, dead_lettered, ...)",
    ["collection", "outcome", "source"],
)
BATCH_SIZE = Histogram(
    "stagesync_batch_changes", "Changes per applied batch", ["collection"],
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
)
APPLY_SECONDS = Histogram(
    "stagesync_apply_seconds", "Seconds per batch apply (version to bulk write)",
    ["collection"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RATE_WAIT = Counter(
    "stagesync_rate_limit_wait_seconds_total", "Seconds spent waiting for the queue's rate "
    "limit", ["collection"],
)
FAILURES = Counter(
    "stagesync_apply_failures_total", "Batch applies that failed, by kind (transient, "
    "split, poison, dead_lettered)", ["collection", "kind"],
)
UNCLASSIFIED_PATHS = Gauge(
    "stagesync_pii_unclassified_paths", "Production paths a strict collection leaves out of "
    "staging because no pii rule, allow entry or business key classifies them (as recorded "
    "in the state database)", ["collection"],
)


def observe_apply(collection: str, changes: int, seconds: float, waited: float,
                  outcomes: Mapping[str, int], source: str = "stream") -> None:
    BATCH_SIZE.labels(collection).observe(changes)
    APPLY_SECONDS.labels(collection).observe(seconds)
    if waited:
        RATE_WAIT.labels(collection).inc(waited)
    for outcome, count in outcomes.items():
        if count:
            APPLIED.labels(collection, outcome, source).inc(count)


def serve(base_port: int, index: int) -> int | None:
    """Serve this process's metrics on the first free port from base + index."""
    if base_port <= 0:
        return None
    for attempt in range(PORT_ATTEMPTS):
        port = base_port + index + attempt
        try:
            start_http_server(port, addr="0.0.0.0")
        except OSError:
            continue
        log.info("metrics served", extra={"port": port})
        return port
    log.warning("no free port for metrics", extra={"from": base_port + index})
    return None
