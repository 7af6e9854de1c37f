"""What the broker holds: the depth of a Celery queue in Redis, read by the watcher (to know
whether the workers are busy) and by `stagesync status`; and the change signals of the stores
that every worker caches."""

from __future__ import annotations

import uuid

import redis
from stagesync.protocol.routing import PRIORITY_SUFFIXES


def queue_depth(client: redis.Redis, queue: str) -> int:
    """Messages waiting in a queue (reserved, unacknowledged ones are not counted)."""
    with client.pipeline(transaction=False) as pipe:
        for suffix in PRIORITY_SUFFIXES:
            pipe.llen(queue + suffix)
        return int(sum(pipe.execute()))


class ChangeSignal:
    """A token in Redis that a store's writers replace after each change they make, so that
    every process caching the store asks Redis, not the state database, whether to read it
    again: a change is seen at a cache's next check, and an unchanged store costs the state
    database nothing (issue 31: staging messages per change).

    A random token, not a counter: Redis keeps nothing on disk here, and a counter restarted
    from zero could come back to a value that a cache still holds."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client = client
        self.key = key

    def announce(self) -> None:
        self.client.set(self.key, uuid.uuid4().hex)

    def token(self) -> bytes | None:
        value = self.client.get(self.key)
        return value if isinstance(value, bytes) or value is None else str(value).encode()
