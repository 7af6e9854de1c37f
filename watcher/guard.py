"""Refuse to run when "staging" is production under another name.

Comparing URIs cannot catch two hostnames for the same servers, so the servers are asked who
they are, with reads only: `hello.topologyVersion.processId` (MongoDB 4.4+, unique per server
process) or else `serverStatus` host and pid. The same identity through both connections means
one deployment. Only when a server reports neither does the guard fall back to a physical
check: a random marker written to staging and looked for through the read-only production
connection (which is then a write into production if they are one; hence the last resort).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pymongo import MongoClient
from pymongo.errors import OperationFailure

from tasks.constants import GUARD
from watcher.production import ProductionReader

REFUSAL = (
    "refusing to run: the staging URI reaches the production deployment ({how}). Point "
    "staging.uri at a different deployment."
)


class SameDeploymentError(RuntimeError):
    pass


def server_identity(hello: dict[str, Any], status: dict[str, Any] | None) -> tuple[Any, ...] | None:
    """What tells one server process from every other, from read-only commands."""
    topology = hello.get("topologyVersion")
    if isinstance(topology, dict) and topology.get("processId") is not None:
        return ("processId", str(topology["processId"]))
    if status and status.get("host") and status.get("pid") is not None:
        return ("host+pid", str(status["host"]), int(status["pid"]))
    return None


def assert_distinct_deployments(
    production: ProductionReader, staging: MongoClient[dict[str, Any]], state_db: str
) -> None:
    prod_identity = server_identity(production.hello(), _status(production.server_status))
    staging_identity = server_identity(
        dict(staging.admin.command("hello")),
        _status(lambda: dict(staging.admin.command("serverStatus"))),
    )
    if prod_identity is not None and staging_identity is not None:
        if prod_identity == staging_identity:
            raise SameDeploymentError(REFUSAL.format(
                how=f"both connections reach the server with {prod_identity[0]} "
                    f"{prod_identity[1]}"))
        return
    _marker_check(production, staging, state_db)


def _status(read: Any) -> dict[str, Any] | None:
    try:
        return dict(read())
    except OperationFailure:  # serverStatus needs the clusterMonitor role
        return None


def _marker_check(
    production: ProductionReader, staging: MongoClient[dict[str, Any]], state_db: str
) -> None:
    marker = f"guard-{uuid.uuid4().hex}"
    markers = staging[state_db][GUARD]
    markers.insert_one({"_id": marker, "at": datetime.now(UTC)})
    try:
        if production.find_marker(state_db, GUARD, marker):
            raise SameDeploymentError(REFUSAL.format(
                how="a marker written to staging was read back through the production "
                    "connection"))
    finally:
        markers.delete_one({"_id": marker})
