"""Staging I/O for one target collection: the reads a batch plan needs and its one bulk write.

Filters are written plainly (`{"_id": X, "_sync.v": V}`). Every query on `_sync.*` and on the
raw business-key fields runs with the simple collation, the collation of stagesync's indexes:
a staging collection restored with a case-insensitive default collation would otherwise make
`_sync.pid`s and `_sync.key`s that differ only in case match each other.
"""

from __future__ import annotations

import re
from collections.abc import Collection as AbstractCollection
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo import DeleteOne, InsertOne, MongoClient, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, WriteConcernError
from pymongo.write_concern import WriteConcern
from stagesync.deployments.in_lists import in_lists
from stagesync.deployments.staging import SIMPLE
from stagesync.protocol.names import DUPLICATE_KEY, KEY_INDEX, PID_INDEX
from stagesync.rules.document import Document
from stagesync.rules.identity import business_key, decode_id, encode_id, key_digest
from stagesync.rules.plan_types import UNSYNCED, CollectionRules, PlannedWrite, StagingView
from stagesync.rules.sync_meta import (
    DEAD_LETTER_FIELD,
    KEY_FIELD,
    PID_FIELD,
    SYNC,
    VERSION_FIELD,
    read_meta,
)
from stagesync.settings.collection import CollectionSettings

# Unique indexes whose duplicate-key errors mean "another apply got there first" (re-plan),
# as opposed to an index of the user's, which makes the write fail for good.
SYNC_INDEX_MARKERS = (PID_INDEX, KEY_INDEX, "_sync.pid", "_sync.key",
                      "_sync_pid", "_sync_key")



@dataclass
class WriteReport:
    """What one bulk write did, as far as the server tells per operation."""

    matched_all: bool = True
    failed: dict[int, tuple[int, str]] = field(default_factory=dict)  # index -> (code, message)
    raced: set[int] = field(default_factory=set)  # indexes that lost to another apply
    id_taken: set[int] = field(default_factory=set)  # inserts whose `_id` another holds


class TargetCollection:
    """One staging collection and the queries of the apply path."""

    def __init__(
        self,
        client: MongoClient[Document],
        settings: CollectionSettings,
        rules: CollectionRules,
        write_concern: WriteConcern | None = None,
    ) -> None:
        database = client[settings.target_db]
        self.collection: Collection[Document] = database.get_collection(
            settings.target_collection, write_concern=write_concern
        )
        self.settings = settings
        self.rules = rules
        self._first_key_field = settings.business_key[0]
        self._projection = {SYNC: 1, settings.soft_delete_field: 1}

    def read_view(
        self,
        pids: Sequence[str],
        production: Mapping[str, Mapping[str, Any] | None],
        whole: AbstractCollection[str] | bool = (),
        pid_span: Mapping[str, str] | None = None,
    ) -> StagingView:
        """Everything the planner may need, in one to three indexed queries.

        1. by recorded production `_id`; 2. by key digest, only for keys not already held by
        the documents found in 1; 3. documents never synced, by the raw business-key fields,
        only for keys nobody holds yet (first syncs of pre-existing staging data).
        Only `_sync` and the soft-delete flag are read, except for the staging `_id`s in
        `whole` (encoded, as the planner keeps them; or every document when `whole` is True),
        read in full.

        `pid_span`: the pids are the production documents of this span of `_sync.pid` (a
        condition: a resync's batch of a range of ObjectIds, `FIRST_OBJECT_ID`). The copies
        are then read with one range query, an index range scan, where a list costs one `$in`
        per `in_list_max` pids (on the test server 102 lists of 200 took 6.0 s of a 20,000-
        document resync's 18). The copies in the span that are not of these pids are the
        view's `others`: their production documents were not in the batch. More of them than
        of the batch's (production deleted most of the span) are not kept (`others` None), so
        that memory stays a batch's.
        """
        projection = None if whole is True else self._projection
        others: dict[str, Document] | None = {}
        if pid_span is None:
            by_pid = {doc[SYNC]["pid"]: doc for doc in self._find_in(PID_FIELD, pids, projection)}
        else:
            by_pid = {}
            batch = set(pids)
            for doc in self.collection.find({PID_FIELD: dict(pid_span)}, projection,
                                            collation=SIMPLE, batch_size=len(batch) + 1):
                pid = doc[SYNC]["pid"]
                if pid in batch:
                    by_pid[pid] = doc
                elif others is not None:
                    others[pid] = doc
                    if len(others) > len(batch):
                        others = None
        if whole and whole is not True:
            for doc in self._find_in("_id", [decode_id(i) for i in whole], None):
                pid = read_meta(doc).pid
                if pid in by_pid:
                    by_pid[pid] = doc
        wanted: dict[str, Mapping[str, Any]] = {}
        for pid in pids:
            document = production.get(pid)
            if document is None:
                continue
            key = self.rules.key_of(document)
            if key is not None and read_meta(by_pid.get(pid)).key != key:
                wanted[key] = document
        by_key: dict[str, Document] = {}
        for doc in by_pid.values():
            meta = read_meta(doc)
            if meta.key is not None:
                by_key[meta.key] = doc
        missing = [key for key in wanted if key not in by_key]
        if missing:
            batch = set(pids)
            for doc in self._find_in(KEY_FIELD, missing, projection):
                by_key[doc[SYNC]["key"]] = doc
                pid = doc[SYNC].get("pid")
                if pid in batch and pid not in by_pid:
                    # Written by another apply between our two reads: it is this pid's own.
                    by_pid[pid] = doc
        unsynced = self._unsynced_by_key(
            {key: wanted[key] for key in missing if key not in by_key}
        )
        complete = {encode_id(doc["_id"]) for doc in unsynced.values()}
        if whole is True:
            complete |= {encode_id(doc["_id"]) for doc in (*by_pid.values(), *by_key.values())}
        elif whole:
            complete |= set(whole)
        return StagingView(by_pid=by_pid, by_key=by_key, unsynced_by_key=unsynced,
                           whole=frozenset(complete), others=others)

    def _find_in(self, field: str, values: Iterable[Any],
                 projection: Mapping[str, Any] | None, in_id_order: bool = False,
                 **query: Any) -> Iterator[Document]:
        """Documents whose `field` is one of `values` (and that match `query`), one query per
        `IN_LIST_MAX` values (see `deployments.in_lists`)."""
        # The `_id` index has no collation; stagesync's own indexes have the simple one.
        collation = None if field == "_id" else SIMPLE
        sort = [("_id", 1)] if in_id_order else None
        for some in in_lists(values):
            # A first batch one longer than the list: lookups by `_id`, pid and key find at
            # most one document per value, so the first batch is never full, and the server
            # closes a cursor whose first batch is not full (cursor id 0): no getMore follows.
            # A batch exactly as long as the list can be full, and the server then keeps the
            # cursor open without looking further; pymongo's next getMore finds it empty, a
            # round trip for nothing on every apply (issue 31). (The never-synced lookup may
            # find more: the rest comes by getMore as usual.)
            yield from self.collection.find({field: {"$in": some}, **query}, projection,
                                            collation=collation, sort=sort,
                                            batch_size=len(some) + 1)

    def _unsynced_by_key(self, wanted: Mapping[str, Mapping[str, Any]]) -> dict[str, Document]:
        if not wanted:
            return {}
        # Distinct first values: every document of one key then comes from one query, in
        # `_id` order, so the oldest holder of a key is found first.
        firsts: dict[str, Any] = {}
        for document in wanted.values():
            values = business_key(document, self.rules.key_paths)
            if values is not None:
                firsts[encode_id(values[0])] = values[0]
        found: dict[str, Document] = {}
        unsynced = {SYNC: {"$exists": False}}
        for doc in self._find_in(self._first_key_field, firsts.values(), None,
                                 in_id_order=True, **unsynced):
            values = business_key(doc, self.rules.key_paths)
            if values is None:
                continue
            key = key_digest(values)
            if key in wanted and key not in found:
                found[key] = doc
        return found

    def execute(self, writes: Sequence[PlannedWrite],
                marks: Mapping[str, int] | None = None) -> WriteReport:
        """One unordered bulk write; per-operation failures come back by index. `marks`: the
        `_sync.dl` each target copy was read with, by encoded staging `_id` (absent: none)."""
        report = WriteReport()
        if not writes:
            return report
        operations = [_operation(write, marks or {}) for write in writes]
        expected_matches = sum(1 for write in writes if not write.is_insert)
        try:
            result = self.collection.bulk_write(operations, ordered=False)
            details: Mapping[str, Any] = result.bulk_api_result
        except BulkWriteError as error:
            details = error.details
            concern = details.get("writeConcernErrors") or []
            if concern:
                # Applied on the primary but not acknowledged as asked (wtimeout, a step-down):
                # it may roll back, so the batch is not done. Raised as transient: retried.
                first = concern[0]
                raise WriteConcernError(
                    str(first.get("errmsg", "write concern error")),
                    first.get("code"), dict(details),
                ) from error
            for failure in details.get("writeErrors", []):
                index = int(failure["index"])
                code = int(failure.get("code", 0))
                report.failed[index] = (code, str(failure.get("errmsg", ""))[:500])
                if code == DUPLICATE_KEY and _on_sync_index(failure):
                    report.raced.add(index)
                    if writes[index].is_insert and _on_id_index(failure):
                        report.id_taken.add(index)
        failed_matches = sum(1 for index in report.failed if not writes[index].is_insert)
        matched = int(details.get("nMatched", 0)) + int(details.get("nRemoved", 0))
        report.matched_all = matched >= expected_matches - failed_matches
        return report

    def documents(self, staging_ids: Iterable[Any]) -> dict[str, Document]:
        """Staging documents in full by `_id`, keyed by encoded `_id` (the dry run's before)."""
        return {encode_id(doc["_id"]): doc for doc in self._find_in("_id", staging_ids, None)}

    def live_holders(self, keys: Iterable[str]) -> set[str]:
        """The business keys that a live (not soft-deleted) staging document holds now."""
        return {
            doc[SYNC]["key"] for doc in self._find_in(KEY_FIELD, keys, {SYNC: 1})
            if not read_meta(doc).deleted
        }

    def mark_dead_lettered(self, versions: Mapping[str, int]) -> dict[str, int | None]:
        """Mark each pid's copy with its dead letter's version (`_sync.dl`, never lowered),
        then read the `_sync.v` each copy holds now: a copy written by a newer apply makes the
        dead letter obsolete (`state.dead_letters`: the marker)."""
        self.collection.bulk_write([
            UpdateOne({PID_FIELD: pid}, {"$max": {DEAD_LETTER_FIELD: version}},
                      collation=SIMPLE)
            for pid, version in versions.items()
        ], ordered=False)
        return self.versions_of(versions)

    def versions_of(self, pids: Iterable[str]) -> dict[str, int | None]:
        """The `_sync.v` now stored for each pid, to learn which writes of a round landed."""
        found: dict[str, int | None] = {}
        # Whole `_sync`, not dotted fields: some servers return dotted projections flattened.
        for doc in self._find_in(PID_FIELD, pids, {SYNC: 1}):
            found[doc[SYNC]["pid"]] = read_meta(doc).version
        return found


WriteOperation = InsertOne[Document] | UpdateOne | DeleteOne


def _on_sync_index(failure: Mapping[str, Any]) -> bool:
    """Whether a duplicate-key error comes from `_id` or stagesync's own unique indexes.

    MongoDB names the key pattern (`keyPattern`) since 4.4; the message names the index.
    """
    pattern = failure.get("keyPattern")
    if isinstance(pattern, Mapping) and pattern:
        return set(pattern) <= {"_id", "_sync.pid", "_sync.key"}
    message = str(failure.get("errmsg", ""))
    if any(marker in message for marker in SYNC_INDEX_MARKERS):
        return True
    return bool(re.search(r"(index: _id_ |\._id\b)", message))


def _on_id_index(failure: Mapping[str, Any]) -> bool:
    pattern = failure.get("keyPattern")
    if isinstance(pattern, Mapping) and pattern:
        return set(pattern) == {"_id"}
    return bool(re.search(r"(index: _id_ |\._id\b)", str(failure.get("errmsg", ""))))


def _operation(write: PlannedWrite, marks: Mapping[str, int]) -> WriteOperation:
    if write.is_insert:
        assert write.document is not None
        return InsertOne(write.document)
    query: dict[str, Any] = {"_id": write.staging_id}
    mark = None
    if write.expect is UNSYNCED:
        query[SYNC] = {"$exists": False}
    else:
        query[VERSION_FIELD] = write.expect
        # The dead-letter mark as read: a write never drops a mark it did not see, so a dead
        # letter recorded meanwhile makes it lose its race and be planned again, clear
        # included (`tasks.apply.applier._settle_dead_letters`).
        mark = marks.get(encode_id(write.staging_id)) if marks else None
        query[DEAD_LETTER_FIELD] = {"$exists": False} if mark is None else mark
    # No collation here: the filter's only string can be `_id`, unique under the collection's
    # own collation anyway, and only that collation lets a string `_id` use the `_id` index.
    if write.delete:
        return DeleteOne(query)
    update = write.update
    assert update is not None
    if mark is not None and isinstance(update, Mapping) and SYNC not in update.get("$set", {}):
        # A write that replaces `_sync` drops the mark anyway; the others drop it here. The
        # apply's clear then re-marks what a newer dead letter still needs.
        update = {**update, "$unset": {**update.get("$unset", {}), DEAD_LETTER_FIELD: ""}}
    return UpdateOne(query, update)
