"""Baseline (a): the naive per-event loop of the original design.

Per change event, in order, one at a time: read the production document by `_id`, find the
staging document by business key (served by the original's compound index on
`(userEmail, accountId)`), then insert it or `replace_one` it by the staging `_id`. That is up
to three round trips per event, no batching, no queue: its rate is set by round-trip time.

Deletes: a delete event carries only the production `_id` (no `fullDocument` on real MongoDB
without pre-images), so the business key cannot be known. The baseline's staging starts as a
straight copy of production (see `bench.systems`), so staging `_id` == production `_id`, and a
delete is one `delete_one` by that `_id` — a hard delete, which `verify_equal` checks by `_id`.

Run as a process (that is how its peak RSS is measured):
    python -m bench.naive_sync --prod URI --staging URI [--ready-file F] [--stats-file F]
It opens its change stream first, then writes the ready file, and runs until SIGTERM.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from pymongo import ASCENDING
from pymongo.collection import Collection

from bench.procs import baseline_args, run_baseline, stop_event

IDLE_SLEEP = 0.01  # seconds to wait after an empty `try_next()`: an idle loop must not spin


def create_key_index(staging: Collection[Any], key_fields: Sequence[str]) -> None:
    """The original design's compound index on the business key."""
    staging.create_index([(f, ASCENDING) for f in key_fields], name="business_key")


def apply_event(
    prod: Collection[Any],
    staging: Collection[Any],
    key_fields: Sequence[str],
    event: dict[str, Any],
) -> str:
    """Apply one change event; returns what it did (for the stats)."""
    prod_id = event["documentKey"]["_id"]
    if event["operationType"] == "delete":
        staging.delete_one({"_id": prod_id})
        return "deleted"
    doc = prod.find_one({"_id": prod_id})
    if doc is None:
        return "vanished"  # deleted since the event; its own delete event follows
    found = staging.find_one({f: doc.get(f) for f in key_fields}, {"_id": 1})
    if found is None:
        staging.insert_one(doc)
        return "inserted"
    staging.replace_one({"_id": found["_id"]}, {k: v for k, v in doc.items() if k != "_id"})
    return "replaced"


def run(
    prod: Collection[Any],
    staging: Collection[Any],
    key_fields: Sequence[str],
    stop: threading.Event,
    on_ready: Callable[[], None] = lambda: None,
) -> Counter[str]:
    """Follow production's change stream until `stop` is set; one event at a time."""
    stats: Counter[str] = Counter()
    with prod.watch() as stream:  # default batch size: the original design did not tune it
        on_ready()
        while not stop.is_set():
            event = stream.try_next()
            if event is None:
                time.sleep(IDLE_SLEEP)
                continue
            stats[apply_event(prod, staging, key_fields, event)] += 1
            stats["events"] += 1
    return stats


def main(argv: list[str] | None = None) -> int:
    args = baseline_args("Naive per-event sync (baseline a).", argv)
    stop = stop_event(args.max_seconds)
    return run_baseline(args, lambda prod, staging, ready: run(
        prod, staging, args.key.split(","), stop, on_ready=ready))


if __name__ == "__main__":
    sys.exit(main())
