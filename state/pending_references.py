"""Pending references (`pending_references`): a reference written with production's value
because the referenced copy was not in staging yet, remembered until that copy arrives.

`tasks.apply.references` decides what is pending and when it is resolved; this store only
keeps the records. One record per (referencing collection, referencing document, referenced
collection, referenced document), so recording the same reference twice is one upsert.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, IndexModel, UpdateOne
from pymongo.database import Database
from stagesync.deployments.in_lists import in_lists
from stagesync.protocol.names import (
    PENDING_BY_COLLECTION_INDEX,
    PENDING_INDEX,
    PENDING_REFERENCES,
)

COLLECTION = PENDING_REFERENCES
# Fields of a pending reference.
COLL = "coll"  # the referencing collection
PID = "pid"  # the referencing document's production `_id` (encoded)
TARGET = "target"  # the referenced collection
TPID = "tpid"  # the referenced document's production `_id` (encoded)
AT = "at"  # when it was last recorded

_SIMPLE = {"locale": "simple"}
INDEXES = [
    # Read by the referenced collection's applies, counted per referencing collection.
    IndexModel([(TARGET, ASCENDING), (TPID, ASCENDING)], name=PENDING_INDEX, collation=_SIMPLE),
    IndexModel([(COLL, ASCENDING)], name=PENDING_BY_COLLECTION_INDEX, collation=_SIMPLE),
]

Pending = tuple[str, str, str]  # (referencing pid, referenced collection, referenced pid)


def pending_id(collection: str, pid: str, target: str, tpid: str) -> str:
    return "|".join((collection, target, tpid, pid))


class PendingReferences:
    """The pending references of the state database."""

    def __init__(self, state_db: Database[dict[str, Any]]) -> None:
        self.records = state_db[COLLECTION]

    def record(self, collection: str, pending: Iterable[Pending]) -> None:
        """Remember references of `collection` waiting for their copy (one unordered bulk)."""
        now = datetime.now(UTC)
        operations = [
            UpdateOne({"_id": pending_id(collection, pid, target, tpid)},
                      {"$set": {COLL: collection, PID: pid, TARGET: target, TPID: tpid,
                                AT: now}}, upsert=True)
            for pid, target, tpid in pending
        ]
        if operations:
            self.records.bulk_write(operations, ordered=False)

    def waiting_for(self, target: str, tpids: Iterable[str]) -> list[dict[str, Any]]:
        """The records waiting for these documents of `target` (each with `_id`, `COLL`,
        `PID`, `TPID`), in `$in` lists of bounded length."""
        return [entry for some in in_lists(tpids)
                for entry in self.records.find({TARGET: target, TPID: {"$in": some}})]

    def forget(self, ids: Iterable[str]) -> None:
        for some in in_lists(ids):
            self.records.delete_many({"_id": {"$in": some}})

    def forget_collection(self, collection: str) -> int:
        """Every record of a referencing collection (an environment's, deleted with it)."""
        return int(self.records.delete_many({COLL: {"$eq": collection}}).deleted_count)

    def count(self, collection: str) -> int:
        """References of `collection` still pending (`status`)."""
        return int(self.records.count_documents({COLL: collection}))


def pending_count(state_db: Database[dict[str, Any]], collection: str) -> int:
    return PendingReferences(state_db).count(collection)
