"""What the worker's metrics endpoint says about environments, read at scrape time.

Two things cannot come from the workers' own per-process counters:
- an environment's state and its open dead letters are facts of the state database, not of
  any one process: the worker's main process reads them when it is scraped (at most every
  `READ_EVERY_SECONDS`), like a kube-state-metrics exporter, and an environment that is gone
  simply stops being reported;
- series that pool children recorded for an environment since deleted live on in their
  multiprocess files, which prometheus_client cannot edit: the scrape leaves out every sample
  whose `environment` label names an environment the store no longer lists
  (`without_deleted`).

Every worker reports the same figures: alert rules and panels aggregate them with `max by`.
A failed read keeps the last one (and, before any succeeded, reports nothing and filters
nothing): a state database that is down must not make the workers' own series disappear.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from pymongo import MongoClient
from stagesync.deployments.staging import connect_staging
from stagesync.protocol.names import scoped_name
from stagesync.rules.document import Document
from stagesync.settings.model import Settings
from stagesync.state.database import state_database
from stagesync.state.dead_letters import DeadLetterStore
from stagesync.state.environments import LISTED, EnvironmentStore

log = logging.getLogger("stagesync.metrics")

READ_EVERY_SECONDS = 5.0
READ_TIMEOUT_MS = 3000


@dataclass(frozen=True)
class EnvironmentReading:
    """One environment as the state database records it."""

    name: str
    state: str
    expires_at: float | None  # Unix time
    dead_letters: dict[str, int]  # collection -> open dead-letter entries in its scope


def environment_families(readings: Sequence[EnvironmentReading]) -> list[Metric]:
    """The scrape-time gauges: state (1 for the current one, 0 for the others, so that a
    rule can compare states without the series coming and going), dead letters, expiry."""
    state = GaugeMetricFamily("stagesync_environment_state", "1 for the environment's "
                              "current state (creating, live, frozen, resetting), else 0",
                              labels=["environment", "state"])
    dead = GaugeMetricFamily("stagesync_environment_dead_letters", "Open dead-letter entries "
                             "of the collection in the environment", labels=["environment",
                                                                              "collection"])
    expiry = GaugeMetricFamily("stagesync_environment_expiry_timestamp_seconds", "Unix time "
                               "at which the environment expires", labels=["environment"])
    for reading in readings:
        for name in sorted({*LISTED, reading.state}):
            state.add_metric([reading.name, name], 1.0 if name == reading.state else 0.0)
        for collection, count in sorted(reading.dead_letters.items()):
            dead.add_metric([reading.name, collection], float(count))
        if reading.expires_at is not None:
            expiry.add_metric([reading.name], reading.expires_at)
    return [state, dead, expiry]


def without_deleted(families: Iterable[Metric], listed: set[str]) -> list[Metric]:
    """The families with every sample of an environment not in `listed` left out."""
    kept = []
    for family in families:
        family.samples = [sample for sample in family.samples
                          if sample.labels.get("environment") is None
                          or sample.labels["environment"] in listed]
        kept.append(family)
    return kept


class EnvironmentFigures(Collector):
    """The environments as the worker's endpoint reports them; `read` returns them all."""

    def __init__(self, read: Callable[[], list[EnvironmentReading]],
                 every: float = READ_EVERY_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._every = every
        self._clock = clock
        self._lock = threading.Lock()
        self._readings: list[EnvironmentReading] | None = None
        self._at: float | None = None

    def readings(self) -> list[EnvironmentReading] | None:
        """The latest reading, at most `every` seconds old when the store answers; None
        until one succeeded."""
        with self._lock:
            now = self._clock()
            if self._at is None or now - self._at >= self._every:
                self._at = now
                try:
                    self._readings = self._read()
                except Exception as error:  # the last reading stays; see the module doc
                    log.warning("environments not read for metrics",
                                extra={"error": type(error).__name__})
            return self._readings

    def collect(self) -> Iterable[Metric]:
        return environment_families(self.readings() or [])

    def filter(self, families: Iterable[Metric]) -> list[Metric]:
        readings = self.readings()
        if readings is None:
            return list(families)
        return without_deleted(families, {reading.name for reading in readings})


def state_database_reader(settings: Settings) -> Callable[[], list[EnvironmentReading]]:
    """`read` for EnvironmentFigures: the store and the dead-letter counts of every listed
    environment, through a client of its own opened at the first scrape (in the worker's
    main process, which never applies anything)."""
    client: list[MongoClient[Document]] = []

    def read() -> list[EnvironmentReading]:
        if not client:
            client.append(connect_staging(settings.staging,
                                          serverSelectionTimeoutMS=READ_TIMEOUT_MS,
                                          timeoutMS=READ_TIMEOUT_MS))
        state_db = state_database(client[0], settings.staging)
        dead_letters = DeadLetterStore(state_db)
        return [EnvironmentReading(
            name=environment.name, state=environment.state,
            expires_at=environment.expires_at.timestamp() if environment.expires_at else None,
            dead_letters={collection.name: dead_letters.count(
                scoped_name(collection.name, environment.name))
                for collection in settings.collections},
        ) for environment in EnvironmentStore(state_db).all(LISTED)]

    return read
