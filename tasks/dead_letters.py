"""The dead-letter store: changes that could not be applied, kept in staging with their reason.

One entry per production document and collection (`<collection>|<pid>`), so a document that
keeps failing updates its entry instead of piling up copies. Entries hold the production `_id`,
the operation, the reason and a short error text, never the document body (it may hold PII).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo.database import Database

from tasks.constants import DEAD_LETTERS

# How long a worker trusts "this collection has no dead letters" before asking again; a
# dead letter recorded by another worker is then cleared at most this late.
EMPTY_CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class DeadLetterEntry:
    collection: str
    pid: str
    op: str
    reason: str
    error: str
    key: str | None = None
    # Version of the apply that gave up; a later apply that lands clears only older entries.
    version: int = 0


def entry_id(collection: str, pid: str) -> str:
    return f"{collection}|{pid}"


class DeadLetterStore:
    def __init__(self, state_db: Database[dict[str, Any]]) -> None:
        self.entries = state_db[DEAD_LETTERS]
        self._empty_until: dict[str, float] = {}

    def record(self, entries: Iterable[DeadLetterEntry]) -> int:
        count = 0
        now = datetime.now(UTC)
        for entry in entries:
            count += 1
            self._empty_until.pop(entry.collection, None)
            # Plain update_one (not a bulk): some servers store datetimes set in a bulk as text.
            self.entries.update_one(
                {"_id": entry_id(entry.collection, entry.pid)},
                {
                    "$set": {
                        "op": entry.op, "reason": entry.reason, "error": entry.error[:1000],
                        "key": entry.key, "version": entry.version, "lastSeen": now,
                    },
                    "$inc": {"attempts": 1},
                    "$setOnInsert": {
                        "collection": entry.collection, "pid": entry.pid, "firstSeen": now,
                    },
                },
                upsert=True,
            )
        return count

    def may_have_entries(self, collection: str) -> bool:
        """Cheap check before the per-batch clean-up; cached while the store is empty."""
        if self._empty_until.get(collection, 0.0) > time.monotonic():
            return False
        found = self.entries.find_one({"collection": {"$eq": collection}}, {"_id": 1})
        if found is None:
            self._empty_until[collection] = time.monotonic() + EMPTY_CACHE_SECONDS
        return found is not None

    def clear(self, collection: str, pids: Iterable[str], older_than: int) -> int:
        """Drop entries that an apply with version `older_than` has made obsolete."""
        ids = [entry_id(collection, pid) for pid in pids]
        if not ids:
            return 0
        query = {"$and": [{"_id": {"$in": ids}}, {"version": {"$lt": older_than}}]}
        return int(self.entries.delete_many(query).deleted_count)

    def waiting_on_keys(self, collection: str, keys: Iterable[str]) -> list[str]:
        """Pids dead-lettered as key conflicts on one of these business keys."""
        wanted = list(keys)
        if not wanted:
            return []
        query = {"collection": {"$eq": collection}, "reason": {"$eq": "key_conflict"},
                 "key": {"$in": wanted}}
        return [doc["pid"] for doc in self.entries.find(query, {"pid": 1})]

    def list(
        self, collection: str | None = None, reason: str | None = None, limit: int = 0
    ) -> Iterator[dict[str, Any]]:
        query: dict[str, Any] = {}
        if collection:
            query["collection"] = {"$eq": collection}
        if reason:
            query["reason"] = {"$eq": reason}
        return iter(self.entries.find(query, limit=limit).sort("firstSeen", 1))

    def get(self, collection: str, pid: str) -> dict[str, Any] | None:
        return self.entries.find_one({"_id": entry_id(collection, pid)})

    def count(self, collection: str | None = None) -> int:
        query = {"collection": {"$eq": collection}} if collection else {}
        return sum(1 for _ in self.entries.find(query, {"_id": 1}))

    def purge(self, collection: str | None = None, pids: Iterable[str] | None = None) -> int:
        query: dict[str, Any] = {}
        if collection:
            query["collection"] = {"$eq": collection}
        if pids is not None:
            if not collection:
                raise ValueError("purging chosen entries needs their collection")
            query["_id"] = {"$in": [entry_id(collection, pid) for pid in pids]}
        return int(self.entries.delete_many(query).deleted_count)


def summarize(entries: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Entries per reason, for `status` and `dlq list`."""
    counts: dict[str, int] = {}
    for entry in entries:
        counts[str(entry.get("reason"))] = counts.get(str(entry.get("reason")), 0) + 1
    return counts
