"""The durable version counter that orders applies (DESIGN: "Versions order reads, not events").

One atomic increment in staging per apply, taken immediately before the production read, never
reserved in blocks: a restarted watcher, a wiped Redis or a replay can then never make an
older read win, because every later read holds a larger number.
"""

from __future__ import annotations

from typing import Any

from pymongo import ReturnDocument
from pymongo.database import Database
from stagesync.deployments.failures import TransientError
from stagesync.protocol.names import COUNTERS, version_counter_id


class VersionCounterError(TransientError):
    """The counter did not answer with a value; the apply must not proceed without one."""


def take_version(state_db: Database[dict[str, Any]], collection: str) -> int:
    document = state_db[COUNTERS].find_one_and_update(
        {"_id": version_counter_id(collection)},
        {"$inc": {"value": 1}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    if not document or not isinstance(document.get("value"), int):
        raise VersionCounterError(f"version counter for {collection!r} returned nothing")
    return int(document["value"])


def peek_version(state_db: Database[dict[str, Any]], collection: str) -> int:
    """The version the next apply would take, without taking it (plan-only applies)."""
    document = state_db[COUNTERS].find_one({"_id": version_counter_id(collection)}) or {}
    return int(document.get("value", 0)) + 1
