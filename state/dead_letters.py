"""The dead-letter store: changes that could not be applied, kept in staging with their reason.

One entry per production document and collection (`<collection>|<pid>`), so a document that
keeps failing updates its entry instead of piling up copies. Entries hold the production `_id`,
the operation, the reason and a short error text, never the document body (it may hold PII).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, IndexModel, UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError
from stagesync.protocol.names import (
    DEAD_LETTERS,
    DEAD_LETTERS_INDEX,
    DUPLICATE_KEY,
    RESOLVED_TTL_INDEX,
)

COLLECTION = DEAD_LETTERS
# Fields of an entry (`_id`: `entry_id`).
COLLECTION_FIELD = "collection"
PID = "pid"  # the production `_id`, encoded
OP = "op"  # the operation seen
REASON = "reason"  # key_conflict, missing_key, schema_version, too_large, write_error, ...
ERROR = "error"  # a short text, never a document's value
KEY = "key"  # the business-key digest, for key conflicts
VERSION = "version"  # of the apply that decided last
STATE = "state"  # OPEN or RESOLVED
ATTEMPTS = "attempts"
FIRST_SEEN = "firstSeen"
LAST_SEEN = "lastSeen"
RESOLVED_AT = "resolvedAt"
EXPIRE_AT = "expireAt"  # TTL of a resolved entry
OPEN = "open"
RESOLVED = "resolved"
# A resolved entry only has to outlive applies that read production before the resolving one.
RESOLVED_KEPT = timedelta(hours=1)

_SIMPLE = {"locale": "simple"}
INDEXES = [
    IndexModel([(COLLECTION_FIELD, ASCENDING), (STATE, ASCENDING), (REASON, ASCENDING),
                (KEY, ASCENDING)], name=DEAD_LETTERS_INDEX, collation=_SIMPLE),
    IndexModel([(EXPIRE_AT, ASCENDING)], name=RESOLVED_TTL_INDEX, expireAfterSeconds=0,
               collation=_SIMPLE),
]


@dataclass(frozen=True)
class DeadLetterEntry:
    collection: str
    pid: str
    op: str
    reason: str
    error: str
    # Version of the apply that gave up: entries only ever move forward in versions.
    version: int
    key: str | None = None


def entry_id(collection: str, pid: str) -> str:
    return f"{collection}|{pid}"


class DeadLetterStore:
    """Entries are `open` until an apply with a newer version lands the document; they are
    then kept as `resolved` (with that version) for an hour, so a slower apply that read
    production earlier cannot re-open them with a stale reason."""

    def __init__(self, state_db: Database[dict[str, Any]]) -> None:
        self.entries = state_db[COLLECTION]

    def record(self, entries: Iterable[DeadLetterEntry]) -> int:
        """Open (or update) entries, unless a newer apply already decided about the document.

        One unordered bulk write. An entry that holds a newer version does not match the
        filter, and its upsert fails on the `_id` (11000): that verdict is stale, skipped.
        """
        now = datetime.now(UTC)  # firstSeen, set only when the entry is inserted
        operations = [
            UpdateOne(
                {"_id": entry_id(entry.collection, entry.pid),
                 VERSION: {"$lt": entry.version}},
                {
                    "$set": {
                        STATE: OPEN, OP: entry.op, REASON: entry.reason,
                        ERROR: entry.error[:1000], KEY: entry.key,
                        VERSION: entry.version,
                    },
                    "$currentDate": {LAST_SEEN: True},
                    "$unset": {RESOLVED_AT: "", EXPIRE_AT: ""},
                    "$inc": {ATTEMPTS: 1},
                    "$setOnInsert": {
                        COLLECTION_FIELD: entry.collection, PID: entry.pid, FIRST_SEEN: now,
                    },
                },
                upsert=True,
            )
            for entry in entries
        ]
        if not operations:
            return 0
        try:
            result = self.entries.bulk_write(operations, ordered=False)
            return result.matched_count + result.upserted_count
        except BulkWriteError as error:
            details = error.details
            if any(failure.get("code") != DUPLICATE_KEY for failure in details["writeErrors"]):
                raise
            if details.get("writeConcernErrors"):
                raise
            return int(details.get("nMatched", 0)) + int(details.get("nUpserted", 0))

    def clear(self, collection: str, pids: Iterable[str], older_than: int) -> int:
        """Resolve entries that an apply with version `older_than` has made obsolete.

        Run after every apply, without first asking whether the store is empty: a cache of
        "empty" shared by no one would let an entry recorded by another worker outlive the
        apply that resolved it. It is one indexed `_id` update per batch.
        """
        ids = [entry_id(collection, pid) for pid in pids]
        if not ids:
            return 0
        query = {"_id": {"$in": ids}, VERSION: {"$lt": older_than}}
        update = {"$set": {STATE: RESOLVED, VERSION: older_than,
                           EXPIRE_AT: datetime.now(UTC) + RESOLVED_KEPT},
                  "$currentDate": {RESOLVED_AT: True}}
        return int(self.entries.update_many(query, update).modified_count)

    def waiting_on_keys(self, collection: str, keys: Iterable[str]) -> list[str]:
        """Pids dead-lettered as key conflicts on one of these business keys."""
        wanted = list(keys)
        if not wanted:
            return []
        query = {COLLECTION_FIELD: {"$eq": collection}, STATE: {"$eq": OPEN},
                 REASON: {"$eq": "key_conflict"}, KEY: {"$in": wanted}}
        return [doc[PID] for doc in self.entries.find(query, {PID: 1})]

    def list(
        self, collection: str | None = None, reason: str | None = None, limit: int = 0
    ) -> Iterator[dict[str, Any]]:
        query: dict[str, Any] = {STATE: {"$eq": OPEN}}
        if collection:
            query[COLLECTION_FIELD] = {"$eq": collection}
        if reason:
            query[REASON] = {"$eq": reason}
        return iter(self.entries.find(query, limit=limit).sort(FIRST_SEEN, 1))

    def get(self, collection: str, pid: str) -> dict[str, Any] | None:
        return self.entries.find_one(
            {"_id": entry_id(collection, pid), STATE: {"$eq": OPEN}}
        )

    def count(self, collection: str | None = None) -> int:
        query: dict[str, Any] = {STATE: {"$eq": OPEN}}
        if collection:
            query[COLLECTION_FIELD] = {"$eq": collection}
        return sum(1 for _ in self.entries.find(query, {"_id": 1}))

    def purge(self, collection: str | None = None, pids: Iterable[str] | None = None) -> int:
        query: dict[str, Any] = {}
        if collection:
            query[COLLECTION_FIELD] = {"$eq": collection}
        if pids is not None:
            if not collection:
                raise ValueError("purging chosen entries needs their collection")
            query["_id"] = {"$in": [entry_id(collection, pid) for pid in pids]}
        return int(self.entries.delete_many(query).deleted_count)


def summarize(entries: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Entries per reason, for `status` and `dlq list`."""
    counts: dict[str, int] = {}
    for entry in entries:
        counts[str(entry.get(REASON))] = counts.get(str(entry.get(REASON)), 0) + 1
    return counts
