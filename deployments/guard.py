"""Refuse to run when "staging" is production under another name.

In order, cheapest and safest first:
1. The two connection strings: a host named by both is one server, so refuse before asking
   any server anything.
2. `hello` through both connections (see `deployments.identity` for what decides: one server
   process, one replica set by name and members, one sharded cluster by its config servers).
3. Only when `hello` cannot decide (a `mongos` or load balancer on either side, a server
   without `topologyVersion`): `serverStatus`, staging's first, production's only if still
   needed. It needs the `clusterMonitor` role; a refusal is not an answer.
4. Last resort, when nothing above could tell: a random marker written to staging and looked
   for through the read-only production connection (a write into production if they are one;
   hence the last resort, and it is removed at once). The marker lives in the state database,
   whose stores sit above this room: the caller hands the guard that store (`MarkerStore`,
   `state.guard_markers.GuardMarkers`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Protocol

from pymongo import MongoClient
from pymongo.errors import OperationFailure
from stagesync.deployments.identity import compare, from_hello, shared_hosts, with_status
from stagesync.deployments.production import ProductionReader
from stagesync.settings.model import Settings

REFUSAL = (
    "refusing to run: the staging URI reaches the production deployment ({how}). Point "
    "staging.uri at a different deployment."
)


class SameDeploymentError(RuntimeError):
    pass


class MarkerStore(Protocol):
    """Where the last-resort marker is written in staging, and where production must look for
    it (`database`, `collection`)."""

    database: str
    collection: str

    def write(self, marker: str) -> None: ...

    def remove(self, marker: str) -> None: ...


def assert_distinct_uris(settings: Settings) -> None:
    """Step 1: the connection strings alone, before any client exists."""
    common = shared_hosts(settings.prod.uri, settings.staging.uri)
    if common:
        raise SameDeploymentError(REFUSAL.format(
            how=f"prod.uri and staging.uri both name {', '.join(sorted(common))}"))


def assert_distinct_deployments(
    production: ProductionReader, staging: MongoClient[dict[str, Any]], settings: Settings,
    markers: MarkerStore,
) -> None:
    assert_distinct_uris(settings)
    prod = from_hello(production.hello(), production.load_balanced)
    stag = from_hello(dict(staging.admin.command("hello")),
                      bool(getattr(staging.options, "load_balanced", False)))
    verdict = compare(prod, stag)
    if verdict is None:
        stag = with_status(stag, _status(lambda: dict(staging.admin.command("serverStatus"))))
        verdict = compare(prod, stag)
    if verdict is None:
        prod = with_status(prod, _status(production.server_status))
        verdict = compare(prod, stag)
    if verdict is None:
        _marker_check(production, markers)
    elif verdict.same:
        raise SameDeploymentError(REFUSAL.format(how=verdict.reason))


def _status(read: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    try:
        return dict(read())
    except OperationFailure:  # serverStatus needs the clusterMonitor role
        return None


def _marker_check(production: ProductionReader, markers: MarkerStore) -> None:
    marker = f"guard-{uuid.uuid4().hex}"
    markers.write(marker)
    try:
        if production.find_marker(markers.database, markers.collection, marker):
            raise SameDeploymentError(REFUSAL.format(
                how="a marker written to staging was read back through the production "
                    "connection"))
    finally:
        markers.remove(marker)
