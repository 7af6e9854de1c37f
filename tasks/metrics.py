"""Prometheus metrics of the workers: one endpoint per `celery worker` process.

Celery's prefork children are separate processes, each with its own counters. A scrape target
per child would make the scrape configuration list a port range per host and change with
`-c`. So the worker uses `prometheus_client`'s multiprocess mode, as gunicorn-style servers do:
every process of the worker writes its values into memory-mapped files in one directory of
the worker's own, and the worker's main process serves them all, summed, on one port (the
first free one from `metrics.worker_port_base`; README, "Monitoring"). 0 disables it.

- The directory (`metrics.worker_dir`, default `$TMPDIR/stagesync-metrics-UID`, then the
  Celery node name) is emptied when the worker starts: files of an earlier run of the same
  node would otherwise be counted again on top of the new ones (Prometheus sees the restart
  as a counter reset, as it would for any process).
- A child's counter and histogram files stay when it exits, killed or not: its counts are
  neither lost nor counted twice (a replacement child writes files of its own pid).
- Gauges say per metric how the children's values combine (`multiprocess_mode`). Files of
  gauges in a live mode are removed when their child exits (`mark_process_dead`): at a clean
  shutdown by the child itself, and for a child that was killed at the next scrape, by the
  main process, which knows its live children.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

import psutil
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
    values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from stagesync.protocol.names import split_scope
from stagesync.tasks.environment_metrics import EnvironmentFigures

if TYPE_CHECKING:  # tasks.apply.context imports this module
    from stagesync.tasks.apply.context import ApplyResult

log = logging.getLogger("stagesync.metrics")

PORT_ATTEMPTS = 64
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_DIR_NAME = "stagesync-metrics"
# Gauge files of modes that only count live processes: `gauge_livesum_1234.db`, ...
_LIVE_FILE = re.compile(r"^gauge_live[a-z]*_(\d+)\.db$")

APPLIED = Counter(
    "stagesync_applied_total", "Changes done by workers, by outcome "
    "(created, updated, unchanged, soft_deleted, tombstoned, outside: left out by the subset, "
    "superseded, dead_lettered, ...)",
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
    # Every child sets the collection's figure from the state database: the newest is right.
    multiprocess_mode="mostrecent",
)
TASK_SECONDS = Histogram(
    "stagesync_task_seconds", "Seconds per task run, by task name and outcome (done, retried, "
    "failed)", ["task", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
INDEX_DEMOTIONS = Counter(
    "stagesync_index_demotions_total", "Mirrored indexes the apply's safety net demoted "
    "because staging refused sync writes on them", ["collection"],
)
LAST_APPLIED = Gauge(
    "stagesync_last_applied_timestamp_seconds", "Unix time at which a worker last finished "
    "applying a batch of the collection", ["collection"],
    # The newest of all children, including exited ones: it never goes back.
    multiprocess_mode="max",
)


# Every kind `tasks.apply_batch` counts: their series exist (at 0) from a collection's first
# apply on, so dashboards show a flat line rather than nothing, and an alert's `increase()`
# sees the first failure.
FAILURE_KINDS = ("transient", "split", "poison", "write_error", "apply_error")
_seen_collections: set[str] = set()


def observe_apply(collection: str, changes: int, seconds: float, waited: float,
                  outcomes: Mapping[str, int], source: str = "stream") -> None:
    if collection not in _seen_collections:
        _seen_collections.add(collection)
        for kind in FAILURE_KINDS:
            FAILURES.labels(collection, kind)
    BATCH_SIZE.labels(collection).observe(changes)
    APPLY_SECONDS.labels(collection).observe(seconds)
    RATE_WAIT.labels(collection).inc(waited)
    for outcome, count in outcomes.items():
        if count:
            APPLIED.labels(collection, outcome, source).inc(count)
    LAST_APPLIED.labels(collection).set(time.time())


# -- environments -----------------------------------------------------------------------------
# Families of their own, labelled by environment: the main staging's series above keep their
# names and labels exactly (monitoring/ and users' queries rely on them), and an environment
# that comes and goes never adds a label value to them. Workers record these where the
# fan-out's results come back (`observe_environments`); the environments' state and open dead
# letters are read from the state database at scrape time (tasks.environment_metrics).
ENV_APPLIED = Counter(
    "stagesync_environment_applied_total", "Changes done in an environment by outcome (as "
    "stagesync_applied_total for the main staging)", ["environment", "collection", "outcome"],
)
ENV_FAILURES = Counter(
    "stagesync_environment_apply_failures_total", "Batches whose apply into the environment "
    "failed and was contained: their changes are dead-lettered in its scope", ["environment",
                                                                              "collection"],
)
ENV_LAST_APPLIED = Gauge(
    "stagesync_environment_last_applied_timestamp_seconds", "Unix time at which a worker last "
    "applied a batch of the collection into the environment", ["environment", "collection"],
    multiprocess_mode="max",
)
# The fan-out returns one result per environment, not its time: the seconds are those of the
# whole fan-out (every environment of the batch, after the main staging), by collection.
ENV_FANOUT_SECONDS = Histogram(
    "stagesync_environment_fanout_seconds", "Seconds applying one batch into every "
    "environment, after the main staging (one production read shared)", ["collection"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# The label values this process created, by environment: what `forget_environment` removes.
_environment_series: dict[str, set[tuple[Counter | Gauge, tuple[str, ...]]]] = {}


def _series(family: Counter | Gauge, environment: str, *labels: str) -> Counter | Gauge:
    _environment_series.setdefault(environment, set()).add((family, (environment, *labels)))
    return family.labels(environment, *labels)


def observe_environments(collection: str, results: Mapping[str, ApplyResult | None],
                         seconds: float) -> None:
    """The fan-out's results, `{"orders@pr-1": ApplyResult | None}` (None: contained)."""
    if not results:
        return
    ENV_FANOUT_SECONDS.labels(collection).observe(seconds)
    now = time.time()
    for scope, result in results.items():
        name, environment = split_scope(scope)
        if environment is None:
            continue
        failures = _series(ENV_FAILURES, environment, name)  # at 0 from the first apply
        if result is None:
            failures.inc()
            continue
        for outcome, count in result.outcomes.items():
            if count:
                _series(ENV_APPLIED, environment, name, outcome).inc(count)
        _series(ENV_LAST_APPLIED, environment, name).set(now)


def forget_environment(name: str) -> None:
    """Drop a deleted environment's series from this process's metrics. Call it where the
    environment is deleted, once its record is gone.

    What it can and cannot do: prometheus_client keeps a series per process. Here it removes
    this process's own; it cannot reach another process's. In a worker (multiprocess mode)
    every pool child writes its series into files that the worker's main process sums at each
    scrape, and prometheus_client cannot remove a series from those files (`remove()` only
    drops the in-memory child and warns): there the scrape itself leaves out the series of
    environments that the state database no longer lists (`environment_filter`), in every
    worker at once, whichever process deleted the environment."""
    with warnings.catch_warnings():
        # "not implemented in multi-process mode": the scrape's filter does it there.
        warnings.simplefilter("ignore", UserWarning)
        for family, labels in _environment_series.pop(name, set()):
            family.remove(*labels)


# -- multiprocess mode ------------------------------------------------------------------------
def worker_directory(base: str, node: str) -> Path:
    """The metrics directory of one worker (Celery node name) on this host."""
    # The default is the user's own: another local user cannot have created it first.
    root = Path(base) if base else Path(tempfile.gettempdir()) / f"{DEFAULT_DIR_NAME}-{os.getuid()}"
    return root / (re.sub(r"[^A-Za-z0-9_.@-]", "_", node) or "worker")


def empty_directory(directory: Path) -> None:
    """Create the worker's metrics directory, or empty it of an earlier run's files."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


def enable_multiprocess(directory: Path) -> None:
    """Make every value created from now on, in this process and in the children it forks,
    live in `directory`, emptied first.

    Called in the worker's main process before its pool forks and before any task ran: the
    worker's metrics all have labels, so none of their values exists yet. (Setting
    PROMETHEUS_MULTIPROC_DIR alone would be too late: prometheus_client reads it when it is
    first imported, which `celery -A stagesync.tasks` does while loading the app. And it must not be
    set for every process importing `tasks`: Flower does too, and serves its own registry.)"""
    empty_directory(directory)
    os.environ[MULTIPROC_ENV] = str(directory)
    values.ValueClass = values.MultiProcessValue()


class _WorkerCollector(Collector):
    """The worker's processes summed; first forgets the live gauges of children gone. With
    `environments`, the environments' scrape-time figures are added, and the series of
    environments deleted since are left out (tasks.environment_metrics)."""

    def __init__(self, directory: Path, environments: EnvironmentFigures | None = None) -> None:
        self.directory = directory
        self.environments = environments
        self._merged = multiprocess.MultiProcessCollector(None, path=str(directory))

    def collect(self) -> Iterable[Metric]:
        mark_exited_children(self.directory)
        merged = self._merged.collect()
        if self.environments is None:
            return merged
        return [*self.environments.filter(merged), *self.environments.collect()]


def mark_exited_children(directory: Path) -> list[int]:
    """`mark_process_dead` for every process with live-gauge files that is neither this one
    nor one of its children (a child SIGKILLed never ran its own shutdown hook)."""
    alive = {os.getpid()} | {child.pid for child in psutil.Process().children()}
    gone = sorted({int(m.group(1)) for f in directory.glob("gauge_live*.db")
                   if (m := _LIVE_FILE.match(f.name))} - alive)
    for pid in gone:
        multiprocess.mark_process_dead(pid, str(directory))
    return gone


def mark_this_process_dead() -> None:
    """A child on its way out: its live gauges stop counting (its counters stay)."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        multiprocess.mark_process_dead(os.getpid(), directory)


_server: WSGIServer | None = None


def serve_worker(base_port: int, directory: Path,
                 environments: EnvironmentFigures | None = None) -> int | None:
    """Serve the whole worker's metrics (all its processes) from this, its main process, on
    the first free port from `base_port` (several workers may share a host)."""
    global _server
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_WorkerCollector(directory, environments))
    for attempt in range(PORT_ATTEMPTS):
        port = base_port + attempt
        try:
            _server, _ = start_http_server(port, addr="0.0.0.0", registry=registry)
        except OSError:
            continue
        log.info("metrics served", extra={"port": port, "directory": str(directory)})
        return port
    log.warning("no free port for metrics", extra={"from": base_port})
    return None


def close_inherited_server() -> None:
    """In a forked child: close the copy of the main process's listening socket (the child
    never serves; an open copy would keep the port bound after the main process is gone)."""
    global _server
    if _server is not None:
        _server.socket.close()
        _server = None
