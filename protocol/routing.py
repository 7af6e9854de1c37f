"""Which queue a change goes to: `stagesync.<name>`, or `stagesync.<name>.<n>` when split.

The partition is a stable hash of the encoded production `_id` (not Python's `hash`, which
changes per process), so all changes of one document share a queue; correctness never
depends on that (versions order applies), but it keeps hot documents' changes together so
the watcher's batching coalesces them.
"""

from __future__ import annotations

import hashlib

from stagesync.protocol.names import queue_names
from stagesync.settings.collection import CollectionSettings
from stagesync.settings.model import Settings


def partition_of(pid: str, partitions: int) -> int:
    if partitions <= 1:
        return 0
    digest = hashlib.blake2b(pid.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def queues_of(collection: CollectionSettings) -> list[str]:
    """Every Celery queue of this collection, partitions included."""
    return queue_names(collection.name, collection.partitions)


def home_queue(collection: CollectionSettings) -> str:
    """The queue of a collection's one-off jobs (resync coordinator, replay): its first."""
    return queues_of(collection)[0]


def queue_for(collection: CollectionSettings, pid: str) -> str:
    return queues_of(collection)[partition_of(pid, collection.partitions)]


def all_queues(settings: Settings) -> list[str]:
    return [queue for collection in settings.collections for queue in queues_of(collection)]


# kombu's Redis transport keeps messages with a priority in sibling lists of the queue.
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
