"""A collection's watcher document in staging: the lease, the checkpoint and bootstrap state.

Lease: one watcher streams a collection; others wait as standbys and take over once the lease
has not been renewed for `lease_seconds`. Every checkpoint write is conditional on still
holding the lease, so a watcher that lost it (paused, partitioned) can never move the
checkpoint of its successor (fencing).

Stored fields: owner, host, processId (the watcher's OS process id; `pid` means a production
`_id` everywhere else), leaseUntil (epoch seconds: compared numerically, the same on
every server), token (resume token), checkpointAt, resyncPending (id of a bootstrap or
history-lost resync not finished yet).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError
from stagesync.protocol.names import WATCHERS


class LeaseLost(Exception):
    """Another watcher owns this collection now."""


class WatcherRecord:
    def __init__(
        self, state_db: Database[dict[str, Any]], collection: str, owner: str, lease: float
    ) -> None:
        self.documents = state_db[WATCHERS]
        self.collection = collection
        self.owner = owner
        self.lease = lease

    def acquire(self) -> bool:
        """Take the lease if it is free, expired or already ours."""
        now = time.time()
        query = {
            "_id": self.collection,
            "$or": [{"owner": {"$eq": self.owner}}, {"leaseUntil": {"$lt": now}},
                    {"owner": {"$eq": None}}],
        }
        update = {
            "$set": {"owner": self.owner, "leaseUntil": now + self.lease,
                     "host": socket.gethostname(), "processId": os.getpid()},
            "$currentDate": {"acquiredAt": True},
        }
        try:
            result = self.documents.update_one(query, update, upsert=True)
        except DuplicateKeyError:
            return False  # the document exists and another watcher holds a live lease
        return result.matched_count == 1 or result.upserted_id is not None

    def renew(self) -> bool:
        result = self.documents.update_one(
            {"_id": self.collection, "owner": {"$eq": self.owner}},
            {"$set": {"leaseUntil": time.time() + self.lease}},
        )
        return result.matched_count == 1

    def release(self) -> None:
        self.documents.update_one(
            {"_id": self.collection, "owner": {"$eq": self.owner}},
            {"$set": {"owner": None, "leaseUntil": time.time()}},
        )

    def load(self) -> dict[str, Any]:
        return self.documents.find_one({"_id": self.collection}) or {}

    def save(self, fields: Mapping[str, Any], stamp: str | None = None) -> bool:
        """Write fields if we still hold the lease; False means we lost it. `stamp` names a
        field to set to the server's current date."""
        update: dict[str, Any] = {"$set": dict(fields)}
        if stamp:
            update["$currentDate"] = {stamp: True}
        result = self.documents.update_one(
            {"_id": self.collection, "owner": {"$eq": self.owner}}, update
        )
        return result.matched_count == 1

    def save_checkpoint(self, token: Mapping[str, Any] | None) -> bool:
        return self.save({"token": token}, stamp="checkpointAt")


def read_all(state_db: Database[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every collection's watcher document, for `status`."""
    return {doc["_id"]: doc for doc in state_db[WATCHERS].find({})}
