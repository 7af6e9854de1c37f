"""Resync baseline: a plain `find` + `insert_many` copy of production into an empty staging.

The physical limit of a full copy on these servers (issue 4): one client reads the whole
collection with a cursor and writes it in unordered `insert_many` calls of `--batch` documents.
No business keys, no merge, no versions, no metadata: it only works into an empty staging.
Timed from the `find` to the last insert's acknowledgement (process start-up excluded, as the
product's figure excludes its command's start-up).

    python -m bench.plain_copy --prod URI --staging URI [--batch N] --stats-file F
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from bench.procs import collection, peak_rss_mb, write_json

BATCH = 1000  # documents per getMore and per insert_many (the product's resync chunk size)


def copy_all(prod_uri: str, staging_uri: str, source: str, target: str, batch: int
             ) -> dict[str, Any]:
    prod: MongoClient[Any] = MongoClient(prod_uri)
    staging: MongoClient[Any] = MongoClient(staging_uri)
    try:
        src, dst = collection(prod, source), collection(staging, target)
        prod.admin.command("ping")
        staging.admin.command("ping")  # connections open before the clock starts
        started = time.monotonic()
        documents = inserts = 0
        buffer: list[dict[str, Any]] = []
        for doc in src.find({}, batch_size=batch):
            buffer.append(doc)
            if len(buffer) >= batch:
                dst.insert_many(buffer, ordered=False)
                documents, inserts, buffer = documents + len(buffer), inserts + 1, []
        if buffer:
            dst.insert_many(buffer, ordered=False)
            documents, inserts = documents + len(buffer), inserts + 1
        seconds = time.monotonic() - started
    finally:
        prod.close()
        staging.close()
    return {"documents": documents, "seconds": seconds, "insert_many_calls": inserts,
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
    args = parser.parse_args(argv)
    write_json(args.stats_file, copy_all(args.prod, args.staging, args.source, args.target,
                                         args.batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
