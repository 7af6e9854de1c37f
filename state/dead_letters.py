"""The dead-letter store: changes that could not be applied, kept in staging with their reason.

One entry per production document and collection (`<collection>|<pid>`), so a document that
keeps failing updates its entry instead of piling up copies. Entries hold the production `_id`,
the operation, the reason and a short error text, never the document body (it may hold PII).

**The signal that lets an apply skip its clear** (issue 31). Most applies land documents that
have no dead letter, and asking the store after each one cost a staging round trip. So:
- every `record()` first bumps a generation on the collection's version counter document
  (`state.versions`), which every apply reads anyway when it takes its version;
- `settle()` (the watcher, every few seconds) writes that generation down as clean when no entry
  of the collection, in any scope, is open, and no `record()` began within `SIGNAL_GRACE`;
- an apply that found the generation clean when it took its version may skip the clear for the
  documents whose write proved, by its own filter, that no dead letter had marked them
  (`tasks.apply.applier`); every other document is cleared as before.
A `record()` that begins after such an apply took its version is handled at the document: once
its entries are written, the scope's marker (`register_marker`, installed by the apply context of
every worker process) marks each document's copy in staging and resolves the entries whose copy
a newer apply has already written. The marker only runs when a version was taken after the
verdict's own, since only then can an apply be in that window.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, IndexModel, ReturnDocument, UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError
from stagesync.protocol.names import (
    COUNTERS,
    DEAD_LETTERS,
    DEAD_LETTERS_INDEX,
    DUPLICATE_KEY,
    RESOLVED_TTL_INDEX,
    SCOPE_SEPARATOR,
    split_scope,
    version_counter_id,
)

COLLECTION = DEAD_LETTERS
# Fields of an entry (`_id`: `entry_id`).
COLLECTION_FIELD = "collection"
PID = "pid"  # the production `_id`, encoded
OP = "op"  # the operation seen
REASON = "reason"  # key_conflict, missing_key, schema_version, too_large, write_error, ...
ERROR = "error"  # a short text, never a document's value
KEY = "key"  # the business-key digest, for key conflicts
VERSION = "version"  # of the apply that decided last
STATE = "state"  # OPEN or RESOLVED
ATTEMPTS = "attempts"
FIRST_SEEN = "firstSeen"
LAST_SEEN = "lastSeen"
RESOLVED_AT = "resolvedAt"
EXPIRE_AT = "expireAt"  # TTL of a resolved entry
OPEN = "open"
RESOLVED = "resolved"
# A resolved entry only has to outlive applies that read production before the resolving one.
RESOLVED_KEPT = timedelta(hours=1)

# The signal, on the collection's version counter document (see the module docstring).
SIGNAL_GENERATION = "deadLetters"  # bumped by every record(), before its entries are written
SIGNAL_AT = "deadLettersAt"  # when the latest record() began, by the recording process's clock
SIGNAL_CLEAN = "deadLettersClean"  # the generation at which no entry was open
# Longer than any record() can take between its signal and its bulk write (one command, bounded
# by the staging client's 60 s socket timeout), plus clock skew between hosts: a settle that
# came in between could otherwise miss entries about to be written.
SIGNAL_GRACE = timedelta(minutes=5)

# What marks dead-lettered documents in a scope's staging copies, and resolves the entries whose
# copy a newer apply already wrote: pid -> the entry's version. Installed per scope by the apply
# contexts of this process (`tasks.apply.context`).
Marker = Callable[[Mapping[str, int]], None]
_markers: dict[str, Marker] = {}

_SIMPLE = {"locale": "simple"}
INDEXES = [
    IndexModel([(COLLECTION_FIELD, ASCENDING), (STATE, ASCENDING), (REASON, ASCENDING),
                (KEY, ASCENDING)], name=DEAD_LETTERS_INDEX, collation=_SIMPLE),
    IndexModel([(EXPIRE_AT, ASCENDING)], name=RESOLVED_TTL_INDEX, expireAfterSeconds=0,
               collation=_SIMPLE),
]


@dataclass(frozen=True)
class DeadLetterEntry:
    collection: str
    pid: str
    op: str
    reason: str
    error: str
    # Version of the apply that gave up: entries only ever move forward in versions.
    version: int
    key: str | None = None


def entry_id(collection: str, pid: str) -> str:
    return f"{collection}|{pid}"


def register_marker(scope: str, marker: Marker) -> None:
    """Install the marker of a scope's copies (the latest one built in this process wins)."""
    _markers[scope] = marker


def possibly_open(counter: Mapping[str, Any]) -> bool:
    """Whether, as a version counter document reads, an entry of its collection may be open:
    unknown until a settle has seen the store clean at the current generation."""
    return SIGNAL_CLEAN not in counter or counter.get(SIGNAL_GENERATION, 0) != counter[SIGNAL_CLEAN]


class DeadLetterStore:
    """Entries are `open` until an apply with a newer version lands the document; they are
    then kept as `resolved` (with that version) for an hour, so a slower apply that read
    production earlier cannot re-open them with a stale reason."""

    def __init__(self, state_db: Database[dict[str, Any]]) -> None:
        self.entries = state_db[COLLECTION]
        self.counters = state_db[COUNTERS]

    def record(self, entries: Iterable[DeadLetterEntry]) -> int:
        """Open (or update) entries, unless a newer apply already decided about the document.

        The signal first, then one unordered bulk write, then the marker where an apply may be
        skipping its clear (see the module docstring). An entry that holds a newer version does
        not match the filter, and its upsert fails on the `_id` (11000): that verdict is stale,
        skipped.
        """
        entries = list(entries)
        if not entries:
            return 0
        taken = self._signal({split_scope(entry.collection)[0] for entry in entries})
        recorded = self._write(entries)
        self._mark(entries, taken)
        return recorded

    def _signal(self, collections: Iterable[str]) -> dict[str, int]:
        """Bump each collection's generation; the last version each had handed out."""
        now = datetime.now(UTC)
        taken: dict[str, int] = {}
        for collection in collections:
            before = self.counters.find_one_and_update(
                {"_id": version_counter_id(collection)},
                {"$inc": {SIGNAL_GENERATION: 1}, "$max": {SIGNAL_AT: now}},
                upsert=True, return_document=ReturnDocument.BEFORE,
            ) or {}
            taken[collection] = int(before.get("value") or 0)
        return taken

    def _mark(self, entries: list[DeadLetterEntry], taken: Mapping[str, int]) -> None:
        """Run the scope's marker for the entries whose verdict is older than the last version
        handed out when they were signalled: an apply holding such a version may have found
        the store clean and be about to land the document without clearing."""
        by_scope: dict[str, dict[str, int]] = {}
        for entry in entries:
            if entry.version < taken[split_scope(entry.collection)[0]]:
                versions = by_scope.setdefault(entry.collection, {})
                versions[entry.pid] = max(entry.version, versions.get(entry.pid, 0))
        for scope, versions in by_scope.items():
            marker = _markers.get(scope)
            if marker is not None:
                marker(versions)

    def _write(self, entries: list[DeadLetterEntry]) -> int:
        now = datetime.now(UTC)  # firstSeen, set only when the entry is inserted
        operations = [
            UpdateOne(
                {"_id": entry_id(entry.collection, entry.pid),
                 VERSION: {"$lt": entry.version}},
                {
                    "$set": {
                        STATE: OPEN, OP: entry.op, REASON: entry.reason,
                        ERROR: entry.error[:1000], KEY: entry.key,
                        VERSION: entry.version,
                    },
                    "$currentDate": {LAST_SEEN: True},
                    "$unset": {RESOLVED_AT: "", EXPIRE_AT: ""},
                    "$inc": {ATTEMPTS: 1},
                    "$setOnInsert": {
                        COLLECTION_FIELD: entry.collection, PID: entry.pid, FIRST_SEEN: now,
                    },
                },
                upsert=True,
            )
            for entry in entries
        ]
        try:
            result = self.entries.bulk_write(operations, ordered=False)
            return result.matched_count + result.upserted_count
        except BulkWriteError as error:
            details = error.details
            if any(failure.get("code") != DUPLICATE_KEY for failure in details["writeErrors"]):
                raise
            if details.get("writeConcernErrors"):
                raise
            return int(details.get("nMatched", 0)) + int(details.get("nUpserted", 0))

    def versions(self, collection: str, pids: Iterable[str]) -> dict[str, tuple[int, bool]]:
        """pid -> (version, open) of the entries these pids have, open or resolved: one
        indexed `_id` read."""
        ids = [entry_id(collection, pid) for pid in pids]
        if not ids:
            return {}
        return {doc[PID]: (int(doc.get(VERSION) or 0), doc.get(STATE) == OPEN)
                for doc in self.entries.find({"_id": {"$in": ids}}, {PID: 1, VERSION: 1, STATE: 1})}

    def clear(self, collection: str, pids: Iterable[str], older_than: int) -> int:
        """Resolve entries that an apply with version `older_than` has made obsolete.

        Without first asking whether the store is empty: a cache of "empty" shared by no one
        would let an entry recorded by another worker outlive the apply that resolved it. (What
        lets an apply skip this is the signal: see the module docstring.)
        """
        ids = [entry_id(collection, pid) for pid in pids]
        if not ids:
            return 0
        query = {"_id": {"$in": ids}, VERSION: {"$lt": older_than}}
        update = {"$set": {STATE: RESOLVED, VERSION: older_than,
                           EXPIRE_AT: datetime.now(UTC) + RESOLVED_KEPT},
                  "$currentDate": {RESOLVED_AT: True}}
        return int(self.entries.update_many(query, update).modified_count)

    def waiting_on_keys(self, collection: str, keys: Iterable[str]) -> list[str]:
        """Pids dead-lettered as key conflicts on one of these business keys."""
        wanted = list(keys)
        if not wanted:
            return []
        query = {COLLECTION_FIELD: {"$eq": collection}, STATE: {"$eq": OPEN},
                 REASON: {"$eq": "key_conflict"}, KEY: {"$in": wanted}}
        return [doc[PID] for doc in self.entries.find(query, {PID: 1})]

    def list(
        self, collection: str | None = None, reason: str | None = None, limit: int = 0
    ) -> Iterator[dict[str, Any]]:
        query: dict[str, Any] = {STATE: {"$eq": OPEN}}
        if collection:
            query[COLLECTION_FIELD] = {"$eq": collection}
        if reason:
            query[REASON] = {"$eq": reason}
        return iter(self.entries.find(query, limit=limit).sort(FIRST_SEEN, 1))

    def waiting_scopes(self, collection: str, reason: str, before: datetime) -> list[str]:
        """The environments' scopes of `collection` (`orders@pr-1`) that hold open entries
        of `reason` no apply has touched since `before`."""
        return sorted(self.entries.distinct(COLLECTION_FIELD, {
            COLLECTION_FIELD: {"$regex": f"^{re.escape(collection)}@"}, STATE: {"$eq": OPEN},
            REASON: {"$eq": reason}, LAST_SEEN: {"$lt": before}}))

    def get(self, collection: str, pid: str) -> dict[str, Any] | None:
        return self.entries.find_one(
            {"_id": entry_id(collection, pid), STATE: {"$eq": OPEN}}
        )

    def settle(self, collection: str, now: datetime | None = None) -> bool:
        """Write the collection's generation down as clean when no entry of it, in any scope,
        is open and no record() began within SIGNAL_GRACE; whether it is clean now.

        The generation is read first and the write is conditional on it: a record() that
        signals after the read changes it, so its entries are never declared absent."""
        counter_id = version_counter_id(collection)
        counter = self.counters.find_one({"_id": counter_id})
        if counter is None:
            return False  # no apply took a version yet: nothing reads the signal
        if not possibly_open(counter):
            return True
        at = counter.get(SIGNAL_AT)
        if isinstance(at, datetime):
            at = at if at.tzinfo else at.replace(tzinfo=UTC)
            if at > (now or datetime.now(UTC)) - SIGNAL_GRACE:
                return False
        scoped = re.compile("^" + re.escape(collection + SCOPE_SEPARATOR))
        query = {STATE: {"$eq": OPEN}, COLLECTION_FIELD: {"$in": [collection, scoped]}}
        if self.entries.find_one(query, {"_id": 1}) is not None:
            return False
        generation = counter.get(SIGNAL_GENERATION)
        written = self.counters.update_one({"_id": counter_id, SIGNAL_GENERATION: generation},
                                           {"$set": {SIGNAL_CLEAN: generation or 0}})
        return written.modified_count == 1

    def count(self, collection: str | None = None) -> int:
        query: dict[str, Any] = {STATE: {"$eq": OPEN}}
        if collection:
            query[COLLECTION_FIELD] = {"$eq": collection}
        return sum(1 for _ in self.entries.find(query, {"_id": 1}))

    def purge(self, collection: str | None = None, pids: Iterable[str] | None = None) -> int:
        query: dict[str, Any] = {}
        if collection:
            query[COLLECTION_FIELD] = {"$eq": collection}
        if pids is not None:
            if not collection:
                raise ValueError("purging chosen entries needs their collection")
            query["_id"] = {"$in": [entry_id(collection, pid) for pid in pids]}
        return int(self.entries.delete_many(query).deleted_count)


def summarize(entries: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Entries per reason, for `status` and `dlq list`."""
    counts: dict[str, int] = {}
    for entry in entries:
        counts[str(entry.get(REASON))] = counts.get(str(entry.get(REASON)), 0) + 1
    return counts
