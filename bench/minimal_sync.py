"""Baseline "minimal sync": the floor for a Python change-stream sync on pymongo.

One process, one thread, no Celery and no Redis. The change stream is projected to
`documentKey` (the server sends no document, no update description); `_id`s are gathered,
deduplicated, for up to `GATHER_CHANGES` changes or `GATHER_SECONDS` after the first of a
batch; then one `$in` read of production and one unordered bulk write to staging:
`ReplaceOne` by business key (and `_id`, see `apply`; upsert) for a document production has,
a soft delete (`$set: {deleted: true}` by `_id`) for one it no longer has. What it leaves
out beside the product: versions and their races, the merge with staging-owned fields, PII
masking, a checkpoint, a queue, references. What it keeps: the business key as the staging
identity, soft deletes, bounded batches. Staging starts as a copy of production (same
`_id`s), so the soft delete finds its document by `_id` (a delete event carries nothing else).

`--product-indexes` ("minimal-idx"): the same writes into a staging collection carrying the
product's full index set (`deployments.staging_indexes.target_indexes`, created by
`prepare_staging`), each document with a `_sync` sub-document of the product's size and
fields (pid, key digest, version, time, owned paths, fingerprint; `_sync.deletedAt` on soft
delete). On the test server every index costs each write, so the ratio to this row separates
the server's index cost from the product's own overhead.

`$in` lists: one read per `--in-list-max` ids (MongoDB: the whole batch in one; the test server's
`$in` is quadratic, and the bench runs the product with the same cap).

    python -m bench.minimal_sync --prod URI --staging URI [--product-indexes] [--stats-file F]
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo import ReplaceOne, UpdateOne
from pymongo.change_stream import ChangeStream
from pymongo.collection import Collection
from stagesync.deployments.staging_indexes import ensure, target_indexes
from stagesync.rules.identity import encode_id, key_digest
from stagesync.rules.merge import fingerprint
from stagesync.rules.paths import leaf_paths
from stagesync.rules.sync_meta import DELETED_AT_FIELD, SYNC, encode_owned
from stagesync.settings.model import CollectionSettings

from bench.procs import baseline_args, run_baseline, stop_event

GATHER_CHANGES = 1000
GATHER_SECONDS = 0.020
AWAIT_MS = 5  # a getMore waits at most this long for new events
IDLE_SLEEP = 0.01  # after a getMore that brought nothing, before the next
SOFT_DELETE_FIELD = "deleted"
DEFAULT_IN_LIST_MAX = 200  # the test server's value (bench.product.TEST_SERVER_IN_LIST_MAX)


def sync_meta(doc: dict[str, Any], key_fields: Sequence[str], version: int) -> dict[str, Any]:
    """A `_sync` sub-document of the product's fields and size, from its own pure helpers."""
    content = {k: v for k, v in doc.items() if k != "_id"}
    return {
        "pid": encode_id(doc["_id"]),
        "key": key_digest([doc.get(k) for k in key_fields]),
        "v": version,
        "at": datetime.now(UTC),
        "owned": encode_owned(path for path, _ in leaf_paths(content)),
        "fp": fingerprint(content),
    }


def in_lists(values: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(values), size):
        yield list(values[start : start + size])


def gather(stream: ChangeStream[Any], stop: threading.Event,
           clock: Callable[[], float] = time.monotonic) -> tuple[dict[Any, None], int]:
    """Changed `_id`s (first-seen order, deduplicated) and the events read: up to
    `GATHER_CHANGES` events, or until `GATHER_SECONDS` passed since the first."""
    ids: dict[Any, None] = {}
    events = 0
    first: float | None = None
    while events < GATHER_CHANGES and not stop.is_set():
        event = stream.try_next()
        if event is not None:
            if first is None:
                first = clock()
            ids[event["documentKey"]["_id"]] = None
            events += 1
        elif first is None:
            break  # nothing pending: the caller waits a little
        if first is not None and clock() - first >= GATHER_SECONDS:
            break
    return ids, events


def apply(prod: Collection[Any], staging: Collection[Any], ids: Sequence[Any],
          key_fields: Sequence[str], product_indexes: bool, in_list_max: int,
          version: int) -> Counter[str]:
    """One batch: read production's current documents, one unordered bulk write."""
    stats: Counter[str] = Counter()
    docs: dict[Any, dict[str, Any]] = {}
    for some in in_lists(ids, in_list_max):
        for doc in prod.find({"_id": {"$in": some}}):
            docs[doc["_id"]] = doc
        stats["reads"] += 1
    now = datetime.now(UTC)
    ops: list[ReplaceOne[Any] | UpdateOne] = []
    for doc_id in ids:
        doc = docs.get(doc_id)
        if doc is None:
            flag: dict[str, Any] = {SOFT_DELETE_FIELD: True}
            if product_indexes:
                flag[DELETED_AT_FIELD] = now
            ops.append(UpdateOne({"_id": doc_id}, {"$set": flag}))
            stats["soft_deleted"] += 1
            continue
        if product_indexes:
            doc = {**doc, SYNC: sync_meta(doc, key_fields, version)}
        # By business key, and by `_id` too: staging `_id` == production `_id` here. Test-server
        # difference (SecantusDB 0.7.0b3): an update whose filter has no `_id` scans the
        # collection (a replace by business key: ~160 ms per operation at 2k documents, with
        # the index a `find` uses), and one given a collation does not use the `_id` index.
        # MongoDB serves either from an index. With `_id` in the filter and no collation, the
        # same semantics (the document must still hold its key) cost an `_id` lookup.
        key = {k: doc.get(k) for k in key_fields}
        ops.append(ReplaceOne({"_id": doc_id, **key}, doc, upsert=True))
        stats["replaced"] += 1
    if ops:
        staging.bulk_write(ops, ordered=False)
        stats["bulk_writes"] += 1
    return stats


def run(
    prod: Collection[Any],
    staging: Collection[Any],
    key_fields: Sequence[str],
    stop: threading.Event,
    product_indexes: bool = False,
    in_list_max: int = DEFAULT_IN_LIST_MAX,
    on_ready: Callable[[], None] = lambda: None,
) -> Counter[str]:
    """Follow production's change stream until `stop` is set."""
    stats: Counter[str] = Counter()
    pipeline = [{"$project": {"documentKey": 1}}]
    with prod.watch(pipeline, batch_size=GATHER_CHANGES, max_await_time_ms=AWAIT_MS) as stream:
        on_ready()
        while not stop.is_set():
            ids, events = gather(stream, stop)
            if not ids:
                time.sleep(IDLE_SLEEP)
                continue
            stats["events"] += events
            stats["ids"] += len(ids)
            stats["batches"] += 1
            stats.update(apply(prod, staging, list(ids), key_fields, product_indexes,
                               in_list_max, stats["batches"]))
    return stats


def prepare_staging(staging: Collection[Any], source: str, key_fields: Sequence[str],
                    docs: Sequence[dict[str, Any]], product_indexes: bool) -> None:
    """Staging as a full copy of production left it: the same `_id`s; with
    `product_indexes`, the product's index set and a `_sync` on every document. Without, the
    seed's compound business-key index (the replace filter's)."""
    if product_indexes:
        settings = CollectionSettings(name="orders", source=source,
                                      target=f"{staging.database.name}.{staging.name}",
                                      business_key=list(key_fields),
                                      soft_delete_field=SOFT_DELETE_FIELD)
        ensure(staging, target_indexes(settings))
    else:
        staging.create_index([(k, 1) for k in key_fields], name="business_key")
    for start in range(0, len(docs), 5000):
        chunk = [({**d, SYNC: sync_meta(d, key_fields, 0)} if product_indexes else d)
                 for d in docs[start : start + 5000]]
        staging.insert_many(chunk, ordered=False)


def main(argv: list[str] | None = None) -> int:
    extra = list(argv if argv is not None else sys.argv[1:])
    product_indexes = "--product-indexes" in extra
    in_list_max = DEFAULT_IN_LIST_MAX
    if "--in-list-max" in extra:
        at = extra.index("--in-list-max")
        in_list_max = int(extra[at + 1])
        del extra[at : at + 2]
    extra = [a for a in extra if a != "--product-indexes"]
    args = baseline_args("Minimal one-process sync (baseline).", extra)
    stop = stop_event(args.max_seconds)
    return run_baseline(args, lambda prod, staging, ready: run(
        prod, staging, args.key.split(","), stop, product_indexes, in_list_max, on_ready=ready))


if __name__ == "__main__":
    sys.exit(main())
