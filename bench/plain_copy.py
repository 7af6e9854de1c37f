"""Resync baseline: a plain `find` + `insert_many` copy of production into an empty staging.

The physical limit of a full copy on these servers (issue 4): one client reads the whole
collection with a cursor and writes it in unordered `insert_many` calls of `--batch` documents.
No business keys, no merge, no versions, no metadata: it only works into an empty staging.
Timed from the `find` to the last insert's acknowledgement (process start-up excluded, as the
product's figure excludes its command's start-up).

`--product-indexes` ("copy-idx"): the same copy into a staging collection that carries the
product's full index set, created before the copy, each document with a `_sync` sub-document
of the product's size (`bench.minimal_sync.sync_meta`): on the test server each index costs
every insert, and the ratio to this row is the product's own overhead.

`--indexes-after` ("copy-idx-after", with `--product-indexes`): the bulk loader's way, as
mongorestore and MongoDB's initial sync do it: the documents (with `_sync`) into a collection
that has only `_id`, then the product's index set built over them, inside the clock. What a
resync into an empty staging could reach by building its indexes last.

    python -m bench.plain_copy --prod URI --staging URI [--batch N] --stats-file F
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from stagesync.rules.sync_meta import SYNC

from bench.minimal_sync import prepare_staging, sync_meta
from bench.procs import collection, peak_rss_mb, write_json
from bench.workload import BUSINESS_KEY

BATCH = 1000  # documents per getMore and per insert_many (the product's resync chunk size)


def copy_all(prod_uri: str, staging_uri: str, source: str, target: str, batch: int,
             product_indexes: bool = False, key_fields: Sequence[str] = BUSINESS_KEY,
             indexes_after: bool = False) -> dict[str, Any]:
    prod: MongoClient[Any] = MongoClient(prod_uri)
    staging: MongoClient[Any] = MongoClient(staging_uri)
    try:
        src, dst = collection(prod, source), collection(staging, target)
        prod.admin.command("ping")
        staging.admin.command("ping")  # connections open before the clock starts
        if product_indexes and not indexes_after:
            # before the clock, as the product's start-up creates them
            prepare_staging(dst, source, key_fields, [], product_indexes=True)
        setup_cpu = time.process_time()  # interpreter start-up, imports, connections
        started = time.monotonic()
        documents = inserts = 0
        buffer: list[dict[str, Any]] = []
        for doc in src.find({}, batch_size=batch):
            if product_indexes:
                doc[SYNC] = sync_meta(doc, key_fields, 0)
            buffer.append(doc)
            if len(buffer) >= batch:
                dst.insert_many(buffer, ordered=False)
                documents, inserts, buffer = documents + len(buffer), inserts + 1, []
        if buffer:
            dst.insert_many(buffer, ordered=False)
            documents, inserts = documents + len(buffer), inserts + 1
        if product_indexes and indexes_after:
            prepare_staging(dst, source, key_fields, [], product_indexes=True)
        seconds = time.monotonic() - started
    finally:
        prod.close()
        staging.close()
    return {"documents": documents, "seconds": seconds, "insert_many_calls": inserts,
            "setup_cpu_seconds": setup_cpu,
            # VmHWM, like every other process in the table (ru_maxrss can carry the forking
            # runner's high-water mark over into the child)
            "peak_rss_mb": peak_rss_mb(os.getpid()) or 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plain find + insert_many copy (resync limit).")
    parser.add_argument("--prod", required=True)
    parser.add_argument("--staging", required=True)
    parser.add_argument("--source", default="production.orders")
    parser.add_argument("--target", default="staging.orders")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--stats-file", type=Path, required=True)
    parser.add_argument("--product-indexes", action="store_true",
                        help="into a collection with the product's indexes, with _sync")
    parser.add_argument("--indexes-after", action="store_true",
                        help="with --product-indexes: build the indexes after the copy")
    args = parser.parse_args(argv)
    write_json(args.stats_file, copy_all(args.prod, args.staging, args.source, args.target,
                                         args.batch, args.product_indexes,
                                         indexes_after=args.indexes_after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
