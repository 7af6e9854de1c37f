"""What the active watcher of a collection tells the world once a second, one job per function.

- `write_record`: the watcher's hash in Redis (`protocol.names.watcher_key`), read by
  `stagesync status` and expiring 30 s after the last heartbeat (so a dead watcher shows down);
- `set_gauges`: the Prometheus gauges of the in-flight window and the checkpoint;
- `set_oplog_headroom`: production's oplog window minus the checkpoint's age;
- `set_queue_depths`: the depth of each of the collection's queues;
- `write_not_streaming`: the record of a watcher that stands by or restarts.

The figures come in as a `Reading` taken by the watcher; reading MongoDB (dead letters, the oplog
window) is the caller's, on its own periods.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import redis
from stagesync.deployments.broker import queue_depth
from stagesync.protocol.names import watcher_key
from stagesync.watcher import metrics

RECORD_TTL_SECONDS = 30


@dataclass(frozen=True)
class Reading:
    """The watcher's figures at one heartbeat."""

    owner: str
    state: str
    unapplied: int  # changes in flight
    groups: int  # flush groups in flight
    oldest_pending: datetime | None  # when the oldest change not yet applied happened
    last_error: str | None
    dead_letters: int
    idle_at: float  # wall-clock time everything read so far was last applied
    saved_at: float  # wall-clock time the checkpoint was last saved (0: not yet)


def write_record(client: redis.Redis, collection: str, reading: Reading, now: float) -> None:
    oldest = reading.oldest_pending
    fields = {
        "owner": reading.owner, "state": reading.state, "heartbeat": now,
        "unapplied": reading.unapplied, "groups": reading.groups,
        "oldest_pending": oldest.timestamp() if oldest else "",
        "last_error": reading.last_error or "", "dead_letters": reading.dead_letters,
        "idle_at": reading.idle_at,
    }
    key = watcher_key(collection)
    with client.pipeline(transaction=False) as pipe:
        pipe.hset(key, mapping=fields)
        pipe.expire(key, RECORD_TTL_SECONDS)
        pipe.execute()


def set_gauges(collection: str, reading: Reading, now: float) -> None:
    oldest = reading.oldest_pending
    metrics.STREAMING.labels(collection).set(1)
    metrics.LAG.labels(collection).set(max(0.0, now - oldest.timestamp()) if oldest else 0)
    metrics.UNAPPLIED.labels(collection).set(reading.unapplied)
    if reading.saved_at:
        metrics.CHECKPOINT_AGE.labels(collection).set(now - reading.saved_at)
    metrics.DEAD_LETTERS.labels(collection).set(reading.dead_letters)


def set_oplog_headroom(collection: str, oplog_seconds: float | None, saved_at: float,
                       now: float) -> None:
    """Left unset while the oplog window is unknown or no checkpoint was saved yet."""
    if oplog_seconds is not None and saved_at:
        metrics.OPLOG_HEADROOM.labels(collection).set(oplog_seconds - (now - saved_at))


def set_queue_depths(client: redis.Redis, queues: Iterable[str]) -> None:
    for queue in queues:
        metrics.QUEUE_DEPTH.labels(queue).set(queue_depth(client, queue))


def write_not_streaming(client: redis.Redis, collection: str, state: str,
                        last_error: str | None, owner: bool = True) -> None:
    """A watcher that stands by or restarts says so, quietly: Redis may be down too. A
    standby (`owner` False) writes only where no active watcher keeps the record."""
    metrics.STREAMING.labels(collection).set(0)
    try:
        key = watcher_key(collection)
        if owner or not client.hget(key, "owner"):
            client.hset(key, mapping={"state": state, "heartbeat": time.time(),
                                      "last_error": last_error or ""})
            client.expire(key, RECORD_TTL_SECONDS)
    except redis.RedisError:
        pass
