"""A collection's watcher document in staging: the lease, the checkpoint and bootstrap state.

Lease: one watcher streams a collection; others wait as standbys and take over once the lease
has not been renewed for `lease_seconds`. Every checkpoint write is conditional on still
holding the lease, so a watcher that lost it (paused, partitioned) can never move the
checkpoint of its successor (fencing).

Stored fields: owner, host, pid, leaseUntil, token (resume token), checkpointAt,
resyncPending (id of a bootstrap or history-lost resync not finished yet).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from tasks.constants import WATCHERS


class WatcherRecord:
    def __init__(
        self, state_db: Database[dict[str, Any]], collection: str, owner: str, lease: float
    ) -> None:
        self.documents = state_db[WATCHERS]
        self.collection = collection
        self.owner = owner
        self.lease = timedelta(seconds=lease)

    def acquire(self) -> bool:
        """Take the lease if it is free, expired or already ours."""
        now = datetime.now(UTC)
        query = {"$and": [
            {"_id": self.collection},
            {"$or": [{"owner": {"$eq": self.owner}}, {"leaseUntil": {"$lt": now}},
                     {"owner": {"$eq": None}}]},
        ]}
        update = {"$set": {
            "owner": self.owner, "leaseUntil": now + self.lease, "host": socket.gethostname(),
            "pid": os.getpid(), "acquiredAt": now,
        }}
        try:
            result = self.documents.update_one(query, update, upsert=True)
        except DuplicateKeyError:
            return False  # the document exists and another watcher holds a live lease
        return result.matched_count == 1 or result.upserted_id is not None

    def renew(self) -> bool:
        now = datetime.now(UTC)
        result = self.documents.update_one(
            {"$and": [{"_id": self.collection}, {"owner": {"$eq": self.owner}}]},
            {"$set": {"leaseUntil": now + self.lease}},
        )
        return result.matched_count == 1

    def release(self) -> None:
        self.documents.update_one(
            {"$and": [{"_id": self.collection}, {"owner": {"$eq": self.owner}}]},
            {"$set": {"owner": None, "leaseUntil": datetime.now(UTC)}},
        )

    def load(self) -> dict[str, Any]:
        return self.documents.find_one({"_id": self.collection}) or {}

    def save(self, fields: Mapping[str, Any]) -> bool:
        """Write checkpoint fields if we still hold the lease; False means we lost it."""
        result = self.documents.update_one(
            {"$and": [{"_id": self.collection}, {"owner": {"$eq": self.owner}}]},
            {"$set": dict(fields)},
        )
        return result.matched_count == 1

    def save_checkpoint(self, token: Mapping[str, Any] | None) -> bool:
        return self.save({"token": token, "checkpointAt": datetime.now(UTC)})


def read_all(state_db: Database[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every collection's watcher document, for `status`."""
    return {doc["_id"]: doc for doc in state_db[WATCHERS].find({})}
