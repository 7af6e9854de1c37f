"""What a change event means for the sync, whatever else it carries.

An event only says "the document with this production `_id` changed"; workers read the
document's current state themselves. So the watcher needs the `documentKey._id` and the
operation, never `fullDocument` or `updateDescription` (which is why the stream projects them
away: personal data then never even reaches the watcher), and never the replace-versus-update
distinction. Events that end the stream's history (drop, rename, dropDatabase, invalidate)
mean staging can only be trusted again after a full resync.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bson import Timestamp
from stagesync.rules.identity import encode_id

APPLIED_OPERATIONS = frozenset({"insert", "update", "replace", "delete"})
HISTORY_ENDING_OPERATIONS = frozenset({"drop", "rename", "dropDatabase", "invalidate"})
# DDL events of `showExpandedEvents` (MongoDB 6.0+) that change the collection's indexes
# (`modify` also carries collMod's hidden and TTL changes): the index mirror reads production's
# `listIndexes` again. Nothing is enqueued and no document is touched.
INDEX_OPERATIONS = frozenset({"createIndexes", "dropIndexes", "modify"})

# Keep only what the watcher uses; `_id` (the resume token) always stays.
STREAM_PROJECTION: list[dict[str, Any]] = [
    {"$project": {"operationType": 1, "documentKey": 1, "ns": 1, "to": 1,
                  "clusterTime": 1, "wallTime": 1}},
]


@dataclass(frozen=True)
class Change:
    """`pid`: the production `_id` (canonical Extended JSON). On a sharded collection
    `documentKey` also holds the shard key fields; nothing uses them (workers read by `_id`),
    and they may be personal data (a shard key on `userEmail`), so they are not kept."""

    pid: str
    op: str
    # When production made the change, where the event says so (for lag); else None.
    happened_at: datetime | None


@dataclass(frozen=True)
class HistoryEnded:
    reason: str


@dataclass(frozen=True)
class Malformed:
    reason: str


@dataclass(frozen=True)
class IndexChanged:
    operation: str


Action = Change | HistoryEnded | Malformed | IndexChanged | None


def classify(event: Mapping[str, Any]) -> Action:
    """Change to enqueue, HistoryEnded, Malformed, IndexChanged (production's indexes
    changed), or None for events with nothing to copy (other expanded events)."""
    operation = event.get("operationType")
    if operation in APPLIED_OPERATIONS:
        key = event.get("documentKey")
        if not isinstance(key, Mapping) or "_id" not in key:
            return Malformed(f"{operation} event without documentKey._id")
        return Change(encode_id(key["_id"]), str(operation), event_time(event))
    if operation in HISTORY_ENDING_OPERATIONS:
        return HistoryEnded(f"{operation} event on {_namespace(event)}")
    if operation in INDEX_OPERATIONS:
        return IndexChanged(str(operation))
    return None


def event_time(event: Mapping[str, Any]) -> datetime | None:
    """`wallTime` (MongoDB 6+), else the `clusterTime` timestamp's seconds."""
    wall = event.get("wallTime")
    if isinstance(wall, datetime):
        return wall if wall.tzinfo else wall.replace(tzinfo=UTC)
    cluster = event.get("clusterTime")
    if isinstance(cluster, Timestamp):
        return datetime.fromtimestamp(cluster.time, UTC)
    if isinstance(cluster, datetime):
        return cluster if cluster.tzinfo else cluster.replace(tzinfo=UTC)
    return None


def _namespace(event: Mapping[str, Any]) -> str:
    ns = event.get("ns")
    if isinstance(ns, Mapping):
        return ".".join(str(part) for part in (ns.get("db"), ns.get("coll")) if part)
    return "the watched collection"
