"""One collection's watcher: lease, change stream, micro-batches, checkpoint.

One stream per collection, not one per database: each collection has its own checkpoint,
lease, backpressure and history-lost recovery (a resync of that collection only), and the
collections of one database can be split over several watcher processes. A database stream
would share one resume token among collections that move at different speeds, so one slow
queue would hold every other collection's checkpoint back. The price is one cursor per
collection on production.

This module holds the outer loop: the lease (active or standby), opening the stream from the
checkpoint (or from now, with a full resync, at bootstrap and when history is lost), restarts
after failures, and the heartbeat. Reading one open stream is `watcher.loop.StreamLoop`'s.

Any unexpected failure restarts the stream from the durable checkpoint after a backoff: the
in-memory window is dropped, changes after the checkpoint are read and enqueued again, and the
applies are idempotent, so a restart costs time, never data.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from pymongo.database import Database
from pymongo.errors import OperationFailure, PyMongoError
from stagesync.deployments.production import ProductionReader, ReadOnlyCollection
from stagesync.protocol.names import epoch_key
from stagesync.protocol.routing import queues_of
from stagesync.settings.collection import CollectionSettings
from stagesync.settings.model import Settings
from stagesync.state.checkpoints import LeaseLost, WatcherRecord
from stagesync.state.dead_letters import DeadLetterStore
from stagesync.watcher import heartbeat, metrics
from stagesync.watcher.background_read import BackgroundRead
from stagesync.watcher.checkpoint_saver import CheckpointSaver
from stagesync.watcher.events import STREAM_PROJECTION
from stagesync.watcher.index_follower import IndexFollower
from stagesync.watcher.inflight import InflightWindow
from stagesync.watcher.loop import STREAM_AWAIT_MS, HistoryLost, StreamLoop
from stagesync.watcher.resyncs import ResyncSupervisor
from stagesync.watcher.timers import Timers

__all__ = ["CollectionWatcher", "HistoryLost", "WatcherLinks"]

log = logging.getLogger("stagesync.watcher")

# The stream cannot go on from where it was: ChangeStreamHistoryLost, ChangeStreamFatalError,
# InvalidResumeToken. Restarting from the same token would fail the same way forever.
HISTORY_LOST_CODES = frozenset({286, 280, 260})
# Opening from a stored token, also FailedToParse: MongoDB raises 9 for a token it cannot
# read (not a hex string, no `_data`), which can no more be resumed from than a lost one.
# Only at that moment: mid-stream the token is the server's own, and a 9 means something else.
UNUSABLE_TOKEN_CODES = HISTORY_LOST_CODES | {9}
HOUSEKEEPING_SECONDS = 0.2
HEARTBEAT_SECONDS = 1.0
RESYNC_CHECK_SECONDS = 5.0
DEAD_LETTER_COUNT_SECONDS = 10.0


@dataclass(frozen=True)
class WatcherLinks:
    """What every collection's watcher of one process shares: the production reader (for the
    oplog window), the state database, Redis, the publishing Celery app, the run id that holds
    the leases, the stop request, and the oplog window's read (`oplog_window_read`: one per
    process, since production has one oplog however many collections are watched)."""

    production: ProductionReader
    state_db: Database[dict[str, Any]]
    redis: redis.Redis
    celery: Celery
    run_id: str
    stop: threading.Event
    oplog_window: BackgroundRead[float | None]


def oplog_window_read(production: ProductionReader, settings: Settings
                      ) -> BackgroundRead[float | None]:
    """The oplog window in seconds, read in the background every `oplog_check_seconds`."""
    return BackgroundRead("oplog-window", lambda: production.oplog_window().seconds,
                          every=settings.watcher.oplog_check_seconds)


class CollectionWatcher:
    def __init__(
        self,
        settings: Settings,
        collection: CollectionSettings,
        source: ReadOnlyCollection,
        links: WatcherLinks,
    ) -> None:
        """`source` is the collection's read-only production handle (its change stream)."""
        self.settings = settings
        self.collection = collection
        self.name = collection.name
        self.production = links.production
        self.source = source
        self.state_db = links.state_db
        self.redis = links.redis
        self.celery = links.celery
        self.run_id = links.run_id
        self.stop = links.stop
        config = settings.watcher
        self.record = WatcherRecord(self.state_db, self.name, self.run_id, config.lease_seconds)
        self.checkpoints = CheckpointSaver(self.record, config.checkpoint_interval_seconds)
        self.resyncs = ResyncSupervisor(settings, collection, self.record, links.state_db,
                                        links.celery)
        self.timers = Timers({
            "housekeeping": HOUSEKEEPING_SECONDS, "lease": config.lease_seconds / 3,
            "heartbeat": HEARTBEAT_SECONDS, "resync": RESYNC_CHECK_SECONDS, "fetch": 0.0,
            "dead_letters": DEAD_LETTER_COUNT_SECONDS,
        })
        self.last_error: str | None = None
        self.state = "starting"
        self.idle_at = 0.0  # wall-clock time everything read so far was last applied
        self._fresh_start: str | None = None  # why the next stream must start from now
        # The heartbeat's reads of MongoDB, off the stream loop's thread (watcher.background_read).
        self._dead_letters = BackgroundRead(f"dead-letters-{self.name}", self._count_dead_letters)
        self._oplog_seconds = links.oplog_window
        # At 0 from the start, so that the first one is an increase an alert can see.
        metrics.HISTORY_LOST.labels(self.name)
        metrics.REPUBLISHED.labels(self.name)
        # Production's indexes in staging, built in a thread of its own (None: indexes: none).
        self.indexes = IndexFollower.for_watcher(
            settings, collection, links.production, links.state_db, links.stop,
            active=lambda: self.state != "standby")

    # -- outer loop: lease, restarts ------------------------------------------------------
    def run(self) -> None:
        failures = 0
        while not self.stop.is_set():
            try:
                if not self.record.acquire():
                    self._standby()
                    continue
                metrics.ACTIVE.labels(self.name).set(1)
                log.info("streaming", extra={"collection": self.name, "owner": self.run_id})
                self._stream()
                failures = 0
            except LeaseLost:
                log.warning("lease lost, standing by", extra={"collection": self.name})
            except HistoryLost as lost:
                self._history_lost(lost)
                failures = 0
            except Exception as error:
                failures += 1
                self._failed(error, failures)
        metrics.ACTIVE.labels(self.name).set(0)
        self._dead_letters.close()
        self._release_quietly()

    def _history_lost(self, lost: HistoryLost) -> None:
        log.critical(
            "change stream history lost: staging may have missed changes; starting a "
            "full resync and streaming again from now",
            extra={"collection": self.name, "reason": str(lost)},
        )
        self.last_error = f"history lost: {lost}"
        metrics.HISTORY_LOST.labels(self.name).inc()
        self._fresh_start = f"history lost: {lost}"

    def _failed(self, error: Exception, failures: int) -> None:
        """Restart from the checkpoint after a backoff that grows with the failures."""
        self.last_error = f"{type(error).__name__}: {str(error)[:300]}"
        pause = min(30.0, 0.5 * 2 ** min(failures, 6)) * random.uniform(0.5, 1.0)
        log.error("stream failed, restarting from the checkpoint",
                  extra={"collection": self.name, "error": self.last_error,
                         "retry_in": round(pause, 2)})
        heartbeat.write_not_streaming(self.redis, self.name, "restarting", self.last_error)
        self.stop.wait(pause)

    def _standby(self) -> None:
        self.state = "standby"
        metrics.ACTIVE.labels(self.name).set(0)
        metrics.forget_active(self.name, queues_of(self.collection))
        heartbeat.write_not_streaming(self.redis, self.name, "standby", self.last_error,
                                      owner=False)
        self.stop.wait(max(0.5, self.settings.watcher.lease_seconds / 5))

    # -- the stream ---------------------------------------------------------------------------
    def _stream(self) -> None:
        token = None if self._fresh_start else self.record.token()
        stream = self._open(token)
        try:
            if token is None:
                # Bootstrap or history lost: the stream is open and its position saved before
                # the resync starts copying, so every later change is streamed: no gap.
                reason = self._fresh_start or "bootstrap: no checkpoint yet"
                self.checkpoints.note(stream.resume_token)
                self.checkpoints.save(force=True)
                self.resyncs.begin(reason, environments=self._fresh_start is not None)
                self._fresh_start = None
            StreamLoop(self, stream).run()
        except OperationFailure as error:
            if error.code in HISTORY_LOST_CODES:
                raise HistoryLost(f"resume token no longer usable (code {error.code})") from None
            raise
        finally:
            stream.close()

    def _open(self, token: Any) -> Any:
        """The change stream, from `token` (None: from now)."""
        try:
            return self.source.watch(
                STREAM_PROJECTION, resume_after=token,
                batch_size=self.settings.watcher.batch_max_size,
                max_await_time_ms=STREAM_AWAIT_MS,
                **(self.indexes.stream_options() if self.indexes else {}),
            )
        except OperationFailure as error:
            if self.indexes is not None and self.indexes.events_refused(error):
                raise  # the restart opens the stream without DDL events
            if token is not None and error.code in UNUSABLE_TOKEN_CODES:
                raise HistoryLost(f"resume token no longer usable (code {error.code})") from None
            raise

    # -- what the loop shares -------------------------------------------------------------------
    def set_epoch(self) -> None:
        """Mark Redis as ours: the key's disappearance means it was wiped (`protocol.names`)."""
        self.redis.set(epoch_key(self.name), self.run_id)

    def heartbeat(self, window: InflightWindow) -> None:
        """The heartbeat: the Redis record and the gauges, with the dead letters counted and the
        oplog window read on their own periods, in the background: this runs on the stream
        loop, which must never wait for a slow read of MongoDB (it would stop reading and
        flushing meanwhile), so it publishes the last values those reads returned."""
        monotonic, now = time.monotonic(), time.time()
        if self.timers.due("dead_letters", monotonic):
            self._dead_letters.ask()
        self._oplog_seconds.ask()  # at most every `oplog_check_seconds`, for all collections
        reading = heartbeat.Reading(
            owner=self.run_id, state=self.state, unapplied=window.unapplied,
            groups=window.groups, oldest_pending=window.oldest_pending_change(),
            last_error=self.last_error, dead_letters=self._dead_letters.last or 0,
            idle_at=self.idle_at,
            saved_at=self.checkpoints.saved_at,
        )
        heartbeat.write_record(self.redis, self.name, reading, now)
        heartbeat.set_gauges(self.name, reading, now)
        heartbeat.set_oplog_headroom(self.name, self._oplog_seconds.last, reading.saved_at, now)
        heartbeat.set_queue_depths(self.redis, queues_of(self.collection))

    def _count_dead_letters(self) -> int:
        """The open dead letters, counted in the background; settling the signal first lets
        the applies of a collection whose dead letters are all resolved skip their clear
        (`state.dead_letters`)."""
        store = DeadLetterStore(self.state_db)
        store.settle(self.name)
        return store.count(self.name)

    def _release_quietly(self) -> None:
        with contextlib.suppress(PyMongoError):
            self.record.release()
