"""Making and unmaking environments: their copy (fill) and their deletion.

Shared by `stagesync env ...` (which publishes through the broker-only app) and by the workers
(a finished resync continues its environment's fill; beat deletes expired environments). No
task is defined here.

**Fill.** An environment is filled by the existing resync machinery, one resync per collection
into the environment's target (`orders@pr-1`: `Runtime.context` resolves the scoped name, and
the resync takes its versions from the collection's counter). Collections whose subset follows
a reference start once the referenced collection's copy is done, so a sampled environment's
closure is decided against a complete parent copy (children that arrive through the stream
meanwhile are decided the same way). Each resync is recorded in the environment before its
task is published; a fill continued again (another finished resync, or `env create` re-run on
an environment stuck in `creating`) re-publishes the unfinished ones (idempotent), restarts
failed ones, and starts what is missing. When every collection's copy is done the environment
goes `creating` -> `live` (compare-and-set).

**Delete.** The record goes to `deleting` first (so it is never listed or streamed again),
then exactly the databases recorded for it are dropped, then what the state database keeps
under its scoped names (dead letters, pending references, index-mirror records, its resyncs'
running state), its Redis counters, and last the record. A delete killed halfway is finished
by the next delete or expiry pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import redis
from celery import Celery
from pymongo import MongoClient
from pymongo.database import Database
from stagesync.protocol.names import RESYNC, scoped_name, stats_key
from stagesync.protocol.routing import home_queue
from stagesync.rules.document import Document
from stagesync.settings.model import Settings
from stagesync.state.dead_letters import DeadLetterStore
from stagesync.state.environments import (
    CREATE_SETTLE_SECONDS,
    CREATING,
    DELETING,
    LISTED,
    LIVE,
    Environment,
    EnvironmentStore,
)
from stagesync.state.index_mirror_records import IndexMirrorRecords
from stagesync.state.pending_references import PendingReferences
from stagesync.state.resync_progress import ensure_resync_indexes, fail, new_resync, progress

log = logging.getLogger("stagesync.environments")

RUNNING = ("planning", "applying", "sweeping")
# Between marking an environment `deleting` and dropping its databases: the workers' cache
# (CACHE_SECONDS) and an apply already under way (its environments written after the main
# staging's) end first. An environment apply that outlives it could create a database again;
# the next expiry pass does not see it (the record is gone): see README, "Environments".
DELETE_SETTLE_SECONDS = CREATE_SETTLE_SECONDS


def fill_order(settings: Settings) -> dict[str, str | None]:
    """Collection -> the collection its subset follows (None: it can start at once)."""
    return {
        collection.name: collection.references[collection.subset.follow]
        if collection.subset and collection.subset.follow else None
        for collection in settings.collections
    }


def continue_filling(settings: Settings, state_db: Database[Document], app: Celery,
                     name: str) -> str | None:
    """Start or re-publish what the environment's copy still needs; `live` once it is all
    done. Returns the environment's state (None when it is gone)."""
    store = EnvironmentStore(state_db)
    environment = store.get(name)
    if environment is None or environment.state != CREATING:
        return environment.state if environment else None
    states = {collection: _resync_state(state_db, resync)
              for collection, resync in environment.resyncs.items()}
    ensure_resync_indexes(state_db)
    for collection, parent in fill_order(settings).items():
        state = states.get(collection)
        if state in RUNNING:
            _publish(settings, app, collection, name, environment.resyncs[collection])
        elif state != "done" and (parent is None or states.get(parent) == "done"):
            resync = new_resync(state_db, scoped_name(collection, name),
                                f"environment {name}")
            store.set_resyncs(name, {collection: resync})  # recorded, then published
            _publish(settings, app, collection, name, resync)
            states[collection] = "planning"
    if all(states.get(collection) == "done" for collection in fill_order(settings)):
        store.transition(name, [CREATING], LIVE)
        log.info("environment live", extra={"environment": name})
        return LIVE
    return CREATING


def _publish(settings: Settings, app: Celery, collection: str, environment: str,
             resync: str) -> None:
    """The resync's coordinator, on the collection's home queue (idempotent: run again on a
    resync in progress it re-publishes lost chunks and plans what is missing)."""
    app.send_task(RESYNC, args=[scoped_name(collection, environment), resync],
                  queue=home_queue(settings.collection(collection)))


def _resync_state(state_db: Database[Document], resync: str) -> str | None:
    try:
        return progress(state_db, resync)["state"]  # type: ignore[no-any-return]
    except KeyError:
        return None  # expired or never recorded: started again


def fill_progress(state_db: Database[Document], environment: Environment
                  ) -> dict[str, dict[str, Any]]:
    """Per collection with a resync: its state, documents done and expected, error."""
    found = {}
    for collection, resync in environment.resyncs.items():
        try:
            found[collection] = progress(state_db, resync)
        except KeyError:
            found[collection] = {"state": None, "done": 0, "total": None, "error": None}
    return found


def delete_environment(settings: Settings, state_db: Database[Document],
                       client: MongoClient[Document], name: str,
                       broker: redis.Redis | None = None) -> list[str]:
    """Drop the environment's recorded databases, then its records; returns the databases
    dropped. Raises NoSuchEnvironment when there is none."""
    store = EnvironmentStore(state_db)
    environment = store.require(name)
    if not store.transition(name, [*LISTED, DELETING], DELETING):
        environment = store.require(name)  # raced with another delete: it is gone, or not
    for resync in environment.resyncs.values():
        fail(state_db, resync, f"environment {name} deleted")  # its chunks stop
    # Workers stop writing into it once they re-read the list (at most CACHE_SECONDS):
    # a write after the drop would create the database again, unrecorded.
    time.sleep(DELETE_SETTLE_SECONDS)
    dropped = []
    for database in sorted(set(environment.databases.values())):
        client.drop_database(database)
        dropped.append(database)
    scoped = [scoped_name(collection.name, name) for collection in settings.collections]
    _forget(state_db, scoped)
    if broker is not None:
        broker.delete(*(stats_key(scope) for scope in scoped))
    store.remove(name)
    log.info("environment deleted", extra={"environment": name, "databases": dropped})
    return dropped


def _forget(state_db: Database[Document], scoped: Iterable[str]) -> None:
    dead_letters, pending = DeadLetterStore(state_db), PendingReferences(state_db)
    for scope in scoped:
        dead_letters.purge(scope)
        pending.forget_collection(scope)
        IndexMirrorRecords(state_db, scope).forget_all()
