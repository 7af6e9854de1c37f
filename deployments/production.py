"""Read-only access to production: the only door through which stagesync touches it.

The pymongo client stays private to this module and the classes below expose read operations
only (find, change streams, counts), so no code path in watcher, workers or CLI can issue a
write to production; invariant 1 is enforced here rather than by convention. A command
listener additionally records every command name sent, which the tests use to prove it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bson import Timestamp
from pymongo import MongoClient, monitoring
from pymongo.change_stream import CollectionChangeStream
from pymongo.errors import OperationFailure, PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.read_preferences import ReadPreference
from stagesync.deployments.in_lists import in_lists
from stagesync.settings.collection import CollectionSettings
from stagesync.settings.model import ProductionSettings

# Commands a reader legitimately sends; anything else reaching production is a bug.
READ_COMMANDS = frozenset({
    "find", "getMore", "aggregate", "count", "distinct", "listCollections", "listIndexes",
    "killCursors", "hello", "isMaster", "ismaster", "ping", "buildInfo", "serverStatus",
    "endSessions", "saslStart", "saslContinue", "authenticate", "getnonce",
    "replSetGetStatus", "collStats", "dbStats", "connectionStatus", "getParameter",
})
# Unauthorized, AuthenticationFailed: the user lacks the privilege.
UNAUTHORIZED_CODES = frozenset({13, 18})
# A server that stops answering must not hang a watcher or worker forever; every read here
# returns well within this (change streams wait at most their await time per getMore).
SOCKET_TIMEOUT_MS = 60_000


class CommandLog(monitoring.CommandListener):
    """Remembers which commands went to production (names only, never arguments), and counts
    each thread's getMores: a change stream's reader learns from it whether a read went to
    the server (pymongo does not say), so it can pace its fetches."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self._thread = threading.local()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.add(event.command_name)
        if event.command_name == "getMore":
            # Listeners run in the thread that sends the command.
            self._thread.get_mores = self.get_mores() + 1

    def get_mores(self) -> int:
        """The getMores the calling thread has sent so far."""
        return int(getattr(self._thread, "get_mores", 0))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    @property
    def writes(self) -> set[str]:
        return self.names - READ_COMMANDS


class ReadOnlyCollection:
    """The read operations of one production collection."""

    def __init__(self, collection: Any) -> None:
        self._collection = collection

    @property
    def full_name(self) -> str:
        return str(self._collection.full_name)

    def find(
        self,
        query: Mapping[str, Any],
        projection: Mapping[str, Any] | None = None,
        *,
        sort: Sequence[tuple[str, int]] | None = None,
        limit: int = 0,
        batch_size: int = 0,
        skip: int = 0,
        hint: Sequence[tuple[str, int]] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """A cursor (closable) over the matching documents; `skip` and `hint` let a resync
        find chunk bounds by walking the `_id` index without reading every `_id`."""
        cursor = self._collection.find(query, projection, limit=limit, batch_size=batch_size,
                                       skip=skip, hint=list(hint) if hint else None)
        if sort:
            cursor = cursor.sort(list(sort))
        return iter(cursor)

    def estimated_count(self) -> int:
        """The collection's size from its metadata (`count` without a filter): sizes resync
        chunks without a scan."""
        return int(self._collection.estimated_document_count())

    def find_one(self, query: Mapping[str, Any]) -> dict[str, Any] | None:
        return self._collection.find_one(query)  # type: ignore[no-any-return]

    def index_keys(self) -> list[list[str]]:
        """The key fields of each index, in order (`listIndexes`, a read)."""
        return [list(index["key"]) for index in self._collection.list_indexes()]

    def list_indexes(self) -> list[dict[str, Any]]:
        """Every index's full definition as `listIndexes` gives it (a read); none for a
        collection that does not exist (yet). The index mirror copies them; `stagesync init`
        proposes business keys from the unique ones."""
        return [dict(index) for index in self._collection.list_indexes()]

    def watch(
        self,
        pipeline: Sequence[Mapping[str, Any]] | None = None,
        *,
        resume_after: Mapping[str, Any] | None = None,
        start_after: Mapping[str, Any] | None = None,
        batch_size: int | None = None,
        max_await_time_ms: int | None = None,
        show_expanded_events: bool | None = None,
    ) -> CollectionChangeStream[dict[str, Any]]:
        """A change stream; `show_expanded_events` adds the DDL events of MongoDB 6.0+
        (`createIndexes`, `dropIndexes`, `modify`, ...), which the index mirror follows."""
        return self._collection.watch(  # type: ignore[no-any-return]
            list(pipeline or []), resume_after=resume_after, start_after=start_after,
            batch_size=batch_size, max_await_time_ms=max_await_time_ms,
            show_expanded_events=show_expanded_events,
        )


class ProductionReader:
    """A production deployment, opened for reading only."""

    def __init__(self, settings: ProductionSettings, **client_options: Any) -> None:
        self.commands = CommandLog()
        options = {"socketTimeoutMS": SOCKET_TIMEOUT_MS, **client_options}
        self._client: MongoClient[dict[str, Any]] = MongoClient(
            settings.uri,
            read_preference=ReadPreference.PRIMARY,
            readConcernLevel=settings.read_concern,
            event_listeners=[self.commands],
            appname="stagesync-reader",
            **options,
        )
        self._read_concern = ReadConcern(settings.read_concern)

    def collection(self, namespace: CollectionSettings | str) -> ReadOnlyCollection:
        full = namespace.source if isinstance(namespace, CollectionSettings) else namespace
        database, _, name = full.partition(".")
        return ReadOnlyCollection(
            self._client[database].get_collection(name, read_concern=self._read_concern)
        )

    def find_marker(self, database: str, collection: str, marker: str) -> bool:
        """Whether a document with this `_id` exists; used by the same-deployment guard."""
        return self._client[database][collection].find_one({"_id": marker}, {"_id": 1}) is not None

    def ping(self) -> None:
        self._client.admin.command("ping")

    def namespaces(self) -> list[str]:
        """`database.collection` of every collection (not views, not system collections)
        outside admin, config and local: `listDatabases` and `listCollections`, both reads
        (a user without `listDatabases` sees the databases it may read)."""
        found = []
        for entry in self._client.list_databases(nameOnly=True, authorizedDatabases=True):
            database = entry["name"]
            if database in ("admin", "config", "local"):
                continue
            for info in self._client[database].list_collections(
                    filter={"type": "collection"}, authorizedCollections=True, nameOnly=True):
                if not info["name"].startswith("system."):
                    found.append(f"{database}.{info['name']}")
        return sorted(found)

    def cluster_time(self) -> Timestamp | None:
        """Production's cluster time now (a `ping`'s `operationTime`); None where the
        deployment keeps none (a standalone server)."""
        reply = self._client.admin.command("ping")
        moment = reply.get("operationTime") or (reply.get("$clusterTime") or {}).get(
            "clusterTime")
        return moment if isinstance(moment, Timestamp) else None

    def hello(self) -> dict[str, Any]:
        return dict(self._client.admin.command("hello"))

    def server_version(self) -> tuple[int, ...]:
        """`buildInfo.versionArray` (a read), e.g. (7, 0, 4, 0): which change events exist."""
        info = self._client.admin.command("buildInfo")
        array = info.get("versionArray")
        if isinstance(array, list) and array:
            return tuple(int(part) for part in array if isinstance(part, int))
        return tuple(int(part) for part in str(info.get("version", "0")).split(".")
                     if part.isdigit())

    def server_status(self) -> dict[str, Any]:
        """Needs `clusterMonitor`; the guard asks it only when `hello` cannot decide."""
        return dict(self._client.admin.command("serverStatus"))

    @property
    def load_balanced(self) -> bool:
        """Connected through a load balancer (URI or SRV TXT `loadBalanced=true`): each
        connection may reach a different `mongos`."""
        return bool(self._client.options.load_balanced)

    def oplog_window(self) -> OplogWindow:
        """Time between the oldest and newest oplog entries, or why it cannot be known."""
        try:
            if self.load_balanced or self.hello().get("msg") == "isdbgrid":
                return OplogWindow(None, "production is a sharded cluster: each shard keeps "
                                         "its own oplog, which mongos does not serve")
        except PyMongoError as error:
            return OplogWindow(None, f"production did not answer hello ({_error_name(error)})")
        oplog = self._client["local"]["oplog.rs"]
        window = read_oplog_window(oplog)
        if window.seconds is None:
            return window
        return OplogWindow(window.seconds, history=read_oplog_fill(oplog))

    def close(self) -> None:
        self._client.close()


@dataclass(frozen=True)
class OplogWindow:
    seconds: float | None
    unknown_because: str | None = None
    # "unbounded" (not capped), "not_full" (capped, nothing dropped yet), "full", or None
    # (unknown). Only a full oplog drops its oldest entries: only then is window minus
    # checkpoint age a countdown.
    history: str | None = None


def read_oplog_fill(oplog: Any) -> str | None:
    """Whether the oplog is capped, and if so whether it has reached its bound yet, from
    `$collStats` (storage statistics: `capped`, `max`/`count`, `maxSize`/`size`). Needs the
    `collStats` action on local.oplog.rs (`clusterMonitor`); None when refused or unanswered."""
    try:
        stats = next(iter(oplog.aggregate([{"$collStats": {"storageStats": {}}}])), None)
    except PyMongoError:
        return None
    return oplog_fill((stats or {}).get("storageStats"))


def oplog_fill(stats: dict[str, Any] | None) -> str | None:
    """Pure reading of storage statistics; see `read_oplog_fill`. A capped collection is
    full once its count reaches `max` or its size comes within 5% of `maxSize` (MongoDB
    truncates the oplog in whole stones, so it never sits exactly at its size)."""
    if not stats or "capped" not in stats:
        return None
    if not stats["capped"]:
        return "unbounded"
    max_count, count = stats.get("max") or 0, stats.get("count")
    max_size, size = stats.get("maxSize") or 0, stats.get("size")
    if max_count and isinstance(count, int) and count >= max_count:
        return "full"
    if max_size and isinstance(size, int | float) and size >= 0.95 * max_size:
        return "full"
    if (max_count and isinstance(count, int)) or (max_size and isinstance(size, int | float)):
        return "not_full"
    return None


def read_oplog_window(oplog: Any) -> OplogWindow:
    """Oldest and newest entries of `local.oplog.rs`. Reading it needs `find` on the `local`
    database (e.g. `read` on `local`, or `clusterMonitor`), which a user with `read` on the
    source databases alone, or an Atlas shared tier, does not have."""
    try:
        first = oplog.find_one({}, {"ts": 1}, sort=[("$natural", 1)])
        last = oplog.find_one({}, {"ts": 1}, sort=[("$natural", -1)])
    except OperationFailure as error:
        if error.code in UNAUTHORIZED_CODES:
            return OplogWindow(None, "the production user may not read local.oplog.rs "
                                     "(grant read on the local database; see README, "
                                     "Privileges)")
        return OplogWindow(None, f"local.oplog.rs could not be read ({_error_name(error)})")
    except PyMongoError as error:
        return OplogWindow(None, f"local.oplog.rs could not be read ({_error_name(error)})")
    if not first or not last or "ts" not in first or "ts" not in last:
        return OplogWindow(None, "production has no oplog (not a replica set member)")
    return OplogWindow(float(last["ts"].time - first["ts"].time))


def _error_name(error: PyMongoError) -> str:
    """Code and name only: server messages can quote values."""
    if isinstance(error, OperationFailure):
        name = (error.details or {}).get("codeName")
        return f"{error.code} {name}" if name else f"code {error.code}"
    return type(error).__name__


def read_documents(
    collection: ReadOnlyCollection,
    ids: Iterable[Any],
    query_filter: Mapping[str, Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Current production documents for these `_id`s (a query per `IN_LIST_MAX` of them);
    absent ones are gone."""
    for some in in_lists(ids):
        by_id: dict[str, Any] = {"_id": {"$in": some}}
        # At most one document per `_id`: a first batch that holds them all saves the getMore
        # a list of more than 101 (the server's default first batch) would cost.
        yield from collection.find({"$and": [by_id, dict(query_filter)]} if query_filter
                                   else by_id, batch_size=len(some))
