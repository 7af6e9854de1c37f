"""Production's secondary indexes in staging: read, translate, build, drop, record, report.

Used by the watcher (a follower thread per collection, woken by the change stream's DDL
events or by a poll of `listIndexes`), by the workers (every resync runs the mirror again,
failed builds included) and by `status`, `check` and `verify` (the drift, read-only).

- Production is read through `ReadOnlyCollection.list_indexes` only.
- The translation and the plan are pure (`rules.index_translation`); equivalence reuses the
  `serves` of stagesync's own start-up (`deployments.staging_indexes`).
- Ownership lives in the state database (`INDEX_MIRROR`): an index stagesync created is
  recorded *before* it is built, so a build killed half-way is still known as ours. Only
  recorded indexes are ever dropped or changed; one made by hand is never touched.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure, PyMongoError
from stagesync.deployments.production import ProductionReader, ReadOnlyCollection
from stagesync.deployments.staging_indexes import RACE_CODES, _keys, serves
from stagesync.protocol.names import INDEX_MIRROR
from stagesync.rules.index_translation import (
    Create,
    Mirrored,
    MirrorPlan,
    Skipped,
    plan_mirror,
    translate_all,
)
from stagesync.settings.collection import CollectionSettings
from stagesync.settings.model import Settings

log = logging.getLogger("stagesync.indexes")

ATTEMPTS = 4
# The first server version whose change streams carry `createIndexes`, `dropIndexes` and
# `modify` with `showExpandedEvents`.
EXPANDED_EVENTS_SINCE = (6, 0)
# How long a follower in event mode sleeps between passes without a DDL event: a pass costs
# two `listIndexes` and catches anything an event could have missed (none should).
EVENT_MODE_SAFETY_SECONDS = 3600.0
MESSAGE_MAX = 400

Document = dict[str, Any]


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
                 staging: MongoClient[Document], state_db: Database[Document]) -> None:
        self.collection = collection
        self.source = source
        self.target: Collection[Document] = staging[collection.target_db][
            collection.target_collection]
        self.records: Collection[Document] = state_db[INDEX_MIRROR]
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.collection.indexes == "mirror"

    # -- reading ------------------------------------------------------------------------------
    def wanted(self) -> list[Mirrored | Skipped]:
        return translate_all(self.source.list_indexes(), self.collection,
                             self.collection.mirror_ttl)

    def staging_indexes(self) -> list[Document]:
        try:
            return [dict(index) for index in self.target.list_indexes()]
        except OperationFailure as error:
            if error.code == 26:  # NamespaceNotFound: nothing synced yet
                return []
            raise

    def owned(self) -> dict[str, Document]:
        return {str(r["name"]): r for r in self.records.find(
            {"collection": self.collection.name, "kind": "owned"})}

    def failed(self) -> dict[str, Document]:
        return {str(r["production"]): r for r in self.records.find(
            {"collection": self.collection.name, "kind": "failed"})}

    def plan(self, retry_failed: bool = False) -> tuple[list[Mirrored | Skipped], MirrorPlan]:
        wanted = self.wanted()
        mirrored = [item for item in wanted if isinstance(item, Mirrored)]
        plan = plan_mirror(mirrored, self.staging_indexes(), self.owned(), self.failed(),
                           serves, retry_failed=retry_failed)
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
            self._forget_failures(wanted)
            self._save_pass(wanted, plan, report)
        if report.created or report.dropped or report.modified or report.failed:
            log.info("indexes mirrored", extra={
                "collection": self.collection.name, "built": report.created,
                "dropped": report.dropped, "changed": report.modified,
                "failed": sorted(report.failed)})
        return report

    def _carry_out(self, plan: MirrorPlan, report: PassReport, last: bool) -> None:
        for name in plan.forget:
            self._record_gone(name)
        for name in plan.drops:
            try:
                self.target.drop_index(name)
            except OperationFailure as error:
                if error.code in RACE_CODES and error.code != 27 and not last:
                    raise _Raced() from None
                if error.code != 27:  # IndexNotFound: someone else dropped it first
                    raise
            self._record_gone(name)
            report.dropped.append(name)
        for change in plan.modifies:
            try:
                self.target.database.command("collMod", self.target.name,
                                             index={"name": change.name, **change.changes})
                report.modified.append(change.name)
                self.records.delete_one({"_id": _failed_id(self.collection.name,
                                                           change.production_name)})
            except OperationFailure as error:
                if error.code in RACE_CODES and not last:
                    raise _Raced() from None
                self._record_failure(change.production_name, change.name, None, error)
                report.failed[change.name] = _message(error)
        for create in plan.creates:
            self._create(create, report, last)

    def _create(self, create: Create, report: PassReport, last: bool) -> None:
        spec = {**create.spec, "name": create.name}
        self.records.replace_one({"_id": _owned_id(self.collection.name, create.name)}, {
            "collection": self.collection.name, "kind": "owned", "name": create.name,
            "production": create.production_name, "spec": create.spec, "state": "building",
            "at": datetime.now(UTC),
        }, upsert=True)
        try:
            self.target.database.command("createIndexes", self.target.name, indexes=[spec])
        except OperationFailure as error:
            existing = {str(i.get("name")) for i in self.staging_indexes()}
            if create.name not in existing:
                self._record_gone(create.name)  # nothing of ours stands
            if error.code in RACE_CODES and not last:
                raise _Raced() from None
            self._record_failure(create.production_name, create.name, create.spec, error)
            report.failed[create.name] = _message(error)
            log.warning("mirrored index build failed", extra={
                "collection": self.collection.name, "index": create.name,
                "error": _message(error)})
            return
        self.records.update_one({"_id": _owned_id(self.collection.name, create.name)},
                                {"$set": {"state": "built", "at": datetime.now(UTC)}})
        self.records.delete_one({"_id": _failed_id(self.collection.name,
                                                   create.production_name)})
        report.created.append(create.name)

    def _record_gone(self, name: str) -> None:
        self.records.delete_one({"_id": _owned_id(self.collection.name, name)})

    def _record_failure(self, production: str, name: str, spec: Mapping[str, Any] | None,
                        error: OperationFailure) -> None:
        self.records.update_one({"_id": _failed_id(self.collection.name, production)}, {
            "$set": {"collection": self.collection.name, "kind": "failed",
                     "production": production, "name": name, "spec": spec,
                     "code": error.code, "error": _message(error), "at": datetime.now(UTC)},
            "$inc": {"attempts": 1},
        }, upsert=True)

    def _forget_failures(self, wanted: Sequence[Mirrored | Skipped]) -> None:
        """Failures of indexes production no longer has, or skips now, go."""
        mirrored = {item.production_name for item in wanted if isinstance(item, Mirrored)}
        self.records.delete_many({"collection": self.collection.name, "kind": "failed",
                                  "production": {"$nin": sorted(mirrored)}})

    def _save_pass(self, wanted: Sequence[Mirrored | Skipped], plan: MirrorPlan,
                   report: PassReport) -> None:
        self.records.replace_one({"_id": f"pass|{self.collection.name}"}, {
            "collection": self.collection.name, "kind": "pass", "at": datetime.now(UTC),
            "created": report.created, "dropped": report.dropped,
            "modified": report.modified, "failed": sorted(report.failed),
            "production": len(wanted),
        }, upsert=True)

    # -- reporting -------------------------------------------------------------------------
    def drift(self) -> dict[str, Any]:
        """Index drift, read-only: what a pass would do, what failed, what is translated."""
        if not self.enabled:
            return {"mode": "none"}
        wanted, plan = self.plan()
        staging_names = {**plan.reused}
        failures = self.failed()
        last = self.records.find_one({"_id": f"pass|{self.collection.name}"}) or {}
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
        return {
            "mode": "mirror",
            "in_step": not (missing or plan.drops or plan.modifies or failed),
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


def drift_warnings(name: str, drift: Mapping[str, Any], problems_only: bool = False
                   ) -> list[str]:
    """One line per drift item, for `check` and `status` (which shows problems only:
    missing, extra, changed, failed)."""
    if drift.get("error"):
        return [f"{name}: index drift unknown: {drift['error']}"]
    if drift.get("mode") != "mirror":
        return []
    lines = [f"{name}: production index {m['production']!r} is missing in staging "
             f"(will be {m['staging']!r})" for m in drift.get("missing", [])]
    lines += [f"{name}: staging index {e!r} was mirrored by stagesync and production no "
              "longer has it (the next pass drops it)" for e in drift.get("extra", [])]
    lines += [f"{name}: staging index {c['staging']!r} differs from production's in "
              f"{', '.join(c['changes'])}" for c in drift.get("changed", [])]
    lines += [f"{name}: mirrored index {f['staging']!r} (production {f['production']!r}) "
              f"failed to build: {f['error']} (retried when production's definition changes "
              "or at the next resync)" for f in drift.get("failed", [])]
    if problems_only:
        return lines
    lines += [f"{name}: production index {s['production']!r} {s['reason']}"
              for s in drift.get("skipped", [])]
    lines += [f"{name}: production index {t['production']!r} translated: "
              f"{'; '.join(t['how'])}" for t in drift.get("translated", [])]
    lines += [f"{name}: production index {u['production']!r}: {u['why']}"
              for u in drift.get("unmanaged", [])]
    return lines


def collection_drift(settings: Settings, collection: CollectionSettings,
                     production: ProductionReader, staging: MongoClient[Document]
                     ) -> dict[str, Any]:
    """The drift of one collection, or why it could not be read."""
    mirror = IndexMirror(collection, production.collection(collection), staging,
                         staging[settings.staging.state_db])
    try:
        return mirror.drift()
    except PyMongoError as error:
        return {"mode": collection.indexes, "error": f"{type(error).__name__}: "
                                                     f"{str(error)[:200]}"}


class IndexFollower:
    """The watcher's background mirror of one collection: a pass at start, then one after
    every DDL event (MongoDB 6.0+), or every `index_poll_seconds` where there are none. It
    runs beside the stream, so a long build never stalls the applies."""

    def __init__(self, mirror: IndexMirror, stop: threading.Event, poll_seconds: float,
                 events: bool, active: Callable[[], bool] | None = None) -> None:
        self.mirror = mirror
        self.stop = stop
        self.poll_seconds = poll_seconds
        self.events = events
        # False while the watcher stands by (another one owns the collection and mirrors).
        self.active = active or (lambda: True)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_watcher(cls, settings: Settings, collection: CollectionSettings,
                    production: ProductionReader, state_db: Database[Document],
                    stop: threading.Event, active: Callable[[], bool] | None = None
                    ) -> IndexFollower | None:
        if collection.indexes != "mirror":
            return None
        mirror = IndexMirror(collection, production.collection(collection), state_db.client,
                             state_db)
        events = settings.watcher.index_follow == "auto"
        if events:
            try:
                events = production.server_version()[:2] >= EXPANDED_EVENTS_SINCE
            except PyMongoError:
                events = False  # asked again never; polling works everywhere
        return cls(mirror, stop, settings.watcher.index_poll_seconds, events, active)

    @property
    def mode(self) -> str:
        return "events" if self.events else "poll"

    def stream_options(self) -> dict[str, Any]:
        return {"show_expanded_events": True} if self.events else {}

    def events_refused(self, error: OperationFailure) -> bool:
        """The server refused `showExpandedEvents` (older than it said): poll from now on."""
        if self.events and "showExpandedEvents" in str(error):
            log.warning("change stream without DDL events here; polling listIndexes instead",
                        extra={"collection": self.mirror.collection.name})
            self.events = False
            self._wake.set()
            return True
        return False

    def poke(self) -> None:
        """A DDL event arrived: a pass soon (several events in a row make one pass)."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"indexes-{self.mirror.collection.name}", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self._wake.clear()
            failed = False
            try:
                if self.active():
                    self.mirror.run()
            except Exception as error:  # the thread must outlive any one failed pass
                failed = True
                log.error("index mirror pass failed; trying again at the next one",
                          extra={"collection": self.mirror.collection.name,
                                 "error": f"{type(error).__name__}: {str(error)[:200]}"})
            # After a failed pass the next comes at the poll interval even in event mode:
            # the events that woke it are behind the checkpoint already.
            wait = self.poll_seconds if failed or not self.events else EVENT_MODE_SAFETY_SECONDS
            woken = False
            deadline = wait
            while deadline > 0 and not self.stop.is_set():
                step = min(0.5, deadline)
                if self._wake.wait(step):
                    woken = True
                    break
                deadline -= step
            if woken:
                self.stop.wait(0.2)  # let a burst of DDL events settle into one pass


_running: dict[str, threading.Thread] = {}
_running_lock = threading.Lock()


def run_in_background(mirror: IndexMirror, retry_failed: bool) -> bool:
    """A pass in a thread of this process (a worker's resync must not wait for builds);
    False when one for the collection is still running here."""
    name = mirror.collection.name
    with _running_lock:
        current = _running.get(name)
        if current is not None and current.is_alive():
            return False

        def work() -> None:
            try:
                mirror.run(retry_failed=retry_failed)
            except Exception as error:  # a worker thread: log, never take the process down
                log.error("index mirror pass failed", extra={
                    "collection": name, "error": f"{type(error).__name__}: {str(error)[:200]}"})

        thread = threading.Thread(target=work, name=f"indexes-{name}", daemon=True)
        _running[name] = thread
        thread.start()
        return True


def _owned_id(collection: str, name: str) -> str:
    return f"owned|{collection}|{name}"


def _failed_id(collection: str, production: str) -> str:
    return f"failed|{collection}|{production}"


def _message(error: OperationFailure) -> str:
    """Code, name and message; duplicate values cut out (they can be personal data)."""
    details = error.details or {}
    text = str(details.get("errmsg") or error)
    text = re.sub(r"dup key: \{.*\}", "dup key: {…}", text)
    name = details.get("codeName")
    prefix = f"{error.code} {name}" if name else f"code {error.code}"
    return f"{prefix}: {text}"[:MESSAGE_MAX]


def _key_text(spec: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" if isinstance(v, float) else f"{k}: {v}"
                           for k, v in _keys(spec["key"])) + "}"


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return None
