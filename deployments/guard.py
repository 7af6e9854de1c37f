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
   hence the last resort, and it is removed at once).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pymongo import MongoClient
from pymongo.errors import OperationFailure
from stagesync.deployments.identity import compare, from_hello, shared_hosts, with_status
from stagesync.deployments.production import ProductionReader
from stagesync.protocol.names import GUARD_MARKERS
from stagesync.settings.model import Settings

# In the staging state database, beside the names in protocol.names (which import nothing
# from here: this package sits below tasks).
MARKERS = GUARD_MARKERS

REFUSAL = (
    "refusing to run: the staging URI reaches the production deployment ({how}). Point "
    "staging.uri at a different deployment."
)


class SameDeploymentError(RuntimeError):
    pass


def assert_distinct_uris(settings: Settings) -> None:
    """Step 1: the connection strings alone, before any client exists."""
    common = shared_hosts(settings.prod.uri, settings.staging.uri)
    if common:
        raise SameDeploymentError(REFUSAL.format(
            how=f"prod.uri and staging.uri both name {', '.join(sorted(common))}"))


def assert_distinct_deployments(
    production: ProductionReader, staging: MongoClient[dict[str, Any]], settings: Settings
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
        _marker_check(production, staging, settings.staging.state_db)
    elif verdict.same:
        raise SameDeploymentError(REFUSAL.format(how=verdict.reason))


def _status(read: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    try:
        return dict(read())
    except OperationFailure:  # serverStatus needs the clusterMonitor role
        return None


def _marker_check(
    production: ProductionReader, staging: MongoClient[dict[str, Any]], state_db: str
) -> None:
    marker = f"guard-{uuid.uuid4().hex}"
    markers = staging[state_db][MARKERS]
    markers.insert_one({"_id": marker, "at": datetime.now(UTC)})
    try:
        if production.find_marker(state_db, MARKERS, marker):
            raise SameDeploymentError(REFUSAL.format(
                how="a marker written to staging was read back through the production "
                    "connection"))
    finally:
        markers.delete_one({"_id": marker})
