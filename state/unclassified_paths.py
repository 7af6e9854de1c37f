"""The paths a strict collection left out of staging, recorded in the state database.

A strict masker (`rules.pii`, `pii_mode: strict`) leaves out every production path that
no rule, `allow` entry or business key classifies. Workers record those paths here, never
their values: one document per (collection, path) with when it was first and last seen and in
how many documents, so that `status`, `check` and a Prometheus gauge can tell people, and a
WARNING log line goes out the first time a path appears.

Bounded: at most `MAX_PATHS_PER_COLLECTION` paths per collection (a map keyed by ids would
otherwise add a path per document); paths beyond it are only counted, in one overflow
document. Two workers racing on the last free places may overshoot the bound by the paths of
their batches, never more. A path segment that is itself personal data (a map keyed by email)
is recorded as `*`, so no raw value reaches this database or the logs through a field name.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pymongo import InsertOne, UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError
from stagesync.protocol.names import DUPLICATE_KEY, UNCLASSIFIED
from stagesync.rules.document import Document
from stagesync.rules.paths import join_dotted, split_dotted
from stagesync.rules.pii_detect import segment_looks_personal
from stagesync.rules.pii_strict import Classification
from stagesync.settings.collection import CollectionSettings

__all__ = [
    "MAX_PATHS_PER_COLLECTION",
    "forget_classified",
    "held_count",
    "record_unclassified",
    "unclassified_report",
    "unclassified_warning",
]

log = logging.getLogger("stagesync.pii")

MAX_PATHS_PER_COLLECTION = 200
OVERFLOW = "*overflow*"  # the path of the overflow document (no real path is spelt so)



def _id(collection: str, path: str) -> str:
    # Collection names cannot hold "/" (settings.model.COLLECTION_NAME): the prefix is exact.
    return f"{collection}/{path}"


def safe_path(path: str) -> str:
    """The path as it may be stored and logged: segments that are personal data become `*`."""
    parts = split_dotted(path)
    if not any(segment_looks_personal(part) for part in parts):
        return path
    return join_dotted(tuple("*" if segment_looks_personal(p) else p for p in parts))


def record_unclassified(
    state_db: Database[Document], collection: str, paths: Mapping[str, int]
) -> list[str]:
    """Record paths left out of `collection` (path -> documents); return the new ones.

    Called after each production read with `Masker.take_unclassified()`; does nothing (no
    I/O) when `paths` is empty, as it always is in open mode. Logs each new path once, at
    WARNING, naming the path only (the workers' gauge is set from `held_count`).
    """
    if not paths:
        return []
    counts: Counter[str] = Counter()
    for path, count in paths.items():
        counts[safe_path(path)] += count
    now = datetime.now(UTC)
    store = state_db[UNCLASSIFIED]
    ids = {_id(collection, path): path for path in counts}
    known = {doc["_id"] for doc in store.find({"_id": {"$in": list(ids)}}, {"_id": 1})}
    fresh = sorted(ident for ident in ids if ident not in known)
    held = store.count_documents({"collection": collection}) if fresh else 0
    room = max(0, MAX_PATHS_PER_COLLECTION - held)
    admitted, overflow = fresh[:room], fresh[room:]
    operations: list[InsertOne[Document] | UpdateOne] = [
        _seen(ident, counts[ids[ident]], now) for ident in ids if ident in known
    ]
    inserted_at = {len(operations) + k: ident for k, ident in enumerate(admitted)}
    operations += [
        InsertOne({"_id": ident, "collection": collection, "path": ids[ident],
                   "firstSeen": now, "lastSeen": now, "count": counts[ids[ident]]})
        for ident in admitted
    ]
    if overflow:
        operations.append(UpdateOne(
            {"_id": _id(collection, OVERFLOW)},
            {"$inc": {"count": sum(counts[ids[i]] for i in overflow), "paths": len(overflow)},
             "$set": {"lastSeen": now, "overflowOf": collection}},
            upsert=True,
        ))
    new = set(admitted)
    try:
        store.bulk_write(operations, ordered=False)
    except BulkWriteError as error:
        # Another worker recorded the same new path first: count ours on its document.
        errors = error.details.get("writeErrors", [])
        raced = [inserted_at[e["index"]] for e in errors
                 if e.get("code") == DUPLICATE_KEY and e.get("index") in inserted_at]
        if len(raced) != len(errors):
            raise
        store.bulk_write([_seen(i, counts[ids[i]], now) for i in raced], ordered=False)
        new -= set(raced)
    recorded = [ids[ident] for ident in admitted if ident in new]
    for path in recorded:
        log.warning("unclassified path left out of staging",
                    extra={"collection": collection, "path": path})
    return recorded


def held_count(state_db: Database[Document], collection: str) -> int:
    """Paths on record for a collection: the `stagesync_pii_unclassified_paths` gauge."""
    return int(state_db[UNCLASSIFIED].count_documents({"collection": collection}))


def _seen(ident: str, count: int, now: datetime) -> UpdateOne:
    return UpdateOne({"_id": ident}, {"$inc": {"count": count}, "$set": {"lastSeen": now}})


def unclassified_report(
    state_db: Database[Document], collection: CollectionSettings
) -> dict[str, Any]:
    """What `status` and `check` show: the recorded paths the configuration still leaves out.

    Paths classified since they were recorded (added to `allow` or given a rule) are not
    shown; nothing is shown for an open collection, which leaves nothing out.
    """
    classification = Classification.from_settings(collection)
    if classification is None:
        return {"paths": [], "more": 0}
    paths = []
    for doc in state_db[UNCLASSIFIED].find({"collection": collection.name}).sort("path", 1):
        if classification.covers(doc["path"]):
            continue
        paths.append({"path": doc["path"], "first_seen": _iso(doc.get("firstSeen")),
                      "last_seen": _iso(doc.get("lastSeen")), "count": doc.get("count", 0)})
    overflow = state_db[UNCLASSIFIED].find_one({"_id": _id(collection.name, OVERFLOW)}) or {}
    return {"paths": paths, "more": int(overflow.get("paths", 0))}


def forget_classified(state_db: Database[Document], collection: CollectionSettings) -> int:
    """Drop the records the configuration now classifies (all of them in open mode).

    Called when a worker builds a collection's apply context, so that paths allowed since
    free their places under the bound and leave the gauge. Returns how many went.
    """
    store = state_db[UNCLASSIFIED]
    classification = Classification.from_settings(collection)
    if classification is None:
        removed = store.delete_many({"$or": [{"collection": collection.name},
                                             {"overflowOf": collection.name}]}).deleted_count
        return int(removed)
    stale = [doc["_id"] for doc in store.find({"collection": collection.name}, {"path": 1})
             if classification.covers(doc["path"])]
    removed = store.delete_many({"_id": {"$in": stale}}).deleted_count if stale else 0
    return int(removed)


def _iso(moment: Any) -> str | None:
    if not isinstance(moment, datetime):
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def unclassified_warning(report: Mapping[str, Any], shown: int = 10) -> str | None:
    """The `status` line for an `unclassified_report`, or None when nothing is left out."""
    paths = [entry["path"] for entry in report["paths"]]
    if not paths:
        return None
    listed = ", ".join(paths[:shown])
    more = len(paths) - shown + int(report.get("more", 0))
    if more > 0:
        listed += f" and {more} more"
    return (f"pii_mode strict leaves {len(paths)} unclassified path(s) out of staging: "
            f"{listed} (give each a pii rule or list it in allow)")
