"""Making and unmaking environments: their copy (fill) and their deletion.

Shared by `stagesync env ...` (which publishes through the broker-only app) and by the workers
(a finished resync continues its environment's fill; beat deletes expired environments). No
task is defined here.

**Fill.** An environment is filled by the existing resync machinery, one resync per collection
into the environment's target (`orders@pr-1`: `Runtime.context` resolves the scoped name, and
the resync takes its versions from the collection's counter). Collections whose subset follows
a reference open their copy once the referenced collection's copy is done, so a sampled
environment's closure is decided against a complete parent copy (children that arrive through
the stream meanwhile are decided the same way); their resyncs start with the parent's, and ask
production what they can meanwhile (`tasks.resync._set_up`). Each resync is recorded in the
environment before its task is published; a fill continued again (another finished resync,
or `env create` re-run on an environment stuck in `creating`) re-publishes the unfinished ones
(idempotent), restarts failed ones, and starts what is missing. When every collection's copy
is done the environment goes `creating` -> `live` (compare-and-set).

**Thaw.** A thaw that drains publishes one `stagesync.thaw_environment` task per collection,
which applies the remembered documents a chunk at a time (`tasks.environment_thaw`); a thaw
that resyncs fills the collections again as a create does, into the live environment (its
sweep soft-deletes what production lost meanwhile). Either is continued by running it again.

**Reset.** The environment goes `resetting` (compare-and-set), its earlier copies stop, its
backlog is cleared, and after SETTLE_SECONDS its documents are removed: every collection
stagesync does not sync is dropped from its databases (fixtures), the synced ones are emptied
with their indexes kept (so the stream, which writes into a resetting environment, never meets
a collection without its unique indexes). Then it is filled as a create fills it. A reset run
again before the removal is recorded starts over; after it, it continues the fill.

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
from stagesync.protocol.names import RESYNC as RESYNC_TASK
from stagesync.protocol.names import THAW_ENVIRONMENT, scoped_name, stats_key
from stagesync.protocol.routing import home_queue
from stagesync.rules.document import Document
from stagesync.settings.model import Settings
from stagesync.state.dead_letters import DeadLetterStore
from stagesync.state.environment_backlog import EnvironmentBacklog
from stagesync.state.environments import (
    DELETING,
    DRAIN,
    FILLING,
    LISTED,
    LIVE,
    RESETTING,
    RESYNC,
    SETTLE_SECONDS,
    Environment,
    EnvironmentRefused,
    EnvironmentStore,
    environment_settings,
)
from stagesync.state.index_mirror_records import IndexMirrorRecords
from stagesync.state.pending_references import PendingReferences
from stagesync.state.resync_progress import (
    ensure_resync_indexes,
    fail,
    new_resync,
    progress,
    started_since,
)
from stagesync.tasks import metrics

log = logging.getLogger("stagesync.environments")

RUNNING = ("planning", "applying", "sweeping")


def fill_order(settings: Settings) -> dict[str, str | None]:
    """Collection -> the collection its subset follows (None: it can start at once)."""
    return {
        collection.name: collection.references[collection.subset.follow]
        if collection.subset and collection.subset.follow else None
        for collection in settings.collections
    }


def continue_filling(settings: Settings, state_db: Database[Document], store: EnvironmentStore,
                     app: Celery, name: str) -> str | None:
    """Start or re-publish what the environment's copy still needs; `live` once it is all
    done. Returns the environment's state (None when it is gone)."""
    environment = store.get(name)
    if environment is None:
        return None
    filling = environment.state in FILLING and environment.wiped
    if not filling and environment.thaw_mode != RESYNC:
        return environment.state
    # Before any copy is published (again): a copy reads production only once every worker's
    # next check knows the environment, so every apply that reads production after the copy
    # writes it too. A process killed between a write of the store and its announcement
    # (each write announces itself) is covered by this one.
    store.announce()
    states = {collection: _resync_state(state_db, resync)
              for collection, resync in environment.resyncs.items()}
    ensure_resync_indexes(state_db)
    for collection in fill_order(settings):
        state = states.get(collection)
        if state in RUNNING:
            _publish(settings, app, collection, name, environment.resyncs[collection])
        elif state != "done":
            # A follower starts too: its set-up waits for its parent's copy (`tasks.resync`).
            resync = new_resync(state_db, scoped_name(collection, name),
                                f"environment {name}")
            store.set_resyncs(name, {collection: resync})  # recorded, then published
            _publish(settings, app, collection, name, resync)
            states[collection] = "planning"
    if all(states.get(collection) == "done" for collection in fill_order(settings)):
        if filling:
            store.transition(name, [environment.state], LIVE)
        else:
            store.finish_thaw(name)
        log.info("environment live", extra={"environment": name})
        return LIVE
    return environment.state


def parent_copied(settings: Settings, state_db: Database[Document], collection: str,
                  name: str) -> bool:
    """Whether the copy that `collection` follows in this environment is done (True when it
    follows none): a sampled environment's closure is decided against a complete parent."""
    parent = fill_order(settings).get(collection)
    if parent is None:
        return True
    environment = EnvironmentStore(state_db).get(name)
    resync = environment.resyncs.get(parent) if environment is not None else None
    return resync is not None and _resync_state(state_db, resync) == "done"


def _publish(settings: Settings, app: Celery, collection: str, environment: str,
             resync: str) -> None:
    """The resync's coordinator, on the collection's home queue (idempotent: run again on a
    resync in progress it re-publishes lost chunks and plans what is missing)."""
    app.send_task(RESYNC_TASK, args=[scoped_name(collection, environment), resync],
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


def thaw_mode(settings: Settings, state_db: Database[Document], environment: Environment
              ) -> str:
    """Drain the backlog, or resync when it overflowed or production's history was lost
    while the environment was frozen (a resync of the main staging began: the changes it
    caught up on never reached the stream, so the backlog does not hold them)."""
    if environment.overflowed:
        return RESYNC
    frozen_at = environment.frozen_at or environment.created_at
    if any(started_since(state_db, collection.name, frozen_at)
           for collection in settings.collections):
        return RESYNC
    return DRAIN


def continue_thawing(settings: Settings, state_db: Database[Document], store: EnvironmentStore,
                     app: Celery, name: str) -> str | None:
    """Publish what the environment's thaw still needs: a drain per collection not caught
    up, or the resyncs. Returns the environment's state (None when it is gone)."""
    environment = store.get(name)
    if environment is None or environment.thaw is None:
        return environment.state if environment else None
    if environment.thaw_mode == RESYNC:
        return continue_filling(settings, state_db, store, app, name)
    done = set(environment.thaw.get("done") or [])
    for collection in settings.collections:
        if collection.name not in done:
            app.send_task(THAW_ENVIRONMENT, args=[scoped_name(collection.name, name)],
                          queue=home_queue(collection))
    return environment.state


def reset_environment(settings: Settings, state_db: Database[Document], store: EnvironmentStore,
                      client: MongoClient[Document], app: Celery, name: str) -> None:
    """Return the environment to production's state (see the module docstring)."""
    environment = store.require(name)
    if not (environment.state == RESETTING and environment.wiped):
        if not store.begin_reset(name):
            raise EnvironmentRefused(
                f"environment {name!r} is {environment.state}: only a live or frozen "
                "environment can be reset")
        for resync in environment.resyncs.values():
            fail(state_db, resync, f"environment {name} reset")  # its chunks stop
        EnvironmentBacklog(state_db).clear(name)
        time.sleep(SETTLE_SECONDS)  # workers know it is resetting, not frozen
        _wipe(settings, client, store.require(name))
        _forget(state_db, [scoped_name(collection.name, name)
                           for collection in settings.collections], keep_indexes=True)
        store.wiped(name)
    continue_filling(settings, state_db, store, app, name)


def _wipe(settings: Settings, client: MongoClient[Document], environment: Environment) -> None:
    synced: dict[str, set[str]] = {}
    for collection in settings.collections:
        copy = environment_settings(collection, environment)
        synced.setdefault(copy.target_db, set()).add(copy.target_collection)
    for database in sorted(set(environment.databases.values())):
        for name in client[database].list_collection_names():
            if name in synced.get(database, set()):
                client[database][name].delete_many({})
            elif not name.startswith("system."):
                client[database].drop_collection(name)


def delete_environment(settings: Settings, state_db: Database[Document], store: EnvironmentStore,
                       client: MongoClient[Document], name: str,
                       broker: redis.Redis | None = None) -> list[str]:
    """Drop the environment's recorded databases, then its records; returns the databases
    dropped. Raises NoSuchEnvironment when there is none."""
    environment = store.require(name)
    if not store.transition(name, [*LISTED, DELETING], DELETING):
        environment = store.require(name)  # raced with another delete: it is gone, or not
    for resync in environment.resyncs.values():
        fail(state_db, resync, f"environment {name} deleted")  # its chunks stop
    # Workers stop writing into it at their next check of the list, and an apply already
    # under way ends: a write after the drop would create the database
    # again, unrecorded, and the next expiry pass would not see it (README, "Environments").
    time.sleep(SETTLE_SECONDS)
    dropped = []
    for database in sorted(set(environment.databases.values())):
        client.drop_database(database)
        dropped.append(database)
    scoped = [scoped_name(collection.name, name) for collection in settings.collections]
    _forget(state_db, scoped)
    EnvironmentBacklog(state_db).clear(name)
    if broker is not None:
        broker.delete(*(stats_key(scope) for scope in scoped))
    store.remove(name)
    metrics.forget_environment(name)  # this process's series (the workers' scrape: metrics)
    log.info("environment deleted", extra={"environment": name, "databases": dropped})
    return dropped


def _forget(state_db: Database[Document], scoped: Iterable[str],
            keep_indexes: bool = False) -> None:
    """What the state database keeps under the environment's scoped names; `keep_indexes`:
    its collections stay (a reset), and so do the records of their mirrored indexes."""
    dead_letters, pending = DeadLetterStore(state_db), PendingReferences(state_db)
    for scope in scoped:
        dead_letters.purge(scope)
        pending.forget_collection(scope)
        if not keep_indexes:
            IndexMirrorRecords(state_db, scope).forget_all()
