"""The index mirror's records in the state database (`INDEX_MIRROR`), one store per collection.

Three kinds of record, each keyed so that a replay of the same step writes the same document:
- `owned|<collection>|<staging name>`: an index stagesync created (recorded *before* the build
  starts, so that a build killed half-way is still known as ours). Only these are ever
  dropped or changed by the mirror; an index made by hand is never touched.
- `failed|<collection>|<production name>`: a build or `collMod` staging refused, with the
  server's code and message (duplicate values already cut out by the caller), retried when
  production's definition changes or at the next resync.
- `demoted|<collection>|<production name>`: a mirrored index that refused sync writes and
  that the apply's safety net demoted (dropped, then mirrored non-unique or not at all while
  production's definition stays the one recorded), with the server's code and message.
- `pass|<collection>`: what the collection's last mirror pass did.

The engine that reads and writes staging's indexes is `deployments.index_mirror.IndexMirror`;
it gets this store from its caller, since only `state/` opens the state database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pymongo.collection import Collection
from pymongo.database import Database
from stagesync.protocol.names import INDEX_MIRROR
from stagesync.settings.model import StagingSettings
from stagesync.state.database import state_database

Document = dict[str, Any]


def _owned_id(collection: str, name: str) -> str:
    return f"owned|{collection}|{name}"


def _failed_id(collection: str, production: str) -> str:
    return f"failed|{collection}|{production}"


def _demoted_id(collection: str, production: str) -> str:
    return f"demoted|{collection}|{production}"


def _pass_id(collection: str) -> str:
    return f"pass|{collection}"


class IndexMirrorRecords:
    """One collection's records of the index mirror."""

    def __init__(self, state_db: Database[Document], collection: str) -> None:
        self.collection = collection
        self.records: Collection[Document] = state_db[INDEX_MIRROR]

    def forget_all(self) -> int:
        """Every record of the collection (an environment's copies, deleted with it)."""
        return int(self.records.delete_many({"collection": {"$eq": self.collection}})
                   .deleted_count)

    # -- reading ------------------------------------------------------------------------------
    def owned(self) -> dict[str, Document]:
        """Staging index name -> ownership record."""
        return {str(r["name"]): r for r in self.records.find(
            {"collection": self.collection, "kind": "owned"})}

    def failed(self) -> dict[str, Document]:
        """Production index name -> failure record."""
        return {str(r["production"]): r for r in self.records.find(
            {"collection": self.collection, "kind": "failed"})}

    def demoted(self) -> dict[str, Document]:
        """Production index name -> demotion record."""
        return {str(r["production"]): r for r in self.records.find(
            {"collection": self.collection, "kind": "demoted"})}

    def last_pass(self) -> Document:
        return self.records.find_one({"_id": _pass_id(self.collection)}) or {}

    # -- ownership ----------------------------------------------------------------------------
    def building(self, name: str, production: str, spec: Mapping[str, Any]) -> None:
        """Ours from now on, before the build starts."""
        self.records.replace_one({"_id": _owned_id(self.collection, name)}, {
            "collection": self.collection, "kind": "owned", "name": name,
            "production": production, "spec": dict(spec), "state": "building",
            "at": datetime.now(UTC),
        }, upsert=True)

    def built(self, name: str) -> None:
        self.records.update_one({"_id": _owned_id(self.collection, name)},
                                {"$set": {"state": "built", "at": datetime.now(UTC)}})

    def gone(self, name: str) -> None:
        """The staging index is no longer ours (dropped, or never built)."""
        self.records.delete_one({"_id": _owned_id(self.collection, name)})

    # -- failures -----------------------------------------------------------------------------
    def failure(self, production: str, name: str, spec: Mapping[str, Any] | None,
                code: int | None, message: str) -> None:
        self.records.update_one({"_id": _failed_id(self.collection, production)}, {
            "$set": {"collection": self.collection, "kind": "failed",
                     "production": production, "name": name,
                     "spec": dict(spec) if spec is not None else None,
                     "code": code, "error": message, "at": datetime.now(UTC)},
            "$inc": {"attempts": 1},
        }, upsert=True)

    def succeeded(self, production: str) -> None:
        self.records.delete_one({"_id": _failed_id(self.collection, production)})

    def keep_failures_of(self, production_names: Iterable[str]) -> None:
        """Failures of indexes production no longer has (or that are skipped now) go."""
        self.records.delete_many({"collection": self.collection, "kind": "failed",
                                  "production": {"$nin": sorted(production_names)}})

    # -- demotions (the apply's safety net) ---------------------------------------------------
    def demotion(self, production: str, name: str, spec: Mapping[str, Any] | None,
                 code: int | None, message: str) -> None:
        """Recorded before the index is dropped, so that no mirror pass builds it again."""
        self.records.update_one({"_id": _demoted_id(self.collection, production)}, {
            "$set": {"collection": self.collection, "kind": "demoted",
                     "production": production, "name": name,
                     "spec": dict(spec) if spec is not None else None,
                     "code": code, "error": message, "at": datetime.now(UTC)},
            "$inc": {"refusals": 1},
        }, upsert=True)

    def keep_demotions_of(self, production_names: Iterable[str]) -> None:
        """Demotions of indexes production no longer has (or defines otherwise) go."""
        self.records.delete_many({"collection": self.collection, "kind": "demoted",
                                  "production": {"$nin": sorted(production_names)}})

    # -- passes -------------------------------------------------------------------------------
    def save_pass(self, created: list[str], dropped: list[str], modified: list[str],
                  failed: list[str], production: int) -> None:
        self.records.replace_one({"_id": _pass_id(self.collection)}, {
            "collection": self.collection, "kind": "pass", "at": datetime.now(UTC),
            "created": created, "dropped": dropped, "modified": modified, "failed": failed,
            "production": production,
        }, upsert=True)


def index_mirror_records(staging: Any, settings: StagingSettings, collection: str
                         ) -> IndexMirrorRecords:
    """The store of one collection, on a staging client."""
    return IndexMirrorRecords(state_database(staging, settings), collection)
