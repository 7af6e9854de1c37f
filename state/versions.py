"""The durable version counter that orders applies (DESIGN: "Versions order reads, not events").

One atomic increment in staging per apply, taken immediately before the production read, never
reserved in blocks: a restarted watcher, a wiped Redis or a replay can then never make an
older read win, because every later read holds a larger number.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from pymongo import ReturnDocument
from pymongo.database import Database
from stagesync.deployments.failures import TransientError
from stagesync.protocol.names import COUNTERS, version_counter_id
from stagesync.state.dead_letters import possibly_open

# What the counter said about dead letters at each version this process took lately, for the
# apply holding that version (`dead_letters_possible`). Kept beside the counter rather than
# returned, so that `take_version` keeps its signature for every caller.
_REMEMBERED = 4096
_signals: OrderedDict[tuple[str, str, int], bool] = OrderedDict()
_signals_lock = threading.Lock()


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
    version = int(document["value"])
    with _signals_lock:
        _signals[(state_db.name, collection, version)] = possibly_open(document)
        while len(_signals) > _REMEMBERED:
            _signals.popitem(last=False)
    return version


def dead_letters_possible(state_db: Database[dict[str, Any]], collection: str,
                          version: int) -> bool:
    """Whether an entry of the collection could be open when this process took `version`
    (`state.dead_letters`: the signal); True for a version it did not take, or forgot."""
    with _signals_lock:
        return _signals.get((state_db.name, collection, version), True)


def peek_version(state_db: Database[dict[str, Any]], collection: str) -> int:
    """The version the next apply would take, without taking it (plan-only applies)."""
    document = state_db[COUNTERS].find_one({"_id": version_counter_id(collection)}) or {}
    return int(document.get("value", 0)) + 1
