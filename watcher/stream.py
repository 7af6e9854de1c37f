"""One collection's watcher: lease, change stream, micro-batches, checkpoint.

One stream per collection, not one per database: each collection has its own checkpoint,
lease, backpressure and history-lost recovery (a resync of that collection only), and the
collections of one database can be split over several watcher processes. A database stream
would share one resume token among collections that move at different speeds, so one slow
queue would hold every other collection's checkpoint back. The price is one cursor per
collection on production.

The loop reads with `try_next()` (a blocking iterator cannot notice a stop request), so
between reads it can drain done reports, move and persist
the checkpoint, renew its lease, notice a wiped Redis, re-publish work that timed out, and
stop reading when too much is in flight (backpressure: the stream simply waits in the oplog).

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
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from celery import Celery
from pymongo.database import Database
from pymongo.errors import OperationFailure, PyMongoError
from stagesync.deployments.broker import queue_depth
from stagesync.deployments.production import ProductionReader, ReadOnlyCollection
from stagesync.protocol.names import (
    done_key,
    epoch_key,
    parse_done_report,
    stats_key,
    watcher_key,
)
from stagesync.protocol.routing import partition_of, queues_of
from stagesync.settings.collection import CollectionSettings
from stagesync.settings.model import Settings
from stagesync.state.checkpoints import LeaseLost, WatcherRecord
from stagesync.state.dead_letters import DeadLetterStore
from stagesync.tasks.enqueue import publish_apply
from stagesync.watcher import metrics
from stagesync.watcher.batcher import MicroBatcher
from stagesync.watcher.events import (
    STREAM_PROJECTION,
    Change,
    HistoryEnded,
    IndexChanged,
    Malformed,
    classify,
)
from stagesync.watcher.index_follower import IndexFollower
from stagesync.watcher.inflight import InflightWindow
from stagesync.watcher.resyncs import ResyncSupervisor

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
DONE_DRAIN = 1000
SHUTDOWN_GRACE_SECONDS = 5.0
DEAD_LETTER_COUNT_SECONDS = 10.0
# How often the oplog window is read for the headroom gauge (two small reads of production).
OPLOG_CHECK_SECONDS = 30.0
# How long one getMore may wait for new changes on servers that honour it: bounds the latency
# of a change that arrives while a partial batch is buffered.
STREAM_AWAIT_MS = 100


class HistoryLost(Exception):
    """The stream cannot continue from the checkpoint; staging needs a full resync."""


@dataclass(frozen=True)
class WatcherLinks:
    """What every collection's watcher of one process shares: the production reader (for the
    oplog window), the state database, Redis, the publishing Celery app, the run id that holds
    the leases, and the stop request."""

    production: ProductionReader
    state_db: Database[dict[str, Any]]
    redis: redis.Redis
    celery: Celery
    run_id: str
    stop: threading.Event


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
        self.record = WatcherRecord(self.state_db, self.name, self.run_id,
                                    settings.watcher.lease_seconds)
        self.resyncs = ResyncSupervisor(settings, collection, self.record, links.state_db,
                                        links.celery)
        self.last_error: str | None = None
        self.state = "starting"
        self._fresh_start: str | None = None  # why the next stream must start from now
        self._pending_token: Mapping[str, Any] | None = None
        self._saved_token: Mapping[str, Any] | None = None
        self._next_save = 0.0
        self._saved_at = 0.0
        self._idle_at = 0.0
        self._queues_busy_at = 0.0
        self._dead_letters = 0
        self._dead_letters_at = 0.0
        self._oplog_seconds: float | None = None
        self._oplog_at = 0.0
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
                log.critical(
                    "change stream history lost: staging may have missed changes; starting a "
                    "full resync and streaming again from now",
                    extra={"collection": self.name, "reason": str(lost)},
                )
                self.last_error = f"history lost: {lost}"
                metrics.HISTORY_LOST.labels(self.name).inc()
                self._fresh_start = f"history lost: {lost}"
                failures = 0
            except Exception as error:
                failures += 1
                self.last_error = f"{type(error).__name__}: {str(error)[:300]}"
                pause = min(30.0, 0.5 * 2 ** min(failures, 6)) * random.uniform(0.5, 1.0)
                log.error("stream failed, restarting from the checkpoint",
                          extra={"collection": self.name, "error": self.last_error,
                                 "retry_in": round(pause, 2)})
                self._heartbeat_quietly(state="restarting")
                self.stop.wait(pause)
        metrics.ACTIVE.labels(self.name).set(0)
        self._release_quietly()

    def _standby(self) -> None:
        self.state = "standby"
        metrics.ACTIVE.labels(self.name).set(0)
        metrics.forget_active(self.name, queues_of(self.collection))
        self._heartbeat_quietly(state="standby", owner=False)
        self.stop.wait(max(0.5, self.settings.watcher.lease_seconds / 5))

    # -- the stream ---------------------------------------------------------------------------
    def _stream(self) -> None:
        config = self.settings.watcher
        token = None if self._fresh_start else self.record.token()
        try:
            stream = self.source.watch(
                STREAM_PROJECTION, resume_after=token, batch_size=config.batch_max_size,
                max_await_time_ms=STREAM_AWAIT_MS,
                **(self.indexes.stream_options() if self.indexes else {}),
            )
        except OperationFailure as error:
            if self.indexes is not None and self.indexes.events_refused(error):
                raise  # the restart opens the stream without DDL events
            if token is not None and error.code in UNUSABLE_TOKEN_CODES:
                raise HistoryLost(f"resume token no longer usable (code {error.code})") from None
            raise
        try:
            if token is None:
                # Bootstrap or history lost: the stream is open and its position saved before
                # the resync starts copying, so every later change is streamed: no gap.
                reason = self._fresh_start or "bootstrap: no checkpoint yet"
                self._note_checkpoint(stream.resume_token)
                self._save_checkpoint(force=True)
                self.resyncs.begin(reason)
                self._fresh_start = None
            self._loop(stream)
        except OperationFailure as error:
            if error.code in HISTORY_LOST_CODES:
                raise HistoryLost(f"resume token no longer usable (code {error.code})") from None
            raise
        finally:
            stream.close()

    def _loop(self, stream: Any) -> None:
        config = self.settings.watcher
        window = InflightWindow()
        queues, partitions = queues_of(self.collection), self.collection.partitions
        batcher = MicroBatcher(
            lambda pid: queues[partition_of(pid, partitions)], config.batch_max_size,
            config.batch_max_wait_ms / 1000, config.busy_batch_wait_ms / 1000,
        )
        self._set_epoch()
        self.resyncs.replay_held_schema_versions()
        if self.indexes is not None:
            self.indexes.start()
        self.state = "streaming"
        clock = _Clocks()
        commands = self.production.commands
        fetch_gap = config.stream_fetch_gap_ms / 1000
        # The stream's token is read only when a batch is flushed or the stream idles: pymongo
        # deep-copies it on every read of `resume_token`. Between reads of the stream it stays
        # the token after the last event read, which is what a flush needs. What a held change
        # needs, the token just before it, is the previous event's own `_id`.
        previous: Mapping[str, Any] | None = stream.resume_token
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= clock.housekeeping:
                clock.housekeeping = now + HOUSEKEEPING_SECONDS
                self._housekeeping(window, clock, now)
            busy = window.batches_in_flight >= config.max_inflight_batches
            if window.unapplied + batcher.size >= config.max_unapplied:
                if batcher.due(now, stream_idle=True, busy=busy):
                    self._flush(batcher, window, stream.resume_token, now, busy)
                self.state = "backpressure"
                self.stop.wait(config.idle_sleep_ms / 1000)
                continue
            self.state = "streaming"
            if busy and now < clock.next_fetch:
                # Pacing (`stream_fetch_gap_ms`), only while the workers are busy, when changes
                # gather for `busy_batch_wait_ms` anyway: the rest of the last fetch waits in
                # the cursor until the gap has passed, and what gathers in the oplog meanwhile
                # comes with the next fetch, one round trip for many changes.
                if batcher.due(now, stream_idle=False, busy=busy):
                    self._flush(batcher, window, stream.resume_token, now, busy)
                self.stop.wait(clock.next_fetch - now)
                continue
            fetched = commands.get_mores() if busy and fetch_gap else None
            event = stream.try_next()
            if fetched is not None and event is not None and commands.get_mores() != fetched:
                clock.next_fetch = time.monotonic() + fetch_gap
            if event is None:
                if batcher.due(now, stream_idle=True, busy=busy):
                    self._flush(batcher, window, stream.resume_token, now, busy)
                elif window.empty and batcher.size == 0:
                    # Idle: the post-batch token moves on even without events, so a quiet
                    # collection's checkpoint never falls off the oplog.
                    self._note_checkpoint(stream.resume_token)
                    self._idle_at = time.time()  # everything read so far is applied
                self.stop.wait(config.idle_sleep_ms / 1000)
                continue
            action = classify(event)
            if isinstance(action, Change):
                batcher.add(action, now, previous,
                            None if action.happened_at else datetime.now(UTC))
            elif isinstance(action, HistoryEnded):
                raise HistoryLost(action.reason)
            elif isinstance(action, IndexChanged) and self.indexes is not None:
                self.indexes.poke()
            elif isinstance(action, Malformed):
                log.error("skipping malformed change event",
                          extra={"collection": self.name, "reason": action.reason})
            previous = event.get("_id", previous)
            if batcher.due(now, stream_idle=False, busy=busy):
                self._flush(batcher, window, stream.resume_token, now, busy)
        self._drain_before_exit(window, clock)

    def _flush(
        self,
        batcher: MicroBatcher,
        window: InflightWindow,
        position: Mapping[str, Any] | None,
        now: float,
        busy: bool,
    ) -> None:
        """Publish what is buffered. While the workers are busy, a change of a document that a
        batch in flight holds waits for that batch (see `watcher.batcher`): changes gather
        then anyway. With workers that have room it goes at once, where the wait would be
        lag: two applies of one document then rarely overlap, and the later one re-plans."""
        hold = busy and self.settings.watcher.hold_changes_in_flight
        drained = batcher.drain(position, held=window.holds if hold else None, now=now)
        per_queue, seen = drained.per_queue, drained.seen
        seq_prefix = f"{self.run_id}:{time.monotonic_ns()}"
        batches = {f"{seq_prefix}:{i}": (queue, changes)
                   for i, (queue, changes) in enumerate(per_queue.items())}
        if batches:
            window.open_group(drained.token, batches, time.monotonic(), drained.oldest)
        for batch_id, (queue, changes) in batches.items():
            publish_apply(self.celery, queue, self.name, batch_id, "", changes)
        enqueued = sum(len(changes) for _, changes in batches.values())
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(stats_key(self.name), "read", seen)
            pipe.hincrby(stats_key(self.name), "enqueued", enqueued)
            pipe.execute()
        metrics.READ.labels(self.name).inc(seen)
        metrics.ENQUEUED.labels(self.name).inc(enqueued)

    # -- housekeeping ----------------------------------------------------------------------
    def _housekeeping(self, window: InflightWindow, clock: _Clocks, now: float) -> None:
        reports = self.redis.lpop(done_key(self.name), DONE_DRAIN) or []
        for report in reports:
            window.part_done(*parse_done_report(report))
        self._note_checkpoint(window.advance())
        self._save_checkpoint()
        if now >= clock.lease:
            clock.lease = now + self.settings.watcher.lease_seconds / 3
            if not self.record.renew():
                raise LeaseLost()
        if now >= clock.heartbeat:
            clock.heartbeat = now + HEARTBEAT_SECONDS
            if not self.redis.exists(epoch_key(self.name)):
                self._republish(window.incomplete(), "redis was wiped")
                self._set_epoch()
            self._heartbeat(window)
        timeout = self.settings.watcher.inflight_timeout_seconds
        # A batch is lost when it has not reported done `timeout` after its queue was last
        # seen holding messages: while workers are behind or away it is only waiting, and a
        # copy would grow the queue past the backpressure bound and be applied twice.
        if window.any_expired(now, timeout, since=self._queues_busy_at):
            if any(queue_depth(self.redis, queue) for queue in queues_of(self.collection)):
                self._queues_busy_at = now
            else:
                self._republish(window.expired(now, timeout, since=self._queues_busy_at),
                                f"no done report within {timeout:.0f}s")
        if now >= clock.resync:
            clock.resync = now + RESYNC_CHECK_SECONDS
            self.resyncs.watch_pending()
            self.resyncs.record_figures()

    def _republish(self, batches: list[Any], why: str) -> None:
        if not batches:
            return
        log.warning("re-publishing in-flight batches",
                    extra={"collection": self.name, "batches": len(batches), "reason": why})
        metrics.REPUBLISHED.labels(self.name).inc(len(batches))
        for batch in batches:
            batch.parts_done.clear()
            publish_apply(self.celery, batch.queue, self.name, batch.batch_id, "", batch.changes)

    def _note_checkpoint(self, token: Mapping[str, Any] | None) -> None:
        if token is not None:
            self._pending_token = token

    def _save_checkpoint(self, force: bool = False) -> None:
        """Persist the newest allowed token, at most every `checkpoint_interval_seconds`."""
        token = self._pending_token
        if token is None or token == self._saved_token:
            return
        now = time.monotonic()
        if not force and now < self._next_save:
            return
        if not self.record.save_checkpoint(token):
            raise LeaseLost()
        self._saved_at = time.time()
        self._saved_token = token
        self._next_save = now + self.settings.watcher.checkpoint_interval_seconds

    def _drain_before_exit(self, window: InflightWindow, clock: _Clocks) -> None:
        """On stop: give in-flight work a moment to finish so the checkpoint can move."""
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        while not window.empty and time.monotonic() < deadline:
            reports = self.redis.lpop(done_key(self.name), DONE_DRAIN) or []
            for report in reports:
                window.part_done(*parse_done_report(report))
            self._note_checkpoint(window.advance())
            if not reports:
                time.sleep(0.05)
        self._save_checkpoint(force=True)

    # -- Redis-side state --------------------------------------------------------------------
    def _set_epoch(self) -> None:
        self.redis.set(epoch_key(self.name), self.run_id)

    def _heartbeat(self, window: InflightWindow) -> None:
        now = time.time()
        oldest = window.oldest_pending_change()
        if now >= self._dead_letters_at:
            self._dead_letters_at = now + DEAD_LETTER_COUNT_SECONDS
            self._dead_letters = DeadLetterStore(self.state_db).count(self.name)
        fields = {
            "owner": self.run_id, "state": self.state, "heartbeat": now,
            "unapplied": window.unapplied, "groups": window.groups,
            "oldest_pending": oldest.timestamp() if oldest else "",
            "last_error": self.last_error or "", "dead_letters": self._dead_letters,
            "idle_at": self._idle_at,
        }
        key = watcher_key(self.name)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, 30)
            pipe.execute()
        metrics.STREAMING.labels(self.name).set(1)
        metrics.LAG.labels(self.name).set(max(0.0, now - oldest.timestamp()) if oldest else 0)
        metrics.UNAPPLIED.labels(self.name).set(window.unapplied)
        if self._saved_at:
            metrics.CHECKPOINT_AGE.labels(self.name).set(now - self._saved_at)
        metrics.DEAD_LETTERS.labels(self.name).set(self._dead_letters)
        if now >= self._oplog_at:
            self._oplog_at = now + OPLOG_CHECK_SECONDS
            self._oplog_seconds = self.production.oplog_window().seconds
        if self._oplog_seconds is not None and self._saved_at:
            metrics.OPLOG_HEADROOM.labels(self.name).set(
                self._oplog_seconds - (now - self._saved_at))
        for queue in queues_of(self.collection):
            metrics.QUEUE_DEPTH.labels(queue).set(queue_depth(self.redis, queue))

    def _heartbeat_quietly(self, state: str, owner: bool = True) -> None:
        metrics.STREAMING.labels(self.name).set(0)
        try:
            key = watcher_key(self.name)
            if owner or not self.redis.hget(key, "owner"):
                self.redis.hset(key, mapping={"state": state, "heartbeat": time.time(),
                                              "last_error": self.last_error or ""})
                self.redis.expire(key, 30)
        except redis.RedisError:
            pass

    def _release_quietly(self) -> None:
        with contextlib.suppress(PyMongoError):
            self.record.release()


@dataclass
class _Clocks:
    """When each periodic duty of the loop is next due (monotonic seconds)."""

    housekeeping: float = 0.0
    lease: float = 0.0
    heartbeat: float = 0.0
    resync: float = 0.0
    next_fetch: float = 0.0  # no stream read before this (pacing of getMores)
