"""The environment store: one record per environment, in the state database.

A record holds the environment's name (its `_id`), its state, when it was created and when it
expires, its sample percent, and the databases the product created for it. Those databases are
recorded *with the record*, before any of them is created, so that a process killed at any
moment leaves no database behind that `env delete` would not drop; and `env delete` drops only
the databases recorded, never anything else.

States: `creating` -> `live` (every collection's copy is done); `live` <-> `frozen`,
`resetting` (contract states, shown by `env list`), and the internal `deleting` (the databases
are being dropped; a record in it is finished by the next delete or expiry pass and never
listed). Every change of state is a conditional update on the current state (compare-and-set),
so of two commands that race only one wins.

**Freeze and thaw.** `live` -> `frozen` records when it froze (wall clock and production's
cluster time); the stream then remembers what the environment misses
(`state.environment_backlog`) instead of writing it. `frozen` -> `live` starts a *thaw*,
recorded in the environment (`thaw: {mode, startedAt, done}`) until it ends: `drain` applies
the remembered documents, `resync` copies the collections again (the backlog overflowed, or
production's history was lost while frozen: a resync of the main staging began). While a thaw
runs the environment is `live` (the stream writes it again) but not yet caught up.

**Reset.** `live`/`frozen` -> `resetting`: the environment's documents are removed and its
collections copied again, as a create fills them; then `live`.

**How workers learn of a change.** Every write of the store replaces a token in Redis
(`deployments.broker.ChangeSignal`, ENVIRONMENTS_CHANGED_KEY) once it is made; a store opened
without the signal refuses to write. Workers read the environments through `EnvironmentCache`,
which reads the token at every check and the store only when the token changed (or after
RECHECK_SECONDS, for a change whose writer died before it announced it). So each worker's next
check sees a change, and a quiet store costs the state database nothing per apply.

Every command that changes what the stream does to an environment waits SETTLE_SECONDS before
it acts on that change (freeze's return, thaw's drain, reset's wipe): an apply that checked
before the change may still write the old way, for the time of one plan and one bulk write.
A create need not wait: no write of the old state can be under way in an environment that did
not exist, its copy starts after the create announced it, and a batch that learns of it after
reading production writes it from that read (`tasks.apply.targets`).

The stream writes into the environments in STREAMED states and remembers for FROZEN ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import Timestamp
from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError
from stagesync.deployments.broker import ChangeSignal
from stagesync.protocol.names import ENVIRONMENTS
from stagesync.settings.collection import CollectionSettings, SubsetSettings

CREATING, LIVE, FROZEN, RESETTING, DELETING = "creating", "live", "frozen", "resetting", \
    "deleting"
LISTED = (CREATING, LIVE, FROZEN, RESETTING)  # what `env list` shows
STREAMED = (CREATING, LIVE, RESETTING)  # the stream writes into these
FOLLOWED = (*STREAMED, FROZEN)  # what the workers need to know of: written or remembered
FILLING = (CREATING, RESETTING)  # copied by resyncs, `live` once they are done
DRAIN, RESYNC = "drain", "resync"  # the ways a thaw catches up
# A command waits this long after changing an environment before it relies on no apply
# writing the old way (workers see the change at their next check; an apply that checked
# just before it writes within one plan and one bulk write).
SETTLE_SECONDS = 3.0
# A worker reads the store at least this often even when no change was announced: a writer
# killed between its write and its announcement is then seen this late, not never.
RECHECK_SECONDS = 30.0
EXPIRY_INDEX = "stagesync_environments_expiry"


class EnvironmentRefused(RuntimeError):
    """A command that the store refuses; the message says which rule."""


class NameTaken(EnvironmentRefused):
    pass


class TooManyEnvironments(EnvironmentRefused):
    pass


class NoSuchEnvironment(EnvironmentRefused):
    pass


class ReadOnlyStore(RuntimeError):
    """A write through a store opened without its change signal: the workers would not learn
    of it (see the module docstring)."""


@dataclass(frozen=True)
class Environment:
    name: str
    state: str
    created_at: datetime
    expires_at: datetime | None
    sample: float | None
    databases: dict[str, str]  # main staging's target database -> the environment's
    resyncs: dict[str, str]  # collection -> the resync that fills it
    frozen_at: datetime | None = None
    frozen_cluster_time: Timestamp | None = None  # production's, when it froze
    thaw: dict[str, Any] | None = None  # a thaw under way: mode, startedAt, done
    overflowed: bool = False  # frozen past `environments.freeze_backlog`: thaw resyncs
    wiped: bool = True  # False while a reset has yet to remove the documents

    @property
    def thaw_mode(self) -> str | None:
        return str(self.thaw["mode"]) if self.thaw else None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Environment:
        return cls(
            name=str(record["_id"]), state=str(record["state"]),
            created_at=_aware(record["createdAt"]),
            expires_at=_aware(record["expiresAt"]) if record.get("expiresAt") else None,
            sample=record.get("sample"),
            databases={str(k): str(v) for k, v in (record.get("databases") or {}).items()},
            resyncs={str(k): str(v) for k, v in (record.get("resyncs") or {}).items()},
            frozen_at=_aware(record["frozenAt"]) if record.get("frozenAt") else None,
            frozen_cluster_time=record.get("frozenClusterTime"),
            thaw=dict(record["thaw"]) if record.get("thaw") else None,
            overflowed=bool(record.get("overflowed")),
            wiped=bool(record.get("wiped", True)),
        )


class EnvironmentStore:
    def __init__(self, state_db: Database[dict[str, Any]], signal: ChangeSignal | None = None
                 ) -> None:
        """`signal`: for a store that writes; without it the store only reads."""
        self.records = state_db[ENVIRONMENTS]
        self.signal = signal

    def announce(self) -> None:
        """Tell every worker to read the store again at its next check (also done by every
        write): for a command run again after a process died between a write and its
        announcement."""
        with self._changing():
            pass

    @contextmanager
    def _changing(self) -> Iterator[None]:
        """Around every write: refused before it begins without a signal, announced after it
        (also after one that failed: it may have been applied)."""
        if self.signal is None:
            raise ReadOnlyStore("this environment store was opened without its change signal")
        try:
            yield
        finally:
            self.signal.announce()

    def ensure_indexes(self) -> None:
        self.records.create_indexes([IndexModel([("expiresAt", ASCENDING)], name=EXPIRY_INDEX)])

    def create(self, name: str, databases: Mapping[str, str], *, ttl: timedelta | None,
               sample: float | None, limit: int, now: datetime | None = None) -> Environment:
        """Record a new environment in `creating`, with the databases it will own.

        The limit holds under concurrent creates: a create inserts first, then counts every
        record; one that finds more than the limit takes its record back. Of racing creates
        the last survivor counted all the others, so they never pass the limit together
        (they may all back out)."""
        moment = now or datetime.now(UTC)
        record = {
            "_id": name, "state": CREATING, "createdAt": moment,
            "expiresAt": moment + ttl if ttl else None, "sample": sample,
            "databases": dict(databases), "resyncs": {},
        }
        with self._changing():
            try:
                self.records.insert_one(record)
            except DuplicateKeyError:
                raise NameTaken(f"environment {name!r} already exists") from None
            total = self.records.count_documents({})
            if total > limit:
                self.records.delete_one({"_id": name, "state": CREATING})
        if total > limit:
            raise TooManyEnvironments(
                f"too many environments: {total - 1} exist and environments.max is {limit}; "
                "delete one first (stagesync env delete NAME)")
        return Environment.from_record(record)

    def get(self, name: str) -> Environment | None:
        record = self.records.find_one({"_id": name})
        return Environment.from_record(record) if record else None

    def require(self, name: str) -> Environment:
        found = self.get(name)
        if found is None:
            raise NoSuchEnvironment(f"no environment named {name!r}")
        return found

    def all(self, states: Sequence[str] = LISTED) -> list[Environment]:
        return [Environment.from_record(record) for record in
                self.records.find({"state": {"$in": list(states)}}, sort=[("_id", ASCENDING)])]

    def transition(self, name: str, before: Iterable[str], after: str,
                   also: Mapping[str, Any] | None = None, unless_thawing: bool = False
                   ) -> bool:
        """Compare-and-set: move `name` from one of `before` to `after`; False when it was in
        no such state (another command won, or it is gone)."""
        query: dict[str, Any] = {"_id": name, "state": {"$in": list(before)}}
        if unless_thawing:
            query["thaw"] = None
        with self._changing():
            result = self.records.update_one(
                query,
                {"$set": {"state": after, **(also or {})}, "$currentDate": {"changedAt": True}},
            )
        return result.matched_count == 1

    def set_resyncs(self, name: str, resyncs: Mapping[str, str]) -> None:
        """The resyncs filling an environment (created, reset, or thawed by resync), by
        collection."""
        with self._changing():
            self.records.update_one(
                {"_id": name, "$or": [{"state": {"$in": list(FILLING)}}, {"thaw.mode": RESYNC}]},
                {"$set": {f"resyncs.{collection}": resync for collection, resync
                          in resyncs.items()}},
            )

    def freeze(self, name: str, cluster_time: Timestamp | None, remembered: int) -> bool:
        """`live` -> `frozen`, unless a thaw is still under way (its drain or resync would
        write into the frozen environment). `remembered`: what the backlog already holds
        (a drain interrupted by an earlier freeze), counted against its bound."""
        return self.transition(name, [LIVE], FROZEN, {
            "frozenAt": datetime.now(UTC), "frozenClusterTime": cluster_time,
            "backlogged": remembered, "overflowed": False,
        }, unless_thawing=True)

    def begin_thaw(self, name: str, mode: str) -> bool:
        """`frozen` -> `live` with a thaw of `mode` recorded (a resync thaw's resyncs start
        afresh)."""
        also: dict[str, Any] = {"thaw": {"mode": mode, "startedAt": datetime.now(UTC),
                                         "done": []}}
        if mode == RESYNC:
            also["resyncs"] = {}
        return self.transition(name, [FROZEN], LIVE, also)

    def thawed(self, name: str, collection: str, collections: Iterable[str]) -> bool:
        """Record that `collection` caught up; True when the thaw is over (every one has)."""
        with self._changing():
            record = self.records.find_one_and_update(
                {"_id": name, "state": LIVE, "thaw": {"$ne": None}},
                {"$addToSet": {"thaw.done": collection}}, return_document=ReturnDocument.AFTER)
        if record is None or not set(collections) <= set(record["thaw"].get("done") or []):
            return False
        return self.finish_thaw(name)

    def finish_thaw(self, name: str) -> bool:
        with self._changing():
            result = self.records.update_one(
                {"_id": name, "state": LIVE, "thaw": {"$ne": None}},
                {"$set": {"thaw": None, "frozenAt": None, "frozenClusterTime": None}})
        return result.modified_count == 1

    def begin_reset(self, name: str) -> bool:
        """`live`, `frozen` or `resetting` (a reset run again) -> `resetting`, its copy to be
        made afresh."""
        return self.transition(name, [LIVE, FROZEN, RESETTING], RESETTING, {
            "resyncs": {}, "wiped": False, "thaw": None, "frozenAt": None,
            "frozenClusterTime": None, "backlogged": 0, "overflowed": False,
        })

    def wiped(self, name: str) -> None:
        with self._changing():
            self.records.update_one({"_id": name, "state": RESETTING},
                                    {"$set": {"wiped": True}})

    def count_backlog(self, name: str, added: int, limit: int) -> None:
        """Count documents newly remembered while frozen; past `limit` the environment
        overflows: the stream stops remembering for it and its thaw resyncs. (The count is
        not announced, only the overflow: workers read nothing but the overflow of it, and a
        count per batch would make every worker read the store again at every apply.)"""
        if added <= 0:
            return
        record = self.records.find_one_and_update(
            {"_id": name, "state": FROZEN}, {"$inc": {"backlogged": added}},
            return_document=ReturnDocument.AFTER)
        if record is not None and int(record["backlogged"]) > limit:
            with self._changing():
                self.records.update_one({"_id": name, "state": FROZEN},
                                        {"$set": {"overflowed": True}})

    def remove(self, name: str) -> bool:
        """The record goes last, once its databases are dropped; only from `deleting`."""
        with self._changing():
            return self.records.delete_one({"_id": name, "state": DELETING}).deleted_count == 1

    def expired(self, now: datetime | None = None) -> list[Environment]:
        """Environments past their lifetime, and deletes that a killed process left
        halfway (`deleting`): the expiry pass finishes both."""
        moment = now or datetime.now(UTC)
        return [Environment.from_record(record) for record in self.records.find(
            {"$or": [{"expiresAt": {"$lte": moment}}, {"state": DELETING}]})]


def environment_settings(collection: CollectionSettings, environment: Environment
                         ) -> CollectionSettings:
    """The collection as the environment holds it: its target database, its sample."""
    database = environment.databases[collection.target_db]
    subset = collection.subset
    if environment.sample is not None and (subset is None or subset.follow is None):
        own = subset.percent if subset is not None and subset.percent is not None else 100.0
        subset = SubsetSettings(percent=min(own, environment.sample))
    return collection.model_copy(update={
        "target": f"{database}.{collection.target_collection}", "subset": subset,
    })


class EnvironmentCache:
    """The environments the stream writes into, as a worker process sees them: read from the
    store when the change token (`token`, the store's ChangeSignal) is not the one it was read
    under, or `seconds` after it was. A failed read of the store raises, as the main apply's
    own reads of the state database would; a failed read of the token reads the store."""

    def __init__(self, load: Callable[[], list[Environment]], token: Callable[[], object],
                 seconds: float = RECHECK_SECONDS, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._load = load
        self._token = token
        self._seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._value: list[Environment] = []
        self._at: float | None = None
        self._seen: object = None

    def refresh(self) -> None:
        """Read the store at the next `current()` (a process that just changed it)."""
        with self._lock:
            self._at = None

    def current(self) -> list[Environment]:
        with self._lock:
            now = self._clock()
            try:
                token = self._token()
            except Exception:  # Redis is down: the store decides, every time
                token = object()  # equal to nothing: read the store
            if self._at is None or token != self._seen or now - self._at >= self._seconds:
                # The token first, then the store: a change announced between the two is
                # read again at the next check, never missed.
                self._value = self._load()
                self._at = now
                self._seen = token
            return list(self._value)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
