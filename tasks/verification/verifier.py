"""Verification: does staging hold what production holds, on production's fields?

Production documents are masked with the current PII rules, then compared with their staging
documents (found by recorded production `_id`) on the leaf paths production owns, ignoring
staging-only fields and the soft-delete flag. Also reported: production documents missing in
staging, staging documents still live whose production document is gone, and dead-lettered
ones. Under live writes a first pass can catch changes in flight, so mismatches are
re-checked once the pipeline has caught up, and only those that persist are reported.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import bson
import redis
from stagesync.deployments.in_lists import in_lists
from stagesync.deployments.index_mirror import collection_drift
from stagesync.deployments.production import ProductionReader, read_documents
from stagesync.deployments.staging import SIMPLE, connect_staging
from stagesync.protocol.names import watcher_key
from stagesync.rules.identity import decode_id, encode_id
from stagesync.rules.merge import (
    owned_paths,
    production_content,
    production_view,
    shared_last,
    shared_parents,
)
from stagesync.rules.paths import Path, join_dotted, leaf_paths
from stagesync.rules.pii import Masker
from stagesync.rules.plan_types import CollectionRules
from stagesync.rules.references import Reference, reference_values, references_of
from stagesync.rules.subset import in_sample
from stagesync.rules.sync_meta import PID_FIELD, SYNC, read_meta
from stagesync.settings.collection import CollectionSettings
from stagesync.settings.model import Settings
from stagesync.state.database import state_database
from stagesync.state.dead_letters import PID, REASON, DeadLetterStore
from stagesync.state.index_mirror_records import index_mirror_records
from stagesync.tasks.apply.references import ReferenceResolver, SubsetLinks, Target

CHUNK = 1000
RECHECKS = 3


@dataclass
class Report:
    collection: str
    production_documents: int = 0
    staging_live: int = 0
    staging_soft_deleted: int = 0
    staging_unsynced: int = 0
    compared: int = 0
    sampled: bool = False
    missing_in_staging: list[str] = field(default_factory=list)
    deleted_in_staging: list[str] = field(default_factory=list)
    gone_in_production: list[str] = field(default_factory=list)
    dead_lettered: dict[str, str] = field(default_factory=dict)
    different: dict[str, list[str]] = field(default_factory=dict)
    dangling: dict[str, list[str]] = field(default_factory=dict)  # reference path -> pids
    orphans: list[str] = field(default_factory=list)  # live copies whose followed parent is not
    # Index drift against production (deployments.index_mirror); reported beside the documents,
    # it does not make them unequal.
    indexes: dict[str, Any] = field(default_factory=dict)

    @property
    def equal(self) -> bool:
        return not (self.missing_in_staging or self.deleted_in_staging
                    or self.gone_in_production or self.dead_lettered or self.different
                    or self.dangling or self.orphans)

    def mismatched(self) -> set[str]:
        return (set(self.missing_in_staging) | set(self.deleted_in_staging)
                | set(self.gone_in_production) | set(self.different) | set(self.dead_lettered)
                | {pid for pids in self.dangling.values() for pid in pids}
                | set(self.orphans))

    def as_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection, "equal": self.equal, "sampled": self.sampled,
            "counts": {
                "production": self.production_documents, "staging_live": self.staging_live,
                "staging_soft_deleted": self.staging_soft_deleted,
                "staging_never_synced": self.staging_unsynced, "compared": self.compared,
            },
            "missing_in_staging": self.missing_in_staging,
            "soft_deleted_in_staging_but_live": self.deleted_in_staging,
            "live_in_staging_but_gone": self.gone_in_production,
            "dead_lettered": self.dead_lettered,
            "different_fields": self.different,
            "dangling_references": self.dangling,
            "outside_subset_closure": self.orphans,
            "indexes": self.indexes,
        }


class Verifier:
    def __init__(self, settings: Settings, collection: CollectionSettings) -> None:
        self.settings = settings
        self.collection = collection
        self.rules = CollectionRules.from_settings(collection)
        self.masker = Masker.from_settings(collection, settings.secret_bytes())
        self.production = ProductionReader(settings.prod, serverSelectionTimeoutMS=10_000)
        self.source = self.production.collection(collection)
        self.staging_client = connect_staging(settings.staging, serverSelectionTimeoutMS=10_000)
        self.target = self.staging_client[collection.target_db][collection.target_collection]
        state_db = state_database(self.staging_client, settings.staging)
        self.dead_letters = DeadLetterStore(state_db)
        self.references = references_of(collection.references)
        targets = {}
        self.referenced_sources = {}
        for name in {reference.collection for reference in self.references}:
            other = settings.collection(name)
            targets[name] = Target(self.staging_client[other.target_db][other.target_collection],
                                   other.soft_delete_field)
            self.referenced_sources[name] = self.production.collection(other)
        follow = collection.subset.follow if collection.subset else None
        self.follow = Reference(follow, collection.references[follow]) if follow else None
        self.resolver = ReferenceResolver(
            collection.name, self.references, targets,
            state_db, subset=SubsetLinks(self.follow),
        )
        self.secret = settings.secret_bytes()

    def close(self) -> None:
        self.production.close()
        self.staging_client.close()

    def full_report(self, sample: int = 0) -> Report:
        report = Report(self.collection.name, sampled=sample > 0)
        ids = [doc["_id"] for doc in self.source.find(self.collection.filter or {}, {"_id": 1})
               if self._sampled(encode_id(doc["_id"]))]
        chosen = random.sample(ids, sample) if 0 < sample < len(ids) else ids
        members = self._compare(report, chosen)
        # Following a reference, membership is known once each document is looked at.
        report.production_documents = len(ids) if sample else len(members)
        self._count_staging(report, None if sample else members)
        return report

    def _sampled(self, pid: str) -> bool:
        subset = self.collection.subset
        return subset is None or subset.percent is None or in_sample(
            pid, subset.percent, self.secret)

    def recheck(self, previous: Report) -> Report:
        """Compare again only the documents that differed."""
        report = Report(previous.collection, sampled=previous.sampled,
                        production_documents=previous.production_documents,
                        staging_live=previous.staging_live,
                        staging_soft_deleted=previous.staging_soft_deleted,
                        staging_unsynced=previous.staging_unsynced)
        pids = sorted(previous.mismatched())
        present = {encode_id(d["_id"]): d["_id"] for d in read_documents(
            self.source, [decode_id(p) for p in pids], self.collection.filter)
            if self._sampled(encode_id(d["_id"]))}
        members = self._compare(report, list(present.values()))
        gone = [p for p in pids if p not in members]
        parents: dict[str, list[Any]] = {}
        for pid in gone:
            doc = self.target.find_one({PID_FIELD: {"$eq": pid}}, collation=SIMPLE)
            if doc is not None and not read_meta(doc).deleted:
                report.gone_in_production.append(pid)
                if self.follow is not None:
                    parents[pid] = reference_values(doc, self.follow)
        if parents:
            # A live copy whose parent copy is not live is outside the subset as staging
            # stands, and it breaks the closure: say both, as the full report does.
            self._closure(report, parents)
        return report

    def _compare(self, report: Report, ids: list[Any]) -> set[str]:
        """Compare these production documents with their copies; returns the pids in the
        collection's subset (all of them without one)."""
        members: set[str] = set()
        # Open dead letters, read once for the whole comparison (not once per chunk).
        dead = {entry[PID]: entry[REASON]
                for entry in self.dead_letters.list(self.collection.name)}
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start:start + CHUNK]
            masked = {
                encode_id(doc["_id"]): self.masker.mask(doc)
                for doc in read_documents(self.source, chunk, self.collection.filter)
            }
            # What the sync writes: references translated to the staging copies' `_id`s.
            production = self.resolver.translate_known(masked)
            staging = {
                doc[SYNC]["pid"]: doc
                for pids in in_lists(production)
                for doc in self.target.find({PID_FIELD: {"$in": pids}}, collation=SIMPLE)
            }
            self._dangling(report, masked, staging)
            for pid, document in production.items():
                if document is None:
                    continue  # outside the subset: staging must not hold it live
                members.add(pid)
                report.compared += 1
                if pid in dead:
                    report.dead_lettered[pid] = dead[pid]
                    continue
                mirror = staging.get(pid)
                if mirror is None:
                    report.missing_in_staging.append(pid)
                    continue
                meta = read_meta(mirror)
                if meta.deleted:
                    report.deleted_in_staging.append(pid)
                    continue
                paths = _differences(document, mirror, self.rules)
                if paths:
                    report.different[pid] = paths
        return members

    def _dangling(self, report: Report, production: dict[str, Any],
                  staging: dict[str, dict[str, Any]]) -> None:
        """References whose staging value matches no staging document of the referenced
        collection while production's value matches a production document."""
        for reference in self.references:
            staged = {pid: reference_values(doc, reference) for pid, doc in staging.items()}
            found = _existing(self.resolver.targets[reference.collection].collection,
                              [v for values in staged.values() for v in values])
            broken = [pid for pid, values in staged.items()
                      if any(encode_id(v) not in found for v in values)]
            if not broken:
                continue
            wanted = {pid: reference_values(production[pid], reference)
                      for pid in broken if production.get(pid)}
            present = _existing(self.referenced_sources[reference.collection],
                                [v for values in wanted.values() for v in values])
            for pid, values in wanted.items():
                if any(encode_id(v) in present for v in values):
                    report.dangling.setdefault(reference.dotted, []).append(pid)

    def _count_staging(self, report: Report, production_pids: set[str] | None) -> None:
        projection: dict[str, Any] = {SYNC: 1}
        if self.follow is not None:
            projection[self.follow.dotted] = 1
        parents: dict[str, list[Any]] = {}
        for doc in self.target.find({}, projection):
            meta = read_meta(doc)
            if meta.pid is None:
                report.staging_unsynced += 1
            elif meta.deleted:
                report.staging_soft_deleted += 1
            else:
                report.staging_live += 1
                if production_pids is not None and meta.pid not in production_pids:
                    report.gone_in_production.append(meta.pid)
                if self.follow is not None:
                    parents[meta.pid] = reference_values(doc, self.follow)
        if self.follow is not None:
            self._closure(report, parents)

    def _closure(self, report: Report, parents: dict[str, list[Any]]) -> None:
        """A live copy that follows a reference needs a live parent copy in staging."""
        assert self.follow is not None
        target = self.resolver.targets[self.follow.collection]
        values = [value for found in parents.values() for value in found]
        live: set[str] = set()
        for start in range(0, len(values), CHUNK):
            query = {"_id": {"$in": values[start:start + CHUNK]},
                     target.soft_delete_field: {"$ne": True}}
            live |= {encode_id(doc["_id"]) for doc in target.collection.find(query, {"_id": 1})}
        report.orphans = sorted(pid for pid, found in parents.items()
                                if not any(encode_id(value) in live for value in found))

    def wait_caught_up(self, redis_url: str, timeout: float, since: float) -> bool:
        """Until the watcher has found its stream empty with nothing in flight at a moment
        after `since` (so every change made before then is applied), or `timeout`.
        False when no watcher reports for this collection."""
        client = redis.Redis.from_url(redis_url, socket_timeout=5)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                state = client.hgetall(watcher_key(self.collection.name))
                if not state:
                    return False
                if float(state.get(b"idle_at") or 0) > since:
                    return True
                time.sleep(0.25)
        finally:
            client.close()
        return True


def _differences(document: dict[str, Any], mirror: dict[str, Any], rules: CollectionRules
                 ) -> list[str]:
    """Production-owned paths whose staging value differs, compared as BSON (so `1`, `1.0`
    and `true` differ), plus parents whose fields stand in another order."""
    owned = [*owned_paths(document, rules.fields), *read_meta(mirror).owned]
    shared = shared_parents(mirror, owned)
    expected = shared_last(production_content(document, rules.fields), shared)
    actual = shared_last(production_view(mirror, owned), shared)
    if bson.encode(expected) == bson.encode(actual):
        return []
    flat_expected = dict(leaf_paths(expected))
    flat_actual = dict(leaf_paths(actual))
    paths = {join_dotted(p) for p in flat_expected.keys() | flat_actual.keys()
             if not _same(flat_expected.get(p, _Missing), flat_actual.get(p, _Missing))}
    paths |= {f"{join_dotted(p) or '(top level)'} (field order)"
              for p in _reordered(expected, actual)}
    return sorted(paths)


def _same(a: Any, b: Any) -> bool:
    if a is _Missing or b is _Missing:
        return a is b
    return bson.encode({"v": a}) == bson.encode({"v": b})


def _reordered(expected: Mapping[str, Any], actual: Mapping[str, Any], prefix: Path = ()
               ) -> list[Path]:
    common = [name for name in expected if name in actual]
    found = [prefix] if common != [name for name in actual if name in expected] else []
    for name, value in expected.items():
        other = actual.get(name)
        if isinstance(value, Mapping) and isinstance(other, Mapping):
            found += _reordered(value, other, (*prefix, name))
    return found


class _Missing:
    pass


def _existing(collection: Any, values: list[Any]) -> set[str]:
    """The encoded values among `values` that are `_id`s of documents in `collection`."""
    found: set[str] = set()
    for start in range(0, len(values), CHUNK):
        query = {"_id": {"$in": values[start:start + CHUNK]}}
        found |= {encode_id(doc["_id"]) for doc in collection.find(query, {"_id": 1})}
    return found


def _index_drift(settings: Settings, verifier: Verifier) -> dict[str, Any]:
    collection = verifier.collection
    return collection_drift(collection, verifier.production.collection(collection),
                            verifier.staging_client,
                            index_mirror_records(verifier.staging_client, settings.staging,
                                                 collection.name))


def verify_collection(settings: Settings, name: str, sample: int, settle: float
                      ) -> Report:
    verifier = Verifier(settings, settings.collection(name))
    try:
        report = verifier.full_report(sample)
        for _ in range(RECHECKS):
            if report.equal:
                break
            if not verifier.wait_caught_up(settings.redis_url, settle, since=time.time()):
                time.sleep(min(settle, 2.0))
            report = verifier.recheck(report)
        report.indexes = _index_drift(settings, verifier)
        return report
    finally:
        verifier.close()
