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

The stream writes into the environments in STREAMED states; workers read them through
`EnvironmentCache`, which asks the store at most once per `CACHE_SECONDS` per process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError
from stagesync.protocol.names import ENVIRONMENTS

CREATING, LIVE, FROZEN, RESETTING, DELETING = "creating", "live", "frozen", "resetting", \
    "deleting"
LISTED = (CREATING, LIVE, FROZEN, RESETTING)  # what `env list` shows
STREAMED = (CREATING, LIVE, RESETTING)  # the stream writes into these
# Workers learn which environments exist from the store, at most this old. `env create`
# waits CREATE_SETTLE_SECONDS after recording an environment before its copy reads
# production, so that every apply that reads production after the copy began knows it.
CACHE_SECONDS = 1.0
CREATE_SETTLE_SECONDS = 3 * CACHE_SECONDS
EXPIRY_INDEX = "stagesync_environments_expiry"


class EnvironmentRefused(RuntimeError):
    """A command that the store refuses; the message says which rule."""


class NameTaken(EnvironmentRefused):
    pass


class TooManyEnvironments(EnvironmentRefused):
    pass


class NoSuchEnvironment(EnvironmentRefused):
    pass


@dataclass(frozen=True)
class Environment:
    name: str
    state: str
    created_at: datetime
    expires_at: datetime | None
    sample: float | None
    databases: dict[str, str]  # main staging's target database -> the environment's
    resyncs: dict[str, str]  # collection -> the resync that fills it

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Environment:
        return cls(
            name=str(record["_id"]), state=str(record["state"]),
            created_at=_aware(record["createdAt"]),
            expires_at=_aware(record["expiresAt"]) if record.get("expiresAt") else None,
            sample=record.get("sample"),
            databases={str(k): str(v) for k, v in (record.get("databases") or {}).items()},
            resyncs={str(k): str(v) for k, v in (record.get("resyncs") or {}).items()},
        )


class EnvironmentStore:
    def __init__(self, state_db: Database[dict[str, Any]]) -> None:
        self.records = state_db[ENVIRONMENTS]

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
        try:
            self.records.insert_one(record)
        except DuplicateKeyError:
            raise NameTaken(f"environment {name!r} already exists") from None
        total = self.records.count_documents({})
        if total > limit:
            self.records.delete_one({"_id": name, "state": CREATING})
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
                   also: Mapping[str, Any] | None = None) -> bool:
        """Compare-and-set: move `name` from one of `before` to `after`; False when it was in
        no such state (another command won, or it is gone)."""
        result = self.records.update_one(
            {"_id": name, "state": {"$in": list(before)}},
            {"$set": {"state": after, **(also or {})}, "$currentDate": {"changedAt": True}},
        )
        return result.matched_count == 1

    def set_resyncs(self, name: str, resyncs: Mapping[str, str]) -> None:
        """The resyncs filling a `creating` environment, by collection."""
        self.records.update_one(
            {"_id": name, "state": CREATING},
            {"$set": {f"resyncs.{collection}": resync for collection, resync
                      in resyncs.items()}},
        )

    def remove(self, name: str) -> bool:
        """The record goes last, once its databases are dropped; only from `deleting`."""
        return self.records.delete_one({"_id": name, "state": DELETING}).deleted_count == 1

    def expired(self, now: datetime | None = None) -> list[Environment]:
        """Environments past their lifetime, and deletes that a killed process left
        halfway (`deleting`): the expiry pass finishes both."""
        moment = now or datetime.now(UTC)
        return [Environment.from_record(record) for record in self.records.find(
            {"$or": [{"expiresAt": {"$lte": moment}}, {"state": DELETING}]})]


class EnvironmentCache:
    """The environments the stream writes into, as a worker process sees them: read from the
    store at most once per `seconds`. A failed read raises, as the main apply's own reads of
    the state database would."""

    def __init__(self, load: Callable[[], list[Environment]],
                 seconds: float = CACHE_SECONDS, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._load = load
        self._seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._value: list[Environment] = []
        self._at: float | None = None

    def refresh(self) -> None:
        """Read the store at the next `current()` (a process that just changed it)."""
        with self._lock:
            self._at = None

    def current(self) -> list[Environment]:
        with self._lock:
            now = self._clock()
            if self._at is None or now - self._at >= self._seconds:
                self._value = self._load()
                self._at = now
            return list(self._value)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
