"""A resync into an empty target loads like a bulk loader: some indexes are built after it.

mongorestore and MongoDB's initial sync insert the documents first and build the secondary
indexes over them after, because building an index costs the server far less than maintaining
it on every insert (on SecantusDB the inserts into stagesync's index set were 13.8-16.4 s of a
14-17 s profile of a 20,000-document resync). A resync whose target was empty when it was set
up does the same with the indexes in `deployments.staging_indexes.DEFERRED`: the unique
business-key digest (`_sync.key`), the raw business key, the purge's `_sync.deletedAt` and the
tombstones' TTL (20,000 documents at 2 ms: the staging server's inserts 12.6 -> 4.6 s, the
build after 2.5 s, the resync 10.8 -> 9.1 s). It keeps
`_sync.pid`: every lookup by production `_id` uses it (the stream's applies of this collection,
other collections' references into it while they are copied beside it, the copy's own lost
races), and its uniqueness keeps one copy per production document while the copy races the
stream. On the test server it is most of what is left (its inserts: 1.4 s without it).

What the unique `_sync.key` guarded meanwhile, and how it is made good: the stream keeps
applying during the load (nothing is held back; its lookups by business key scan until the
index exists), so two copies of different production documents may take one business key,
where the index would have refused the second write and sent it through the key-conflict
path. Before the build, each business key held twice keeps one copy (`rules.key_duplicates`)
and the others are removed; after the build they are applied again through the normal path,
which finds the key held and decides as for any conflict. A duplicate written between that
look and the build makes the build fail (11000): it is looked for again, up to
`MAX_BUILDS` times. Once the copy is done that takes two of the stream's applies inserting
one new business key at the same moment: every apply looks the key up first.

The build runs where the copy ends (`tasks.resync._open_sweep`), before the resync moves on,
so a resync is never done while its target lacks an index; a build interrupted by a worker's
death or a time limit is run again by the task's retry (creating an index that exists, or is
being built, is no error). A resync that failed before its build leaves the indexes to the
next resync of the collection (`complete_indexes` at its set-up) or to the next start-up.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import OperationFailure
from stagesync.deployments.in_lists import in_lists
from stagesync.deployments.staging import SIMPLE
from stagesync.deployments.staging_indexes import deferred_indexes, drop_deferred, ensure
from stagesync.rules.key_duplicates import surplus_copies
from stagesync.rules.sync_meta import KEY_FIELD, SYNC, read_meta
from stagesync.tasks.apply.applier import apply_changes
from stagesync.tasks.apply.context import WriteErrors
from stagesync.tasks.full_resync.chunks import dead_letter_refused
from stagesync.tasks.runtime import Runtime

log = logging.getLogger("stagesync.resync")

MAX_BUILDS = 4
DUPLICATE_KEY_CODES = frozenset({11000, 11001})


def defer_indexes(runtime: Runtime, collection: str) -> list[str]:
    """Drop the deferred indexes of a target about to be loaded; the names dropped."""
    dropped = drop_deferred(runtime.context(collection).target.collection)
    log.info("resync loads before building indexes",
             extra={"collection": collection, "indexes": dropped})
    return dropped


def complete_indexes(runtime: Runtime, collection: str) -> Counter[str]:
    """Give way the copies that share a business key, build the deferred indexes, then apply
    the removed copies again; the outcomes of those applies."""
    context = runtime.context(collection)
    target = context.target.collection
    started = time.monotonic()
    removed: list[str] = []
    for attempt in range(1, MAX_BUILDS + 1):
        removed += remove_key_duplicates(target)
        try:
            ensure(target, deferred_indexes(context.settings))
            break
        except OperationFailure as error:
            if error.code not in DUPLICATE_KEY_CODES or attempt == MAX_BUILDS:
                raise
    outcomes = _apply_again(runtime, collection, removed)
    log.info("resync built its indexes after the copy",
             extra={"collection": collection, "seconds": round(time.monotonic() - started, 2),
                    "key_duplicates": len(removed), "summary": dict(outcomes)})
    return outcomes


def remove_key_duplicates(target: Collection[dict[str, Any]]) -> list[str]:
    """Remove all but one copy of each business key held twice; the removed copies' pids."""
    held_twice = [group["_id"] for group in target.aggregate([
        {"$match": {KEY_FIELD: {"$exists": True}}},
        {"$group": {"_id": f"${KEY_FIELD}", "copies": {"$sum": 1}}},
        {"$match": {"copies": {"$gt": 1}}},
    ], allowDiskUse=True, collation=SIMPLE)]
    by_key: dict[str, list[dict[str, Any]]] = {}
    for keys in in_lists(held_twice):
        for copy in target.find({KEY_FIELD: {"$in": keys}}, {SYNC: 1}, collation=SIMPLE):
            by_key.setdefault(str(read_meta(copy).key), []).append(copy)
    surplus = [copy for copies in by_key.values() for copy in surplus_copies(copies)]
    for ids in in_lists([copy["_id"] for copy in surplus]):
        target.delete_many({"_id": {"$in": ids}})
    return [pid for copy in surplus if (pid := read_meta(copy).pid) is not None]


def _apply_again(runtime: Runtime, collection: str, pids: list[str]) -> Counter[str]:
    """The removed copies' documents, through the normal apply (it reads production again)."""
    outcomes: Counter[str] = Counter()
    context = runtime.context(collection)
    for batch in in_lists(sorted(set(pids))):
        try:
            result = apply_changes(context, dict.fromkeys(batch, "resync"))
        except WriteErrors as refused:
            result = dead_letter_refused(runtime, collection, refused, "resync")
        outcomes.update(result.outcomes)
    return outcomes
