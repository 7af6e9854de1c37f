"""What a frozen environment missed: one entry per environment, collection and production `_id`.

A frozen environment is not written; the stream remembers here which documents it skipped, so
that its thaw applies exactly those (read from production then, like any apply) instead of
copying everything again. An entry is per document, not per event: a thousand changes to one
document are one entry, so the backlog is bounded by the documents production holds, and by
`environments.freeze_backlog` (past it the environment stops remembering and its thaw resyncs:
`EnvironmentStore.count_backlog`).

Each entry counts the times it was remembered (`seen`). The thaw forgets an entry only with
the count it read: a change remembered again while its document was being applied (a worker
that still saw the environment frozen) keeps its entry for the next round, rather than being
lost with the one applied before it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DeleteOne, IndexModel, UpdateOne
from pymongo.database import Database
from stagesync.protocol.names import ENVIRONMENT_BACKLOG

COLLECTION = ENVIRONMENT_BACKLOG
INDEXES = [IndexModel([("environment", ASCENDING), ("collection", ASCENDING), ("pid", ASCENDING)],
                      name="stagesync_environment_backlog", unique=True)]


@dataclass(frozen=True)
class BacklogChunk:
    """Entries read for one round of a thaw: pid -> the last change's op, and its count."""

    ops: dict[str, str]
    seen: dict[str, int]


class EnvironmentBacklog:
    def __init__(self, state_db: Database[dict[str, Any]]) -> None:
        self.entries = state_db[COLLECTION]

    def remember(self, environment: str, collection: str, ops: Mapping[str, str]) -> int:
        """Record the documents of these changes; the number of documents new to it."""
        if not ops:
            return 0
        now = datetime.now(UTC)
        result = self.entries.bulk_write([
            UpdateOne({"environment": environment, "collection": collection, "pid": pid},
                      {"$set": {"op": op}, "$inc": {"seen": 1},
                       "$setOnInsert": {"at": now}}, upsert=True)
            for pid, op in ops.items()
        ], ordered=False)
        return int(result.upserted_count)

    def chunk(self, environment: str, collection: str, size: int) -> BacklogChunk:
        found = list(self.entries.find(
            {"environment": environment, "collection": collection},
            {"pid": 1, "op": 1, "seen": 1}, limit=size))
        return BacklogChunk({entry["pid"]: entry["op"] for entry in found},
                            {entry["pid"]: int(entry["seen"]) for entry in found})

    def forget(self, environment: str, collection: str, chunk: BacklogChunk) -> None:
        """Drop the entries applied, unless remembered again since they were read."""
        if chunk.seen:
            self.entries.bulk_write([
                DeleteOne({"environment": environment, "collection": collection, "pid": pid,
                           "seen": seen})
                for pid, seen in chunk.seen.items()
            ], ordered=False)

    def count(self, environment: str, collection: str | None = None) -> int:
        query: dict[str, Any] = {"environment": environment}
        if collection is not None:
            query["collection"] = collection
        return self.entries.count_documents(query)

    def clear(self, environment: str) -> None:
        """Everything remembered for the environment (a reset, a resyncing thaw, a delete)."""
        self.entries.delete_many({"environment": environment})
