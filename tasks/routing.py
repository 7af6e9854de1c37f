"""Which queue a change goes to: `stagesync.<name>`, or `stagesync.<name>.<n>` when split.

The partition is a stable hash of the encoded production `_id` (not Python's `hash`, which
changes per process), so all changes of one document share a queue; correctness never
depends on that (versions order applies), but it keeps hot documents' changes together so
the watcher's batching coalesces them.
"""

from __future__ import annotations

import hashlib

from settings.model import CollectionSettings, Settings


def partition_of(pid: str, partitions: int) -> int:
    if partitions <= 1:
        return 0
    digest = hashlib.blake2b(pid.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def queue_for(collection: CollectionSettings, pid: str) -> str:
    return collection.queues[partition_of(pid, collection.partitions)]


def all_queues(settings: Settings) -> list[str]:
    return [queue for collection in settings.collections for queue in collection.queues]


def collection_of_queue(settings: Settings, queue: str) -> CollectionSettings | None:
    for collection in settings.collections:
        if queue in collection.queues:
            return collection
    return None
