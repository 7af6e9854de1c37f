"""References at apply time: look up the staging copies of referenced documents, and remember
the references whose copy is not there yet, so they are rewritten when it arrives.

The race between an apply that writes a reference and the apply that creates the referenced
copy is closed by ordering, with no lock: the referencing side records its pending references
*before* it looks the copies up a last time, and the referenced side writes its copies *before*
it reads the pending references. Whatever the interleaving, one of the two sees the other:
either the last lookup finds the copy, or the copy's apply finds the pending record and has the
referencing documents applied again.

Cost per batch: one query per referenced collection (by `_sync.pid`, indexed); a second one
plus a state write only when some copies are missing; and, in a collection that others
reference, one state query after its writes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database

from tasks.constants import PENDING_REFERENCES
from tasks.rules.identity import encode_id
from tasks.rules.references import Reference, referenced_ids, translate
from tasks.rules.sync_meta import PID_FIELD, SYNC
from tasks.staging import SIMPLE

Document = dict[str, Any]
Republish = Callable[[str, list[str]], None]  # (referencing collection, its pids)


class ReferenceResolver:
    def __init__(
        self,
        name: str,
        references: tuple[Reference, ...],
        targets: Mapping[str, Collection[Document]],
        state_db: Database[Document],
        referenced_by: Iterable[str] = (),
        republish: Republish | None = None,
    ) -> None:
        self.name = name
        self.references = references
        self.targets = dict(targets)  # referenced collection name -> its staging collection
        self.pending = state_db[PENDING_REFERENCES]
        self.referenced_by = frozenset(referenced_by)
        self.republish = republish

    def translate(self, documents: Mapping[str, Document | None]) -> dict[str, Document | None]:
        """The documents with their references translated (production `_id` -> staging)."""
        if not self.references:
            return dict(documents)
        wanted: dict[tuple[str, str], set[str]] = defaultdict(set)
        for pid, document in documents.items():
            if document is None:
                continue
            for reference in self.references:
                for target in referenced_ids(document, reference):
                    wanted[(reference.collection, target)].add(pid)
        lookup = self._lookup(wanted)
        missing = [key for key in wanted if key not in lookup]
        if missing:
            # Record first, then look again: see the module docstring.
            now = datetime.now(UTC)
            self.pending.bulk_write([
                UpdateOne({"_id": _pending_id(self.name, pid, target, tpid)},
                          {"$set": {"coll": self.name, "pid": pid, "target": target,
                                    "tpid": tpid, "at": now}}, upsert=True)
                for target, tpid in missing for pid in sorted(wanted[(target, tpid)])
            ], ordered=False)
            found = self._lookup(missing)
            if found:
                lookup.update(found)
                self.pending.delete_many({"_id": {"$in": [
                    _pending_id(self.name, pid, target, tpid)
                    for target, tpid in found for pid in wanted[(target, tpid)]
                ]}})
        return {pid: translate(document, self.references, lookup) if document else None
                for pid, document in documents.items()}

    def translate_known(self, documents: Mapping[str, Document | None]
                        ) -> dict[str, Document | None]:
        """`translate` that only reads (for `verify`): nothing is recorded as pending."""
        wanted = {
            (reference.collection, target)
            for document in documents.values() if document is not None
            for reference in self.references
            for target in referenced_ids(document, reference)
        }
        lookup = self._lookup(wanted)
        return {pid: translate(document, self.references, lookup) if document else None
                for pid, document in documents.items()}

    def copies_written(self, staging_ids: Mapping[str, Any]) -> None:
        """After this collection's writes: have the documents that were waiting for these
        copies applied again, where a copy's staging `_id` is not production's."""
        if not self.referenced_by or not staging_ids:
            return
        entries = list(self.pending.find({"target": self.name,
                                          "tpid": {"$in": list(staging_ids)}}))
        if not entries:
            return
        again: dict[str, set[str]] = defaultdict(set)
        for entry in entries:
            if encode_id(staging_ids[entry["tpid"]]) != entry["tpid"]:
                again[entry["coll"]].add(entry["pid"])
        if self.republish is not None:
            for collection, pids in again.items():
                self.republish(collection, sorted(pids))
        self.pending.delete_many({"_id": {"$in": [entry["_id"] for entry in entries]}})

    def _lookup(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        by_collection: dict[str, list[str]] = defaultdict(list)
        for target, tpid in keys:
            by_collection[target].append(tpid)
        found: dict[tuple[str, str], Any] = {}
        for target, tpids in by_collection.items():
            cursor = self.targets[target].find(
                {PID_FIELD: {"$in": tpids}}, {SYNC: 1}, collation=SIMPLE
            )
            for document in cursor:
                found[(target, document[SYNC]["pid"])] = document["_id"]
        return found


def pending_count(state_db: Database[Document], collection: str) -> int:
    return state_db[PENDING_REFERENCES].count_documents({"coll": collection})


def _pending_id(collection: str, pid: str, target: str, tpid: str) -> str:
    return "|".join((collection, target, tpid, pid))
