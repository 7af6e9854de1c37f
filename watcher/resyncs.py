"""The resyncs a collection's watcher starts and minds: bootstrap and history-lost resyncs,
restarted when their tasks vanish, and the replay of documents held for their schema version.

The watcher's record in the state database holds the pending resync
(`state.checkpoints.RESYNC_PENDING`), so a restarted or standby watcher taking over goes on
minding the same one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery
from pymongo.database import Database
from stagesync.protocol.names import scoped_name
from stagesync.protocol.routing import home_queue
from stagesync.settings.collection import CollectionSettings
from stagesync.settings.model import Settings
from stagesync.state.checkpoints import LeaseLost, WatcherRecord
from stagesync.state.dead_letters import DeadLetterStore
from stagesync.state.environments import STREAMED, EnvironmentStore
from stagesync.state.resync_progress import (
    DOCS,
    FINISHED,
    STARTED_AT,
    STATE,
    TOTAL,
    progress,
    resync_records,
)
from stagesync.tasks.enqueue import start_replay, start_resync
from stagesync.watcher import metrics

log = logging.getLogger("stagesync.watcher")

# How long an environment's failed changes wait before the watcher replays them again.
ENVIRONMENT_REPLAY_SECONDS = 30


class ResyncSupervisor:
    def __init__(self, settings: Settings, collection: CollectionSettings,
                 record: WatcherRecord, state_db: Database[dict[str, Any]],
                 celery: Celery) -> None:
        self.settings = settings
        self.collection = collection
        self.name = collection.name
        self.record = record
        self.state_db = state_db
        self.celery = celery
        self._marker: tuple[Any, ...] | None = None  # the pending resync's last progress
        self._moved_at = 0.0
        self._environment_replay_at = datetime.min.replace(tzinfo=UTC)

    def begin(self, reason: str, environments: bool = False) -> None:
        """Resync the main staging; with `environments` (history lost), every environment the
        stream writes into as well: they missed the same changes. A frozen one is not written
        now; its thaw sees this resync (`environment_ops.thaw_mode`) and copies it again."""
        resync_id = start_resync(
            self.celery, self.state_db, self.name, home_queue(self.collection), reason
        )
        if not self.record.save_pending_resync(resync_id, reason):
            raise LeaseLost()
        log.warning("full resync started",
                    extra={"collection": self.name, "resync": resync_id, "reason": reason})
        if not environments:
            return
        for environment in EnvironmentStore(self.state_db).all(STREAMED):
            scope = scoped_name(self.name, environment.name)
            start_resync(self.celery, self.state_db, scope, home_queue(self.collection), reason)
            log.warning("full resync started", extra={"collection": scope, "reason": reason})

    def watch_pending(self) -> None:
        """Clear a finished bootstrap/history-lost resync; restart one whose tasks vanished."""
        pending = self.record.pending_resync()
        if not pending:
            return
        try:
            state = progress(self.state_db, pending)
        except KeyError:
            self.begin("previous resync record missing")
            return
        if state["state"] == "done":
            self.record.save_resync_done(pending)
            return
        if state["state"] == "failed":
            self.begin(f"resync {pending} failed: {state.get('error')}")
            return
        marker = (state["state"], state["done"], state["chunks_done"])
        if marker != self._marker:
            self._marker = marker
            self._moved_at = time.monotonic()
        elif time.monotonic() - self._moved_at > self.settings.status.stalled_after_seconds:
            self._marker = None
            self.begin(f"resync {pending} made no progress (tasks lost?)")

    def record_figures(self) -> None:
        """Running resyncs and the newest one's progress, from the resync records alone
        (a bounded scan: see `resync_records`)."""
        records = resync_records(self.state_db, self.name)
        now = datetime.now(UTC)

        def started(record: Mapping[str, Any]) -> datetime:
            moment = record.get(STARTED_AT) or now
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

        running = [r for r in records if r.get(STATE) not in FINISHED]
        metrics.RESYNCS_RUNNING.labels(self.name).set(len(running))
        metrics.RESYNC_RUNNING_SECONDS.labels(self.name).set(
            max(((now - started(r)).total_seconds() for r in running), default=0.0))
        newest = max(records, key=started, default={})
        metrics.RESYNC_DONE.labels(self.name).set(int(newest.get(DOCS) or 0))
        metrics.RESYNC_EXPECTED.labels(self.name).set(int(newest.get(TOTAL) or 0))

    def replay_waiting_environment_letters(self, now: datetime | None = None) -> None:
        """An environment's changes that failed in passing (`environment_error`) are replayed
        at once by the worker that failed them; where that replay was lost (a Redis wipe, a
        worker killed while it waited to retry) or failed again, the watcher starts another,
        at most every ENVIRONMENT_REPLAY_SECONDS, so no environment stays behind unattended."""
        moment = now or datetime.now(UTC)
        if moment < self._environment_replay_at:
            return
        self._environment_replay_at = moment + timedelta(seconds=ENVIRONMENT_REPLAY_SECONDS)
        before = moment - timedelta(seconds=ENVIRONMENT_REPLAY_SECONDS)
        for scope in DeadLetterStore(self.state_db).waiting_scopes(
                self.name, "environment_error", before):
            job = start_replay(self.celery, self.state_db, scope, home_queue(self.collection),
                               reason="environment_error")
            log.info("replaying an environment's failed changes",
                     extra={"collection": scope, "job": job})

    def replay_held_schema_versions(self) -> None:
        """Documents held for their schema version get another chance whenever a watcher
        starts streaming (typically after a configuration change accepted new versions)."""
        store = DeadLetterStore(self.state_db)
        if next(store.list(self.name, "schema_version", limit=1), None) is None:
            return
        job = start_replay(self.celery, self.state_db, self.name, home_queue(self.collection),
                           reason="schema_version")
        log.info("replaying documents held for their schema version",
                 extra={"collection": self.name, "job": job})
