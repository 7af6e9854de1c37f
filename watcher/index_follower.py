"""The watcher's follower of production's index changes, one thread per collection.

A pass of the mirror (`deployments.index_mirror.IndexMirror`) at start, then one after every
DDL event the change stream carries (MongoDB 6.0+, `showExpandedEvents`), or every
`watcher.index_poll_seconds` where there are none. It runs beside the stream, so a long build
never stalls the applies. Each pass is made in the main staging, then in every environment on
the staging deployment that the stream writes into (one on a deployment of its own,
`environments.uri`, gets production's indexes from each resync into it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pymongo.database import Database
from pymongo.errors import OperationFailure, PyMongoError
from stagesync.deployments.index_mirror import IndexMirror
from stagesync.deployments.production import ProductionReader
from stagesync.protocol.names import scoped_name
from stagesync.settings.collection import CollectionSettings
from stagesync.settings.model import Settings
from stagesync.state.environments import STREAMED, EnvironmentStore, environment_settings
from stagesync.state.index_mirror_records import IndexMirrorRecords
from stagesync.watcher.metrics import INDEX_DRIFT, INDEX_DRIFT_KINDS

log = logging.getLogger("stagesync.indexes")

# The first server version whose change streams carry `createIndexes`, `dropIndexes` and
# `modify` with `showExpandedEvents`.
EXPANDED_EVENTS_SINCE = (6, 0)
# How long a follower in event mode sleeps between passes without a DDL event: a pass costs
# two `listIndexes` and catches anything an event could have missed (none should).
EVENT_MODE_SAFETY_SECONDS = 3600.0
# How often the follower measures the drift for `stagesync_index_drift` between passes (a
# demotion by a worker shows, and its new form is built, within this time).
DRIFT_SECONDS = 15.0

Document = dict[str, Any]


class IndexFollower:
    """The watcher's background mirror of one collection: a pass at start, then one after
    every DDL event (MongoDB 6.0+), or every `index_poll_seconds` where there are none. It
    runs beside the stream, so a long build never stalls the applies."""

    def __init__(self, mirror: IndexMirror, stop: threading.Event, poll_seconds: float,
                 events: bool, active: Callable[[], bool] | None = None,
                 environments: Callable[[], list[IndexMirror]] | None = None) -> None:
        self.mirror = mirror
        # The same collection in every environment the stream writes into, read at each pass.
        self.environments = environments or (lambda: [])
        self.stop = stop
        self.poll_seconds = poll_seconds
        self.events = events
        # False while the watcher stands by (another one owns the collection and mirrors).
        self.active = active or (lambda: True)
        self._wake = threading.Event()
        self._drift_at = 0.0  # monotonic time of the next drift report
        self._mendable = ""  # the drift a pass could mend, at the previous report
        self._thread: threading.Thread | None = None

    @classmethod
    def for_watcher(cls, settings: Settings, collection: CollectionSettings,
                    production: ProductionReader, state_db: Database[Document],
                    stop: threading.Event, active: Callable[[], bool] | None = None
                    ) -> IndexFollower | None:
        if collection.indexes != "mirror":
            return None
        mirror = IndexMirror(collection, production.collection(collection), state_db.client,
                             IndexMirrorRecords(state_db, collection.name))
        events = settings.watcher.index_follow == "auto"
        if events:
            try:
                events = production.server_version()[:2] >= EXPANDED_EVENTS_SINCE
            except PyMongoError:
                events = False  # asked again never; polling works everywhere
        source = production.collection(collection)

        def environments() -> list[IndexMirror]:
            if settings.environments.uri is not None:
                return []  # a deployment of their own: mirrored by each resync into it
            return [IndexMirror(environment_settings(collection, environment), source,
                                state_db.client, IndexMirrorRecords(
                                    state_db, scoped_name(collection.name, environment.name)))
                    for environment in EnvironmentStore(state_db).all(STREAMED)]

        return cls(mirror, stop, settings.watcher.index_poll_seconds, events, active,
                   environments)

    @property
    def mode(self) -> str:
        return "events" if self.events else "poll"

    def stream_options(self) -> dict[str, Any]:
        return {"show_expanded_events": True} if self.events else {}

    def events_refused(self, error: OperationFailure) -> bool:
        """The server refused `showExpandedEvents` (older than it said): poll from now on."""
        if self.events and "showExpandedEvents" in str(error):
            log.warning("change stream without DDL events here; polling listIndexes instead",
                        extra={"collection": self.mirror.collection.name})
            self.events = False
            self._wake.set()
            return True
        return False

    def poke(self) -> None:
        """A DDL event arrived: a pass soon (several events in a row make one pass)."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"indexes-{self.mirror.collection.name}", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self._wake.clear()
            failed = False
            try:
                if self.active():
                    self.mirror.run()
                    self._mirror_environments()
            except Exception as error:  # the thread must outlive any one failed pass
                failed = True
                log.error("index mirror pass failed; trying again at the next one",
                          extra={"collection": self.mirror.collection.name,
                                 "error": f"{type(error).__name__}: {str(error)[:200]}"})
            # After a failed pass the next comes at the poll interval even in event mode:
            # the events that woke it are behind the checkpoint already.
            wait = self.poll_seconds if failed or not self.events else EVENT_MODE_SAFETY_SECONDS
            if self._sleep(wait):
                self.stop.wait(0.2)  # let a burst of DDL events settle into one pass

    def _mirror_environments(self) -> None:
        """The same pass in each environment, with records of its own (its scoped name); one
        that fails is logged and tried again at the next pass, never failing the main
        staging's."""
        for mirror in self.environments():
            try:
                mirror.run()
            except Exception as error:
                log.warning("index mirror pass failed in an environment", extra={
                    "collection": mirror.collection.name, "target": mirror.collection.target,
                    "error": f"{type(error).__name__}: {str(error)[:200]}"})

    def _sleep(self, seconds: float) -> bool:
        """Wait for the next pass, measuring the drift every DRIFT_SECONDS meanwhile; True when
        woken early (a DDL event, or new drift a pass can mend: a demotion's new form)."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                return False
            if now >= self._drift_at:
                self._drift_at = now + DRIFT_SECONDS
                if self.report_drift():
                    return True
            if self._wake.wait(min(0.5, deadline - now)):
                return True
        return False

    def report_drift(self) -> bool:
        """Set `stagesync_index_drift` from the drift now; True when a pass would mend drift
        not seen at the previous report (what a pass could not mend does not wake it again)."""
        if not self.active():
            return False
        name = self.mirror.collection.name
        try:
            drift = self.mirror.drift()
        except Exception as error:  # reporting must never stop the follower
            log.warning("index drift unknown", extra={
                "collection": name, "error": f"{type(error).__name__}: {str(error)[:200]}"})
            return False
        for kind in INDEX_DRIFT_KINDS:
            INDEX_DRIFT.labels(name, kind).set(len(drift.get(kind) or []))
        mendable = repr([drift.get(kind) for kind in ("missing", "extra", "changed")])
        new = mendable != self._mendable and any(
            drift.get(kind) for kind in ("missing", "extra", "changed"))
        self._mendable = mendable
        return new
