"""Production's secondary indexes in staging: read, translate, build, drop, report.

The staging I/O of the mirror. Its callers: the watcher's follower thread
(`watcher.index_follower`), the workers (every resync runs a pass, failed builds included:
`tasks.index_mirror_runs`), and `status`, `check` and `verify` (the drift, read-only; its text
is `cli.index_drift`).

- Production is read through `ReadOnlyCollection.list_indexes` only.
- The translation and the plan are pure (`rules.index_translation`); equivalence reuses the
  `serves` of stagesync's own start-up (`deployments.staging_indexes`).
- Ownership and failures are records in the state database, kept by a store the caller hands
  in (`state.index_mirror_records`, which satisfies `MirrorRecords`): an index stagesync
  created is recorded *before* it is built, so a build killed half-way is still known as ours.
  Only recorded indexes are ever dropped or changed; one made by hand is never touched.
- A build that fails does not stop anything: the failure (index, server code and message,
  with duplicate values cut out) is recorded, shown by `status` and `check`, and tried again
  when production's definition changes or at the next resync.
- Several mirrors may run at once (a watcher, a resync's worker): whatever another one did
  meanwhile (codes 27, 68, 85, 86, 276) makes this one read both sides again and re-decide.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import OperationFailure, PyMongoError
from stagesync.deployments.production import ReadOnlyCollection
from stagesync.deployments.staging_indexes import RACE_CODES, _keys, serves
from stagesync.rules.index_translation import (
    Create,
    Mirrored,
    MirrorPlan,
    Skipped,
    _plain,
    plan_mirror,
    translate_all,
)
from stagesync.settings.collection import CollectionSettings

log = logging.getLogger("stagesync.indexes")

ATTEMPTS = 4
MESSAGE_MAX = 400

Document = dict[str, Any]


class MirrorRecords(Protocol):
    """What the engine asks of its records (`state.index_mirror_records.IndexMirrorRecords`)."""

    def owned(self) -> dict[str, Document]: ...
    def failed(self) -> dict[str, Document]: ...
    def demoted(self) -> dict[str, Document]: ...
    def last_pass(self) -> Document: ...
    def building(self, name: str, production: str, spec: Mapping[str, Any]) -> None: ...
    def built(self, name: str) -> None: ...
    def gone(self, name: str) -> None: ...
    def failure(self, production: str, name: str, spec: Mapping[str, Any] | None,
                code: int | None, message: str) -> None: ...
    def succeeded(self, production: str) -> None: ...
    def keep_failures_of(self, production_names: Iterable[str]) -> None: ...
    def keep_demotions_of(self, production_names: Iterable[str]) -> None: ...
    def save_pass(self, created: list[str], dropped: list[str], modified: list[str],
                  failed: list[str], production: int) -> None: ...


@dataclass
class PassReport:
    """What one pass did; also stored as the collection's last pass."""

    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # staging name -> message


class IndexMirror:
    """One collection's mirror: production's indexes, staging's, and the records."""

    def __init__(self, collection: CollectionSettings, source: ReadOnlyCollection,
                 staging: MongoClient[Document], records: MirrorRecords) -> None:
        self.collection = collection
        self.source = source
        self.target: Collection[Document] = staging[collection.target_db][
            collection.target_collection]
        self.records = records
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.collection.indexes == "mirror"

    # -- reading ------------------------------------------------------------------------------
    def wanted(self, demoted: dict[str, Document] | None = None) -> list[Mirrored | Skipped]:
        """Production's indexes translated, the safety net's demotions applied."""
        return translate_all(self.source.list_indexes(), self.collection,
                             self.collection.mirror_ttl,
                             self.records.demoted() if demoted is None else demoted)

    def staging_indexes(self) -> list[Document]:
        try:
            return [dict(index) for index in self.target.list_indexes()]
        except OperationFailure as error:
            if error.code == 26:  # NamespaceNotFound: nothing synced yet
                return []
            raise

    def plan(self, retry_failed: bool = False) -> tuple[list[Mirrored | Skipped], MirrorPlan]:
        wanted = self.wanted()
        mirrored = [item for item in wanted if isinstance(item, Mirrored)]
        plan = plan_mirror(mirrored, self.staging_indexes(), self.records.owned(),
                           self.records.failed(), serves, retry_failed=retry_failed)
        return wanted, plan

    # -- making staging match ------------------------------------------------------------------
    def run(self, retry_failed: bool = False) -> PassReport:
        """One pass: staging's mirrored indexes made to match production's, now."""
        report = PassReport()
        if not self.enabled:
            return report
        with self._lock:
            for attempt in range(1, ATTEMPTS + 1):
                wanted, plan = self.plan(retry_failed)
                try:
                    self._carry_out(plan, report, last=attempt == ATTEMPTS)
                    break
                except _Raced:
                    continue
            self.records.keep_failures_of(
                item.production_name for item in wanted if isinstance(item, Mirrored))
            # A demotion stays while production's definition is the one that refused.
            undemoted = {item.production_name: item for item in self.wanted({})}
            self.records.keep_demotions_of(
                name for name, record in self.records.demoted().items()
                if isinstance(undemoted.get(name), Mirrored)
                and _plain(undemoted[name].spec) == _plain(record.get("spec")))
            self.records.save_pass(report.created, report.dropped, report.modified,
                                   sorted(report.failed), len(wanted))
        if report.created or report.dropped or report.modified or report.failed:
            log.info("indexes mirrored", extra={
                "collection": self.collection.name, "built": report.created,
                "dropped": report.dropped, "changed": report.modified,
                "failed": sorted(report.failed)})
        return report

    def _carry_out(self, plan: MirrorPlan, report: PassReport, last: bool) -> None:
        for name in plan.forget:
            self.records.gone(name)
        for name in plan.drops:
            try:
                self.target.drop_index(name)
            except OperationFailure as error:
                if error.code in RACE_CODES and error.code != 27 and not last:
                    raise _Raced() from None
                if error.code != 27:  # IndexNotFound: someone else dropped it first
                    raise
            self.records.gone(name)
            report.dropped.append(name)
        for change in plan.modifies:
            try:
                self.target.database.command("collMod", self.target.name,
                                             index={"name": change.name, **change.changes})
                report.modified.append(change.name)
                self.records.succeeded(change.production_name)
            except OperationFailure as error:
                if error.code in RACE_CODES and not last:
                    raise _Raced() from None
                self.records.failure(change.production_name, change.name, None, error.code,
                                     _message(error))
                report.failed[change.name] = _message(error)
        for create in plan.creates:
            self._create(create, report, last)

    def _create(self, create: Create, report: PassReport, last: bool) -> None:
        spec = {**create.spec, "name": create.name}
        self.records.building(create.name, create.production_name, create.spec)
        try:
            self.target.database.command("createIndexes", self.target.name, indexes=[spec])
        except OperationFailure as error:
            existing = {str(i.get("name")) for i in self.staging_indexes()}
            if create.name not in existing:
                self.records.gone(create.name)  # nothing of ours stands
            if error.code in RACE_CODES and not last:
                raise _Raced() from None
            self.records.failure(create.production_name, create.name, create.spec,
                                 error.code, _message(error))
            report.failed[create.name] = _message(error)
            log.warning("mirrored index build failed", extra={
                "collection": self.collection.name, "index": create.name,
                "error": _message(error)})
            return
        self.records.built(create.name)
        self.records.succeeded(create.production_name)
        report.created.append(create.name)

    # -- reporting -------------------------------------------------------------------------
    def drift(self) -> dict[str, Any]:
        """Index drift, read-only: what a pass would do, what failed, what is translated."""
        if not self.enabled:
            return {"mode": "none"}
        wanted, plan = self.plan()
        staging_names = {**plan.reused}
        failures = self.records.failed()
        last = self.records.last_pass()
        missing = [{"production": c.production_name, "staging": c.name,
                    "key": _key_text(c.spec)} for c in plan.creates]
        failed = [{"production": production, "staging": record.get("name"),
                   "code": record.get("code"), "error": record.get("error"),
                   "attempts": record.get("attempts"),
                   "at": _iso(record.get("at"))}
                  for production, record in sorted(failures.items())
                  if production in plan.held
                  or production in {m.production_name for m in plan.modifies}]
        translated = [{"production": item.production_name,
                       "staging": staging_names.get(item.production_name),
                       "how": list(item.notes)}
                      for item in wanted if isinstance(item, Mirrored) and item.translated]
        skipped = [{"production": item.production_name, "reason": item.reason}
                   for item in wanted if isinstance(item, Skipped)]
        wanted_names = {item.production_name for item in wanted}
        demoted = [{"production": production, "staging": record.get("name"),
                    "code": record.get("code"), "error": record.get("error"),
                    "refusals": record.get("refusals"), "at": _iso(record.get("at"))}
                   for production, record in sorted(self.records.demoted().items())
                   if production in wanted_names]
        return {
            "mode": "mirror",
            "in_step": not (missing or plan.drops or plan.modifies or failed),
            "demoted": demoted,
            "missing": missing,
            "extra": list(plan.drops),
            "changed": [{"staging": m.name, "production": m.production_name,
                         "changes": m.changes} for m in plan.modifies],
            "failed": failed,
            "translated": translated,
            "skipped": skipped,
            "reused": [{"production": p, "staging": s} for p, s in sorted(plan.reused.items())
                       if s != p],
            "unmanaged": [{"production": p, "why": why}
                          for p, why in sorted(plan.unmanaged.items())],
            "last_pass_at": _iso(last.get("at")),
        }


class _Raced(Exception):
    """Another mirror changed the indexes between our read and our command."""


def collection_drift(collection: CollectionSettings, source: ReadOnlyCollection,
                     staging: MongoClient[Document], records: MirrorRecords
                     ) -> dict[str, Any]:
    """The drift of one collection, or why it could not be read."""
    try:
        return IndexMirror(collection, source, staging, records).drift()
    except PyMongoError as error:
        return {"mode": collection.indexes, "error": f"{type(error).__name__}: "
                                                     f"{str(error)[:200]}"}


def _message(error: OperationFailure) -> str:
    """Code, name and message; duplicate values and documents cut out (they can be personal
    data: a refused geo build quotes the document)."""
    details = error.details or {}
    text = cut_values(str(details.get("errmsg") or error))
    name = details.get("codeName")
    prefix = f"{error.code} {name}" if name else f"code {error.code}"
    return f"{prefix}: {text}"[:MESSAGE_MAX]


def cut_values(text: str) -> str:
    """A server's message without the values it quotes (they can be personal data): duplicate
    keys, documents (a refused geo key quotes it) and quoted strings."""
    text = re.sub(r"dup key: \{.*\}", "dup key: {…}", text)
    text = re.sub(r"\{.*\}", "{…}", text)
    return re.sub(r"(?<!\w)(['\"]).*?\1(?!\w)", r"\1…\1", text)


def _key_text(spec: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" if isinstance(v, float) else f"{k}: {v}"
                           for k, v in _keys(spec["key"])) + "}"


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return None
