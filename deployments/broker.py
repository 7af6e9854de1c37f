"""What the broker holds: the depth of a Celery queue in Redis, read by the watcher (to know
whether the workers are busy) and by `stagesync status`."""

from __future__ import annotations

import redis
from stagesync.protocol.routing import PRIORITY_SUFFIXES


def queue_depth(client: redis.Redis, queue: str) -> int:
    """Messages waiting in a queue (reserved, unacknowledged ones are not counted)."""
    with client.pipeline(transaction=False) as pipe:
        for suffix in PRIORITY_SUFFIXES:
            pipe.llen(queue + suffix)
        return int(sum(pipe.execute()))
