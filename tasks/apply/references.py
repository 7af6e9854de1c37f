"""References at apply time: look up the staging copies of referenced documents, and remember
the references whose copy is not there yet, so they are rewritten when it arrives.

The race between an apply that writes a reference and the apply that creates the referenced
copy is closed by ordering, with no lock: the referencing side records its pending references
*before* it looks the copies up a last time, and the referenced side writes its copies *before*
it reads the pending references. Whatever the interleaving, one of the two sees the other:
either the last lookup finds the copy, or the copy's apply finds the pending record and has the
referencing documents applied again.

Subsets that follow a reference (`subset: {follow: PATH}`) are decided here too, from the same
lookup: a document is in when a document it references at PATH has a live copy in staging.
When a copy becomes live or stops being live, the documents that follow it are read from
production by that path (one query per following collection) and applied again, so they come
in or go out within seconds. No pending record is needed for that: the copy is written before
production is asked for its followers, and a follower inserted after that query finds the live
copy by itself.

Cost per batch: one query per referenced collection (by `_sync.pid`, indexed); a second one
plus a state write only when some copies are missing; in a collection that others reference,
one state query after its writes; and two production queries per following collection when
copies entered or left (whether any follower holds a DBRef, then the followers).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo.collection import Collection
from pymongo.database import Database
from stagesync.deployments.in_lists import configured, in_lists
from stagesync.deployments.production import ReadOnlyCollection
from stagesync.deployments.staging import SIMPLE
from stagesync.protocol.names import scoped_name, split_scope
from stagesync.rules.document import Document
from stagesync.rules.identity import decode_id, encode_id
from stagesync.rules.paths import get_path, split_dotted
from stagesync.rules.references import Reference, referenced_ids, translate
from stagesync.rules.sync_meta import PID_FIELD, SYNC, read_meta
from stagesync.state.pending_references import COLL, PID, TPID, PendingReferences, pending_id

# Enqueue applies again, of documents whose references can now be translated or whose subset
# membership changed: (referencing collection, its pids). Not a re-publish (a lost message sent
# again, `watcher.loop`): new work for documents already applied.
ApplyAgain = Callable[[str, list[str]], None]


@dataclass(frozen=True)
class Target:
    """A referenced collection's staging copies, and its soft-delete flag (for liveness)."""

    collection: Collection[Document]
    soft_delete_field: str = "deleted"


@dataclass(frozen=True)
class Follower:
    """A collection whose subset follows this one through `reference`; read in production."""

    name: str
    reference: Reference
    production: ReadOnlyCollection


@dataclass(frozen=True)
class SubsetLinks:
    """How subsets follow references: this collection's own `subset.follow` reference, and
    the collections whose subsets follow this one."""

    follow: Reference | None = None
    followers: Sequence[Follower] = ()
    # The followed collection is itself a subset in this target (a `percent` sample, or a
    # subset that follows another): most followers are then outside, and are not tombstoned
    # (`rules.plan.plan_batch`, `tasks.apply.applier.confirm_entered`).
    follows_subset: bool = False


def followers_of(reference: Reference, ids: list[Any], dbrefs: bool) -> dict[str, Any]:
    """The production query for the documents that point at these `_id`s through
    `reference`: by value, and with `dbrefs` also as a DBRef's `$id`. Without it, the index
    on the path answers the query; with it, MongoDB scans the collection unless `PATH.$id` is
    indexed too (an `$or` uses indexes only when each of its branches has one)."""
    by_value = {reference.dotted: {"$in": ids}}
    if not dbrefs:
        return by_value
    return {"$or": [by_value, {f"{reference.dotted}.$id": {"$in": ids}}]}


def holds_embedded(production: ReadOnlyCollection, reference: Reference) -> bool:
    """Whether production holds an embedded document at the reference's path, which may be a
    DBRef, so that followers must be looked up by `PATH.$id` too. One `find_one` that MongoDB
    answers from the index on the path (type bounds); asked before each lookup, since a
    DBRef written after it is applied by its own change, against the copies then live."""
    return production.find_one({reference.dotted: {"$type": "object"}}) is not None


class ReferenceResolver:
    def __init__(
        self,
        name: str,
        references: tuple[Reference, ...],
        targets: Mapping[str, Target],
        state_db: Database[Document],
        referenced_by: Iterable[str] = (),
        apply_again: ApplyAgain | None = None,
        subset: SubsetLinks = SubsetLinks(),
        environment: str | None = None,
    ) -> None:
        self.name = name
        # In an environment, pending records name both sides by their scoped names
        # (`orders@pr-1` waits for `users@pr-1`): each target's references resolve inside it.
        self.environment = environment
        self.scope = scoped_name(name, environment)
        self.references = references
        self.targets = dict(targets)  # referenced collection name -> its staging copies
        self.pending = PendingReferences(state_db)
        self.referenced_by = frozenset(referenced_by)
        self.apply_again = apply_again
        self.follow = subset.follow
        self.followers = tuple(subset.followers)
        self.follows_subset = subset.follows_subset

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
        lookup, live = self._lookup(wanted)
        # A document outside a followed subset is not written, so nothing of it waits for a
        # copy: should its parent's copy go live meanwhile, that apply has it applied again
        # (`_followers_again`). Without this, every non-member left a record forever.
        members = {pid for pid, document in documents.items()
                   if document is not None and self._member(document, live)}
        missing = [key for key, pids in wanted.items() if key not in lookup and pids & members]
        if missing:
            # Record first, then look again: see the module docstring.
            self.pending.record(self.scope, [
                (pid, self._scoped(target), tpid)
                for target, tpid in missing for pid in sorted(wanted[(target, tpid)] & members)
            ])
            found, found_live = self._lookup(missing)
            live |= found_live
            if found:
                lookup.update(found)
                self.pending.forget(pending_id(self.scope, pid, self._scoped(target), tpid)
                                    for target, tpid in found
                                    for pid in wanted[(target, tpid)] & members)
        return {pid: translate(document, self.references, lookup)
                if document and self._member(document, live) else None
                for pid, document in documents.items()}

    def _scoped(self, collection: str) -> str:
        return scoped_name(collection, self.environment)

    def _member(self, document: Document, live: set[tuple[str, str]]) -> bool:
        """In the subset when following: a referenced document at `follow` has a live copy."""
        if self.follow is None:
            return True
        return any((self.follow.collection, target) in live
                   for target in referenced_ids(document, self.follow))

    def translate_known(self, documents: Mapping[str, Document | None]
                        ) -> dict[str, Document | None]:
        """`translate` that only reads (for `verify`): nothing is recorded as pending."""
        wanted = {
            (reference.collection, target)
            for document in documents.values() if document is not None
            for reference in self.references
            for target in referenced_ids(document, reference)
        }
        lookup, live = self._lookup(wanted)
        return {pid: translate(document, self.references, lookup)
                if document and self._member(document, live) else None
                for pid, document in documents.items()}

    def copies_written(self, staging_ids: Mapping[str, Any], changed: Iterable[str] = ()
                       ) -> None:
        """After this collection's writes: have the documents that were waiting for these
        copies applied again, where a copy's staging `_id` is not production's; and the
        followers of copies that became live or stopped being live (`changed`)."""
        self._followers_again(set(changed))
        if not self.referenced_by or not staging_ids:
            return
        entries = self.pending.waiting_for(self.scope, staging_ids)
        if not entries:
            return
        again: dict[str, set[str]] = defaultdict(set)
        for entry in entries:
            if encode_id(staging_ids[entry[TPID]]) != entry[TPID]:
                # Applied again in every target (the apply fans out): harmless where the
                # reference was already translated.
                again[split_scope(entry[COLL])[0]].add(entry[PID])
        if self.apply_again is not None:
            for collection, pids in again.items():
                self.apply_again(collection, sorted(pids))
        self.pending.forget(entry["_id"] for entry in entries)

    def _followers_again(self, changed: set[str]) -> None:
        if not changed or not self.followers or self.apply_again is None:
            return
        parents = [decode_id(pid) for pid in sorted(changed)]
        for follower in self.followers:
            dbrefs = holds_embedded(follower.production, follower.reference)
            pids = []
            for ids in in_lists(parents):
                query = followers_of(follower.reference, ids, dbrefs)
                pids += [encode_id(doc["_id"])
                         for doc in follower.production.find(query, {"_id": 1})]
            if pids:
                self.apply_again(follower.name, pids)

    def live_parents(self, after: str | None) -> list[str]:
        """The next `in_list_max` pids, in pid order after `after`, of the live copies (in
        this target) of the collection this one follows: a copy that reads only the
        followers of those (`tasks.full_resync.by_parents`) resumes at the last one done."""
        if self.follow is None:
            return []
        copies = self.targets[self.follow.collection]
        flag = split_dotted(copies.soft_delete_field)
        size = configured()
        pids: list[str] = []
        while True:
            page = list(copies.collection.find(
                {PID_FIELD: {"$gt": after} if after is not None else {"$exists": True}},
                {SYNC: 1, copies.soft_delete_field: 1}, sort=[(PID_FIELD, 1)], limit=size,
                collation=SIMPLE))
            pids += [document[SYNC]["pid"] for document in page
                     if not read_meta(document).deleted and get_path(document, flag) is not True]
            if len(page) < size or len(pids) >= size:
                return pids[:size]
            after = page[-1][SYNC]["pid"]

    def parent_copies(self) -> int:
        """How many copies (live or not) the followed collection has in this target, from
        the collection's metadata."""
        if self.follow is None:
            return 0
        return int(self.targets[self.follow.collection].collection
                   .estimated_document_count())

    def _lookup(self, keys: Iterable[tuple[str, str]]
                ) -> tuple[dict[tuple[str, str], Any], set[tuple[str, str]]]:
        """Staging `_id`s of the copies of these referenced documents, and which are live."""
        by_collection: dict[str, list[str]] = defaultdict(list)
        for target, tpid in keys:
            by_collection[target].append(tpid)
        found: dict[tuple[str, str], Any] = {}
        live: set[tuple[str, str]] = set()
        for target, tpids in by_collection.items():
            copies = self.targets[target]
            flag = split_dotted(copies.soft_delete_field)
            documents = (
                document for some in in_lists(tpids) for document in copies.collection.find(
                    {PID_FIELD: {"$in": some}}, {SYNC: 1, copies.soft_delete_field: 1},
                    collation=SIMPLE,
                )
            )
            for document in documents:
                key = (target, document[SYNC]["pid"])
                found[key] = document["_id"]
                if not read_meta(document).deleted and get_path(document, flag) is not True:
                    live.add(key)
        return found, live
