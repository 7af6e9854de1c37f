"""Baseline (b): "the limit" — the least work a change-stream sync can do.

Read the change events as they come, keep only the changed production `_id`s (deduplicated),
read those documents' current state with `find({"_id": {"$in": ids}})` in batches, and write it
to staging with unordered `bulk_write`s of `ReplaceOne({"_id": id}, doc, upsert=True)`, or
`DeleteOne({"_id": id})` for a document production no longer has. No queue, no merge, no
business key, no versions, no metadata: it is correct here only because it is the single writer
and staging `_id` == production `_id`. A product that merges, keys and versions can approach it,
not beat it on the same servers (targets are expressed as a fraction of it).

One process, one thread: read what the stream has (up to `MAX_EVENTS`), apply it, repeat.
"What the stream has" is what the server can return at once: getMores wait at most
`AWAIT_MS` for new events. With the server's default wait (1 s on MongoDB and SecantusDB) a
getMore returns as soon as one event arrives, so under a steady trickle the stream never came
up empty and the loop kept reading until `MAX_EVENTS` (measured at 50 changes/s: p50 lag 34 s,
everything applied at the end). nx-27017, the earlier test server, never waited, which hid it.

    python -m bench.limit_copy --prod URI --staging URI [--ready-file F] [--stats-file F]
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from pymongo import DeleteOne, ReplaceOne
from pymongo.change_stream import ChangeStream
from pymongo.collection import Collection

from bench.naive_sync import IDLE_SLEEP
from bench.procs import baseline_args, run_baseline, stop_event

MAX_EVENTS = 5000  # events read before applying them
READ_BATCH = 500  # ids per `$in` read and per bulk write
STREAM_BATCH = 1000  # change events per getMore
AWAIT_MS = 5  # how long a getMore may wait for new events (see the module doc)


def drain(stream: ChangeStream[Any], limit: int) -> tuple[dict[Any, None], int]:
    """The changed `_id`s available now (first-seen order) and the number of events read,
    stopping after `limit` events."""
    ids: dict[Any, None] = {}
    events = 0
    while events < limit:
        event = stream.try_next()
        if event is None:
            break
        events += 1
        ids[event["documentKey"]["_id"]] = None
    return ids, events


def copy(prod: Collection[Any], staging: Collection[Any], ids: list[Any]) -> Counter[str]:
    """Write the current production state of `ids` to staging by `_id`."""
    stats: Counter[str] = Counter()
    for start in range(0, len(ids), READ_BATCH):
        chunk = ids[start : start + READ_BATCH]
        docs = {d["_id"]: d for d in prod.find({"_id": {"$in": chunk}})}
        ops: list[ReplaceOne[Any] | DeleteOne] = [
            ReplaceOne({"_id": i}, docs[i], upsert=True) if i in docs else DeleteOne({"_id": i})
            for i in chunk
        ]
        staging.bulk_write(ops, ordered=False)
        stats["replaced"] += len(docs)
        stats["deleted"] += len(chunk) - len(docs)
        stats["bulk_writes"] += 1
    return stats


def run(
    prod: Collection[Any],
    staging: Collection[Any],
    stop: threading.Event,
    on_ready: Callable[[], None] = lambda: None,
) -> Counter[str]:
    """Follow production's change stream until `stop` is set, copying what changed."""
    stats: Counter[str] = Counter()
    with prod.watch(batch_size=STREAM_BATCH, max_await_time_ms=AWAIT_MS) as stream:
        on_ready()
        while not stop.is_set():
            ids, events = drain(stream, MAX_EVENTS)
            if not ids:
                time.sleep(IDLE_SLEEP)
                continue
            stats["events"] += events
            stats["ids"] += len(ids)
            stats.update(copy(prod, staging, list(ids)))
    return stats


def main(argv: list[str] | None = None) -> int:
    args = baseline_args("Change-stream copy by _id, no queue, no merge (baseline b).", argv)
    stop = stop_event(args.max_seconds)
    return run_baseline(args, lambda prod, staging, ready: run(prod, staging, stop,
                                                               on_ready=ready))


if __name__ == "__main__":
    sys.exit(main())
