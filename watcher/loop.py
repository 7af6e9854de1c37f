"""One open change stream of a collection, read until the watcher stops, in named steps.

Shaped like arq's worker (`_poll_iteration`, `start_jobs`, `run_job`): `run` repeats
`_poll_iteration`, which does the periodic duties that are due (`_housekeeping`), then one of:
- `_backpressure`: too much is in flight; nothing is read (the stream waits in the oplog);
- `_pace`: the workers are busy and the last getMore was recent; nothing is read yet;
- `_await_done`: the workers are busy, the stream has nothing new and every buffered change is
  held back; what the loop waits for is a done report, so it waits on Redis, not production;
- `_read_one`: one `try_next()`, and the event is taken (`_take`) or the stream idles
  (`_on_idle`).
Each of them flushes the micro-batcher when it is due (`_flush`). The stream is read with
`try_next()` because a blocking iterator could not notice a stop request.

The stream's token is read only when a batch is flushed or the stream idles: pymongo
deep-copies it on every read of `resume_token`. Between reads of the stream it stays the token
after the last event read, which is what a flush needs. What a held change needs, the token just
before it, is the previous event's own `_id` (`self.previous`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from stagesync.deployments.broker import queue_depth
from stagesync.protocol.names import done_key, epoch_key, parse_done_report, stats_key
from stagesync.protocol.parts import WHOLE
from stagesync.protocol.routing import queue_for, queues_of
from stagesync.state.checkpoints import LeaseLost
from stagesync.tasks.enqueue import publish_apply
from stagesync.watcher import metrics
from stagesync.watcher.batcher import MicroBatcher, least_batch
from stagesync.watcher.events import Change, HistoryEnded, IndexChanged, Malformed, classify
from stagesync.watcher.inflight import BatchInFlight, InflightWindow

if TYPE_CHECKING:
    from stagesync.watcher.stream import CollectionWatcher

log = logging.getLogger("stagesync.watcher")

DONE_DRAIN = 1000  # done reports read per round trip
SHUTDOWN_GRACE_SECONDS = 5.0
# The duties of one stream, due at once when a stream (re)starts (see `watcher.timers`).
STREAM_DUTIES = ("housekeeping", "lease", "heartbeat", "resync", "fetch")
# How long one getMore may wait for a change (`maxAwaitTimeMS`): the stream opens with the
# first; each read then waits until the loop's next duty is due (`_await_seconds`), at most
# the second. MongoDB answers a waiting getMore as soon as a change arrives, so a long wait
# costs no latency, and an idle stream costs a getMore a second instead of ten.
STREAM_AWAIT_MS = 100
IDLE_AWAIT_MS = 1000


class HistoryLost(Exception):
    """The stream cannot continue from the checkpoint; staging needs a full resync."""


class StreamLoop:
    def __init__(self, watcher: CollectionWatcher, stream: Any) -> None:
        self.watcher = watcher
        self.stream = stream
        self.config = config = watcher.settings.watcher
        self.name = watcher.name
        self.redis = watcher.redis
        self.stop = watcher.stop
        self.timers = watcher.timers
        self.timers.reset(*STREAM_DUTIES)
        self.checkpoints = watcher.checkpoints
        self.window = InflightWindow()
        self.batcher = MicroBatcher(
            partial(queue_for, watcher.collection), config.batch_max_size,
            config.batch_max_wait_ms / 1000, config.busy_batch_wait_ms / 1000,
        )
        self.fetch_gap = config.stream_fetch_gap_ms / 1000
        self.idle_sleep = config.idle_sleep_ms / 1000
        self.previous: Mapping[str, Any] | None = stream.resume_token
        # When the collection's queues were last seen holding messages (see `_republish_lost`).
        self.queues_busy_at = 0.0
        # Whether messages wait in the collection's queues: read at housekeeping while the
        # workers are busy, set by every publish (see `batcher.least_batch`).
        self.queue_waiting = False
        # Whether the last getMore found nothing new (see `_await_done`).
        self.caught_up = False

    def run(self) -> None:
        self._start()
        while not self.stop.is_set():
            self._poll_iteration()
        self._drain_before_exit()

    def _start(self) -> None:
        watcher = self.watcher
        watcher.set_epoch()
        watcher.resyncs.replay_held_schema_versions()
        if watcher.indexes is not None:
            watcher.indexes.start()
        watcher.state = "streaming"

    # -- one iteration -----------------------------------------------------------------------
    def _poll_iteration(self) -> None:
        now = time.monotonic()
        if self.timers.due("housekeeping", now):
            self._housekeeping(now)
        busy = self._busy()
        if self._window_full():
            self._backpressure(now, busy)
            return
        self.watcher.state = "streaming"
        if busy and self.caught_up and self.batcher.only_kept:
            self._await_done(now)
        elif busy and not self.timers.ready("fetch", now):
            self._pace(now, busy)
        else:
            self._read_one(now, busy)

    def _window_full(self) -> bool:
        """Too many changes, or too many groups, in flight (or buffered)."""
        return (self.window.unapplied + self.batcher.size >= self.config.max_unapplied
                or self.window.groups >= self.config.max_inflight_groups)

    def _backpressure(self, now: float, busy: bool) -> None:
        """Too much in flight: read nothing; the stream waits in the oplog. Publish only
        while the window has room for another group."""
        if self.window.groups < self.config.max_inflight_groups:
            self._flush_if_due(now, busy, stream_idle=True)
        self.watcher.state = "backpressure"
        self.stop.wait(self.idle_sleep)

    def _pace(self, now: float, busy: bool) -> None:
        """Pacing (`stream_fetch_gap_ms`), only while the workers are busy, when changes
        gather for `busy_batch_wait_ms` anyway: the rest of the last fetch waits in the cursor
        until the gap has passed, and what gathers in the oplog meanwhile comes with the next
        fetch, one round trip for many changes."""
        self._flush_if_due(now, busy, stream_idle=False)
        self.stop.wait(self.timers.left("fetch", now))

    def _await_done(self, now: float) -> None:
        """Wait for a done report (a blocking pop on Redis), at most until a duty is due.

        Only a done report can release a held change or free a worker, and only it, or a
        new change, can give the loop something to do. Waiting in a getMore instead meant
        one production round trip per housekeeping (0.2 s) for as long as the workers took
        to drain a burst: issue 29 measured the `orders` stream so at 80 getMores per 1,000
        changes with ten environments, against 1.2 reads of documents.

        The stream is read again only after a report: a wait that times out (for the
        heartbeat, the lease or a resync check) goes back to waiting. A change written
        meanwhile could not be published before a worker is free anyway, and one getMore
        after the report brings all of them; reading once a second while ten environments
        made every apply slow cost a getMore per second of the drain."""
        timers = self.timers
        wait = min(timers.left("heartbeat", now), timers.left("lease", now),
                   timers.left("resync", now), IDLE_AWAIT_MS / 1000)
        popped = self.redis.blpop([done_key(self.name)], timeout=max(wait, 0.01))
        if popped is None:
            return
        self.window.part_done(*parse_done_report(popped[1]))
        self._drain_done_reports()  # the others, and the low watermark
        self.caught_up = False  # read the stream once before waiting again
        self._flush_if_due(time.monotonic(), self._busy(), stream_idle=True)

    def _busy(self) -> bool:
        return self.window.batches_in_flight >= self.config.max_inflight_batches

    def _read_one(self, now: float, busy: bool) -> None:
        commands = self.watcher.production.commands
        fetched = commands.get_mores() if busy and self.fetch_gap else None
        set_stream_await(self.stream, self._await_seconds(now, busy))
        event = self.stream.try_next()
        if fetched is not None and event is not None and commands.get_mores() != fetched:
            self.timers.hold_until("fetch", time.monotonic() + self.fetch_gap)
        self.caught_up = event is None
        if event is None:
            self._on_idle(now, busy)
            return
        self._take(event, now)
        self._flush_if_due(now, busy, stream_idle=False)

    def _await_seconds(self, now: float, busy: bool) -> float:
        """How long the next getMore may wait: until the loop has something else to do. With
        changes buffered, that is their flush, or the housekeeping whose done reports may
        release the held ones; with nothing buffered, the heartbeat or the lease. (A fixed
        100 ms cost production ten getMores a second per collection for as long as the
        workers took to drain a burst: issue 29 measured 7,491 of a burst's 7,779 production
        messages so, with ten environments slowing the drain.)"""
        timers = self.timers
        if self.batcher.size:
            left = min(self.batcher.wait_left(now, busy), timers.left("housekeeping", now))
        else:
            left = min(timers.left("heartbeat", now), timers.left("lease", now))
        return min(left, IDLE_AWAIT_MS / 1000)

    def _on_idle(self, now: float, busy: bool) -> None:
        if self.batcher.due(now, stream_idle=True, busy=busy):
            self._flush(now, busy)
        elif self.window.empty and self.batcher.size == 0:
            # Idle: the post-batch token moves on even without events, so a quiet
            # collection's checkpoint never falls off the oplog.
            self.checkpoints.note(self.stream.resume_token)
            self.watcher.idle_at = time.time()  # everything read so far is applied
        self.stop.wait(self.idle_sleep)

    def _take(self, event: Mapping[str, Any], now: float) -> None:
        action = classify(event)
        if isinstance(action, Change):
            self.batcher.add(action, now, self.previous,
                             None if action.happened_at else datetime.now(UTC))
        elif isinstance(action, HistoryEnded):
            raise HistoryLost(action.reason)
        elif isinstance(action, IndexChanged) and self.watcher.indexes is not None:
            self.watcher.indexes.poke()
        elif isinstance(action, Malformed):
            log.error("skipping malformed change event",
                      extra={"collection": self.name, "reason": action.reason})
        self.previous = event.get("_id", self.previous)

    # -- publishing --------------------------------------------------------------------------
    def _flush_if_due(self, now: float, busy: bool, stream_idle: bool) -> None:
        if self.batcher.due(now, stream_idle=stream_idle, busy=busy):
            self._flush(now, busy)

    def _flush(self, now: float, busy: bool) -> None:
        """Publish what is buffered as one group. While the workers are busy, a change of a
        document that a batch in flight holds waits for that batch (see `watcher.batcher`):
        changes gather then anyway. With workers that have room it goes at once, where the
        wait would be lag: two applies of one document then rarely overlap, and the later one
        re-plans."""
        hold = busy and self.config.hold_changes_in_flight
        least = least_batch(not busy, self.queue_waiting, self.config.batch_max_size)
        drained = self.batcher.drain(self.stream.resume_token,
                                     held=self.window.holds if hold else None, now=now,
                                     least=least)
        seq_prefix = f"{self.watcher.run_id}:{time.monotonic_ns()}"
        batches = {f"{seq_prefix}:{i}": (queue, changes) for i, (queue, changes)
                   in enumerate(drained.batches(self.config.batch_max_size))}
        if batches:
            self.window.open_group(drained.token, batches, time.monotonic(), drained.oldest)
            self.queue_waiting = True
        for batch_id, (queue, changes) in batches.items():
            publish_apply(self.watcher.celery, queue, self.name, batch_id, WHOLE, changes)
        enqueued = sum(len(changes) for _, changes in batches.values())
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(stats_key(self.name), "read", drained.seen)
            pipe.hincrby(stats_key(self.name), "enqueued", enqueued)
            pipe.execute()
        metrics.READ.labels(self.name).inc(drained.seen)
        metrics.ENQUEUED.labels(self.name).inc(enqueued)

    def _republish(self, batches: list[BatchInFlight], why: str) -> None:
        """Re-publish: publish again, whole and unchanged, batches whose done reports never
        came (their messages were lost). The applies are idempotent."""
        if not batches:
            return
        log.warning("re-publishing in-flight batches",
                    extra={"collection": self.name, "batches": len(batches), "reason": why})
        metrics.REPUBLISHED.labels(self.name).inc(len(batches))
        for batch in batches:
            batch.parts_done.clear()
            publish_apply(self.watcher.celery, batch.queue, self.name, batch.batch_id, WHOLE,
                          batch.changes)

    # -- housekeeping ------------------------------------------------------------------------
    def _housekeeping(self, now: float) -> None:
        if self._drain_done_reports():
            self.caught_up = False  # a report may have released held changes: read, flush
        self._look_at_queues()
        self.checkpoints.save()
        if self.timers.due("lease", now) and not self.watcher.record.renew():
            raise LeaseLost()
        if self.timers.due("heartbeat", now):
            self._notice_wiped_redis()
            self.watcher.heartbeat(self.window)
        self._republish_lost(now)
        if self.timers.due("resync", now):
            self.watcher.resyncs.watch_pending()
            self.watcher.resyncs.record_figures()
            self.watcher.resyncs.replay_waiting_environment_letters()

    def _drain_done_reports(self) -> int:
        """Read the workers' done reports, move the low watermark; how many were read."""
        reports = self.redis.lpop(done_key(self.name), DONE_DRAIN) or []
        for report in reports:
            self.window.part_done(*parse_done_report(report))
        self.checkpoints.note(self.window.advance())
        return len(reports)

    def _look_at_queues(self) -> None:
        """Whether messages wait in the queues; asked only while the workers are busy (with
        room, every batch is published whatever it holds)."""
        if self.window.batches_in_flight >= self.config.max_inflight_batches:
            self.queue_waiting = any(queue_depth(self.redis, queue)
                                     for queue in queues_of(self.watcher.collection))

    def _notice_wiped_redis(self) -> None:
        """Our epoch key gone: Redis was wiped, with the queues and the done reports."""
        if not self.redis.exists(epoch_key(self.name)):
            self._republish(self.window.incomplete(), "redis was wiped")
            self.watcher.set_epoch()

    def _republish_lost(self, now: float) -> None:
        """A batch is lost when it has not reported done `timeout` after its queue was last
        seen holding messages: while workers are behind or away it is only waiting, and a copy
        would grow the queue past the backpressure bound and be applied twice."""
        timeout = self.config.inflight_timeout_seconds
        if not self.window.any_expired(now, timeout, since=self.queues_busy_at):
            return
        if any(queue_depth(self.redis, queue) for queue in queues_of(self.watcher.collection)):
            self.queues_busy_at = now
        else:
            self._republish(self.window.expired(now, timeout, since=self.queues_busy_at),
                            f"no done report within {timeout:.0f}s")

    def _drain_before_exit(self) -> None:
        """On stop: give in-flight work a moment to finish so the checkpoint can move."""
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        while not self.window.empty and time.monotonic() < deadline:
            if not self._drain_done_reports():
                time.sleep(0.05)
        self.checkpoints.save(force=True)


def set_stream_await(stream: Any, seconds: float) -> None:
    """Make the change stream's next getMore wait at most `seconds` (at least 1 ms).

    Written here because pymongo fixes `maxAwaitTimeMS` when the stream is opened and offers
    no way to change it per read; its cursor keeps it in `_max_await_time_ms`, which every
    getMore sends. A stream resumed by pymongo gets a new cursor with the opening value, and
    the next call sets it again. A stream without a cursor (a scripted one in tests) is left
    as it is.
    """
    cursor = getattr(stream, "_cursor", None)
    if cursor is not None:
        cursor._max_await_time_ms = max(1, int(seconds * 1000))
