"""A collection's watcher record in staging (`watchers`): the lease, the checkpoint and the
resync the watcher is minding.

Lease: one watcher streams a collection; others wait as standbys and take over once the lease
has not been renewed for `lease_seconds`. Every checkpoint write is conditional on still
holding the lease, so a watcher that lost it (paused, partitioned) can never move the
checkpoint of its successor (fencing).

It lives here, below the watcher, because `status` and the demo read it too; they read its
fields through the names below, never as string literals of their own.
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

COLLECTION = WATCHERS
# Fields of a watcher record (`_id`: the collection's configured name).
OWNER = "owner"  # the run holding the lease, None once released
HOST = "host"
PROCESS_ID = "processId"  # the watcher's OS process id (`pid` means a production `_id`)
LEASE_UNTIL = "leaseUntil"  # epoch seconds: compared numerically, the same on every server
ACQUIRED_AT = "acquiredAt"
TOKEN = "token"  # the resume token checkpointed
CHECKPOINT_AT = "checkpointAt"
RESYNC_PENDING = "resyncPending"  # id of a bootstrap or history-lost resync not finished yet
RESYNC_REASON = "resyncReason"
LAST_RESYNC = "lastResync"  # id of the last such resync that finished


class LeaseLost(Exception):
    """Another watcher owns this collection now."""


class WatcherRecord:
    """One collection's record, as seen by the watcher run `owner`."""

    def __init__(
        self, state_db: Database[dict[str, Any]], collection: str, owner: str, lease: float
    ) -> None:
        self.documents = state_db[COLLECTION]
        self.collection = collection
        self.owner = owner
        self.lease = lease

    def acquire(self) -> bool:
        """Take the lease if it is free, expired or already ours."""
        now = time.time()
        query = {
            "_id": self.collection,
            "$or": [{OWNER: {"$eq": self.owner}}, {LEASE_UNTIL: {"$lt": now}},
                    {OWNER: {"$eq": None}}],
        }
        update = {
            "$set": {OWNER: self.owner, LEASE_UNTIL: now + self.lease,
                     HOST: socket.gethostname(), PROCESS_ID: os.getpid()},
            "$currentDate": {ACQUIRED_AT: True},
        }
        try:
            result = self.documents.update_one(query, update, upsert=True)
        except DuplicateKeyError:
            return False  # the document exists and another watcher holds a live lease
        return result.matched_count == 1 or result.upserted_id is not None

    def renew(self) -> bool:
        result = self.documents.update_one(
            {"_id": self.collection, OWNER: {"$eq": self.owner}},
            {"$set": {LEASE_UNTIL: time.time() + self.lease}},
        )
        return result.matched_count == 1

    def release(self) -> None:
        self.documents.update_one(
            {"_id": self.collection, OWNER: {"$eq": self.owner}},
            {"$set": {OWNER: None, LEASE_UNTIL: time.time()}},
        )

    def load(self) -> dict[str, Any]:
        return self.documents.find_one({"_id": self.collection}) or {}

    def token(self) -> Mapping[str, Any] | None:
        """The checkpointed resume token, None before the first checkpoint."""
        return self.load().get(TOKEN)

    def pending_resync(self) -> str | None:
        """The bootstrap or history-lost resync this collection waits for, if any."""
        return self.load().get(RESYNC_PENDING)

    def save(self, fields: Mapping[str, Any], stamp: str | None = None) -> bool:
        """Write fields if we still hold the lease; False means we lost it. `stamp` names a
        field to set to the server's current date."""
        update: dict[str, Any] = {"$set": dict(fields)}
        if stamp:
            update["$currentDate"] = {stamp: True}
        result = self.documents.update_one(
            {"_id": self.collection, OWNER: {"$eq": self.owner}}, update
        )
        return result.matched_count == 1

    def save_checkpoint(self, token: Mapping[str, Any] | None) -> bool:
        return self.save({TOKEN: token}, stamp=CHECKPOINT_AT)

    def save_pending_resync(self, resync_id: str, reason: str) -> bool:
        """Remember the resync to mind (a successor takes it over); False: lease lost."""
        return self.save({RESYNC_PENDING: resync_id, RESYNC_REASON: reason})

    def save_resync_done(self, resync_id: str) -> bool:
        """The pending resync finished; False: lease lost."""
        return self.save({RESYNC_PENDING: None, LAST_RESYNC: resync_id})


def read_all(state_db: Database[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every collection's watcher record by collection name, for `status` and the demo."""
    return {doc["_id"]: doc for doc in state_db[COLLECTION].find({})}


def bootstrapped(record: Mapping[str, Any]) -> bool:
    """Whether a collection's first (bootstrap) resync has finished and none is pending."""
    return bool(record.get(LAST_RESYNC)) and not record.get(RESYNC_PENDING)
