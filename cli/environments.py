"""`stagesync env create|list|freeze|thaw|reset|delete`: environments, short-lived stagings
beside the main one.

The commands record and change environments in the state database (`state.environments`),
create their databases with stagesync's indexes, and fill them through the resync machinery
(`tasks.environment_ops`); the workers stream into them (`tasks.apply.targets`).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import redis
from pymongo import MongoClient
from rich.console import Console
from rich.table import Table
from stagesync.deployments.broker import ChangeSignal
from stagesync.deployments.guard import (
    SameDeploymentError,
    assert_distinct_deployments,
    assert_distinct_uris,
)
from stagesync.deployments.production import ProductionReader
from stagesync.deployments.staging import connect_staging
from stagesync.deployments.staging_indexes import ensure, target_indexes
from stagesync.protocol.names import ENVIRONMENTS_CHANGED_KEY, watcher_key
from stagesync.rules.document import Document
from stagesync.settings.durations import parse_duration
from stagesync.settings.environments import check_environment_name
from stagesync.settings.model import Settings
from stagesync.state.database import state_database
from stagesync.state.environment_backlog import EnvironmentBacklog
from stagesync.state.environments import (
    CREATING,
    DRAIN,
    FILLING,
    FROZEN,
    LIVE,
    RESYNC,
    SETTLE_SECONDS,
    Environment,
    EnvironmentRefused,
    EnvironmentStore,
    environment_settings,
)
from stagesync.state.guard_markers import GuardMarkers
from stagesync.tasks.enqueue import broker_app
from stagesync.tasks.environment_ops import (
    continue_filling,
    continue_thawing,
    delete_environment,
    fill_progress,
    reset_environment,
    thaw_mode,
)

POLL_SECONDS = 0.5
HEARTBEAT_FRESH_SECONDS = 10.0


class Refused(Exception):
    """The command cannot do what was asked; `code` is the exit code (2: bad arguments)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Environments:
    """The connections the commands share: staging (state), the environments' deployment."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.staging = connect_staging(settings.staging, serverSelectionTimeoutMS=10_000)
        self.state_db = state_database(self.staging, settings.staging)
        self.broker = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
        self.store = EnvironmentStore(self.state_db,
                                      ChangeSignal(self.broker, ENVIRONMENTS_CHANGED_KEY))
        self.store.ensure_indexes()
        self.backlog = EnvironmentBacklog(self.state_db)
        uri = settings.environments.uri
        self.client: MongoClient[Document] = self.staging if uri is None else connect_staging(
            settings.staging.model_copy(update={"uri": uri}), serverSelectionTimeoutMS=10_000)

    def close(self) -> None:
        self.broker.close()
        if self.client is not self.staging:
            self.client.close()
        self.staging.close()

    def __enter__(self) -> Environments:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def guard(self) -> None:
        """Never on production: the same-deployment guard, for a deployment of their own."""
        uri = self.settings.environments.uri
        if uri is None:
            return  # the staging deployment, which every process already guards
        settings = self.settings.model_copy(
            update={"staging": self.settings.staging.model_copy(update={"uri": uri})})
        assert_distinct_uris(settings)  # before asking any server
        production = ProductionReader(self.settings.prod, serverSelectionTimeoutMS=10_000)
        try:
            assert_distinct_deployments(production, self.client, settings, GuardMarkers(
                state_database(self.client, settings.staging)))
        finally:
            production.close()

    # -- create -------------------------------------------------------------------------------
    def create(self, name: str, sample: float | None, ttl: str | None) -> Environment:
        """Record the environment (or take up one stuck in `creating`), create its databases
        with stagesync's indexes, and start its copy."""
        try:
            check_environment_name(name)
            databases = self.settings.environment_databases(name)
            lifetime = parse_duration(ttl) if ttl else self.settings.environments.default_ttl
        except ValueError as error:
            raise Refused(str(error), 2) from None
        self.guard()
        existing = self.store.get(name)
        if existing is not None and existing.state != CREATING:
            raise Refused(f"environment {name!r} already exists ({existing.state}); delete it "
                          "first or choose another name")
        try:
            environment = existing or self.store.create(
                name, databases, ttl=lifetime, sample=sample,
                limit=self.settings.environments.max)
        except EnvironmentRefused as error:
            raise Refused(str(error)) from None
        for collection in self.settings.collections:
            copy = environment_settings(collection, environment)
            ensure(self.client[copy.target_db][copy.target_collection], target_indexes(copy))
        continue_filling(self.settings, self.state_db, self.store, broker_app(self.settings),
                         name)
        return self.store.require(name)

    def wait_live(self, name: str, timeout: float, console: Console) -> str:
        """Follow the copy (a create's, a reset's, a resyncing thaw's) until the environment
        is live and caught up; its last state."""
        deadline = time.monotonic() + timeout if timeout > 0 else float("inf")
        shown = ""
        while True:
            environment = self.store.require(name)
            if environment.state not in FILLING and environment.thaw_mode != RESYNC:
                return environment.state
            progress = fill_progress(self.state_db, environment)
            failed = {c: p["error"] for c, p in progress.items() if p["state"] == "failed"}
            if failed:
                raise Refused(f"environment {name!r}: the copy of "
                              + ", ".join(f"{c} failed ({e})" for c, e in failed.items())
                              + f"; run `stagesync env create {name}` again to retry")
            line = ", ".join(f"{c} {p['done']}/{p['total'] if p['total'] is not None else '?'}"
                             f" {p['state']}" for c, p in sorted(progress.items()))
            if line != shown:
                console.print(f"{name}: copying: {line}")
                shown = line
            if time.monotonic() > deadline:
                return environment.state
            time.sleep(POLL_SECONDS)

    # -- freeze, thaw, reset --------------------------------------------------------------------
    def freeze(self, name: str) -> Environment:
        """`live` -> `frozen`; returns once no worker writes into it any more."""
        environment = self.store.require(name)
        if environment.state == FROZEN:
            return environment
        if environment.state != LIVE or environment.thaw is not None:
            doing = "thawing" if environment.thaw is not None else environment.state
            raise Refused(f"environment {name!r} is {doing}: only a live environment that "
                          "is not thawing can be frozen (wait for it: stagesync env list)")
        production = ProductionReader(self.settings.prod, serverSelectionTimeoutMS=10_000)
        try:
            cluster_time = production.cluster_time()
        finally:
            production.close()
        if not self.store.freeze(name, cluster_time, self.backlog.count(name)):
            raise Refused(f"environment {name!r} changed meanwhile; run the command again")
        time.sleep(SETTLE_SECONDS)  # workers see it frozen; writes under way end
        return self.store.require(name)

    def thaw(self, name: str) -> str:
        """`frozen` -> `live`, then start catching up (or continue a thaw left halfway);
        the way it catches up: `drain` or `resync`."""
        environment = self.store.require(name)
        if environment.state == FROZEN:
            mode = thaw_mode(self.settings, self.state_db, environment)
            if mode == RESYNC:
                self.backlog.clear(name)  # the copy covers it
            if not self.store.begin_thaw(name, mode):
                raise Refused(f"environment {name!r} changed meanwhile; run the command again")
            time.sleep(SETTLE_SECONDS)  # workers write it again, and remember no more
        elif environment.state != LIVE:
            raise Refused(f"environment {name!r} is {environment.state}: only a frozen "
                          "environment can be thawed")
        continue_thawing(self.settings, self.state_db, self.store, broker_app(self.settings),
                         name)
        return self.store.require(name).thaw_mode or "none"

    def wait_thawed(self, name: str, timeout: float, console: Console) -> bool:
        """Follow a draining thaw until it ends; False when `timeout` ran out first."""
        deadline = time.monotonic() + timeout if timeout > 0 else float("inf")
        shown = -1
        while True:
            environment = self.store.require(name)
            if environment.thaw is None:
                return environment.state == LIVE
            if environment.thaw_mode == RESYNC:
                return self.wait_live(name, max(0.0, deadline - time.monotonic())
                                      if timeout > 0 else 0.0, console) == LIVE \
                    and self.store.require(name).thaw is None
            waiting = self.backlog.count(name)
            if waiting != shown:
                console.print(f"{name}: thawing: {waiting} documents to apply")
                shown = waiting
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_SECONDS)

    def reset(self, name: str) -> None:
        try:
            reset_environment(self.settings, self.state_db, self.store, self.client,
                              broker_app(self.settings), name)
        except EnvironmentRefused as error:
            raise Refused(str(error)) from None

    # -- list -----------------------------------------------------------------------------------
    def describe(self) -> list[dict[str, Any]]:
        lags = self._lags()
        entries = []
        for environment in self.store.all():
            collections = {}
            for collection in self.settings.collections:
                copy = environment_settings(collection, environment)
                target = self.client[copy.target_db][copy.target_collection]
                collections[collection.name] = {
                    "target": copy.target,
                    "documents": target.count_documents(
                        {collection.soft_delete_field: {"$ne": True}}),
                    "lag_seconds": lags.get(collection.name, 0.0),
                }
            if environment.frozen_at is not None:
                # A frozen or thawing environment holds production as of its freeze.
                behind = round((datetime.now(UTC) - environment.frozen_at).total_seconds(), 3)
                for entry in collections.values():
                    entry["lag_seconds"] = max(entry["lag_seconds"], behind)
            entries.append({
                "name": environment.name, "state": environment.state,
                "created_at": environment.created_at.isoformat(),
                "expires_at": environment.expires_at.isoformat()
                if environment.expires_at else None,
                "sample": environment.sample, "collections": collections,
                **self._freeze_entry(environment),
            })
        return entries

    def _freeze_entry(self, environment: Environment) -> dict[str, Any]:
        """When it froze (wall clock, production's cluster time), whether a thaw is under
        way and how, and how many documents its backlog holds."""
        moment = environment.frozen_cluster_time
        entry: dict[str, Any] = {
            "frozen_at": environment.frozen_at.isoformat() if environment.frozen_at else None,
            "frozen_cluster_time": {"t": moment.time, "i": moment.inc} if moment else None,
            "thawing": environment.thaw_mode,
            "backlog": self.backlog.count(environment.name)
            if environment.frozen_at else 0,
        }
        return entry

    def _lags(self) -> dict[str, float]:
        """The stream's lag per collection (environments are written by the same task, right
        after the main staging), from the watcher's heartbeat in Redis; 0 when unknown."""
        lags: dict[str, float] = {}
        try:
            client = redis.Redis.from_url(self.settings.redis_url, socket_timeout=5)
            now = time.time()
            for collection in self.settings.collections:
                beat = {k.decode(): v.decode() for k, v in
                        client.hgetall(watcher_key(collection.name)).items()}
                alive = float(beat.get("heartbeat") or 0) > now - HEARTBEAT_FRESH_SECONDS
                oldest = float(beat.get("oldest_pending") or 0)
                lags[collection.name] = round(max(0.0, now - oldest), 3) \
                    if alive and oldest else 0.0
            client.close()
        except (redis.RedisError, ValueError):
            pass
        return lags

    # -- delete ---------------------------------------------------------------------------------
    def delete(self, name: str) -> list[str]:
        try:
            return delete_environment(self.settings, self.state_db, self.store, self.client,
                                      name, self.broker)
        except EnvironmentRefused as error:
            raise Refused(str(error)) from None


def print_table(console: Console, entries: list[dict[str, Any]]) -> None:
    if not entries:
        console.print("no environments (create one: stagesync env create pr-1 --sample 10 "
                      "--wait)")
        return
    table = Table()
    for column in ("environment", "state", "expires", "collection", "target", "documents",
                   "lag s"):
        table.add_column(column, justify="right" if column in ("documents", "lag s")
                         else "left")
    for entry in entries:
        first = True
        for name, collection in entry["collections"].items():
            state = entry["state"] + (" (thawing)" if entry.get("thawing") else "")
            table.add_row(entry["name"] if first else "", state if first else "",
                          (entry["expires_at"] or "never")[:19] if first else "", name,
                          collection["target"], str(collection["documents"]),
                          f"{collection['lag_seconds']:.1f}")
            first = False
    console.print(table)


def run_create(settings: Settings, name: str, sample: float | None, ttl: str | None,
               wait: bool, timeout: float, console: Console) -> int:
    with Environments(settings) as environments:
        try:
            environment = environments.create(name, sample, ttl)
        except SameDeploymentError as error:
            raise Refused(f"environments.uri: {error}", 3) from None
        sampled = f", sample {environment.sample:g}%" if environment.sample is not None else ""
        console.print(f"environment {name}: {environment.state}{sampled}, databases "
                      + ", ".join(sorted(environment.databases.values())))
        if not wait:
            if environment.state == CREATING:
                console.print("copying; follow it with: stagesync env list")
            return 0
        return _until_live(environments, name, timeout, console)


def _until_live(environments: Environments, name: str, timeout: float,
                console: Console) -> int:
    """`--wait` of a create or a reset: 0 once live, 1 when `timeout` ran out first."""
    state = environments.wait_live(name, timeout, console)
    if state != LIVE:
        console.print(f"[red]environment {name} is still {state} after {timeout:.0f}s[/red]")
        return 1
    console.print(f"environment {name}: live")
    return 0


def run_list(settings: Settings, as_json: bool, console: Console) -> int:
    with Environments(settings) as environments:
        entries = environments.describe()
    if as_json:
        print(json.dumps(entries, indent=2))
    else:
        print_table(console, entries)
    return 0


def run_freeze(settings: Settings, name: str, console: Console) -> int:
    with Environments(settings) as environments:
        environment = environments.freeze(name)
    moment = environment.frozen_cluster_time
    at = f" (production cluster time {moment.time}.{moment.inc})" if moment else ""
    console.print(f"environment {name}: frozen at "
                  f"{environment.frozen_at:%Y-%m-%dT%H:%M:%S}Z{at}; thaw it with: "
                  f"stagesync env thaw {name} --wait")
    return 0


def run_thaw(settings: Settings, name: str, wait: bool, timeout: float,
             console: Console) -> int:
    with Environments(settings) as environments:
        mode = environments.thaw(name)
        how = {DRAIN: "applying the documents it missed", RESYNC: "copying it again "
               "(its backlog overflowed, or production's history was lost)"}.get(mode)
        console.print(f"environment {name}: live, " + (f"thawing: {how}" if how else
                                                      "nothing to catch up"))
        if not wait or how is None:
            return 0
        if not environments.wait_thawed(name, timeout, console):
            console.print(f"[red]environment {name} has not caught up after {timeout:.0f}s; "
                          "the thaw goes on[/red]")
            return 1
        console.print(f"environment {name}: live, caught up")
        return 0


def run_reset(settings: Settings, name: str, wait: bool, timeout: float,
              console: Console) -> int:
    with Environments(settings) as environments:
        environments.reset(name)
        console.print(f"environment {name}: resetting: its documents are removed and copied "
                      "again from production")
        return _until_live(environments, name, timeout, console) if wait else 0


def run_delete(settings: Settings, name: str, console: Console) -> int:
    with Environments(settings) as environments:
        dropped = environments.delete(name)
    console.print(f"environment {name} deleted; databases dropped: "
                  + (", ".join(dropped) or "none"))
    return 0
