"""Refuse to run when "staging" is production under another name.

Comparing URIs cannot catch two hostnames for the same servers, so the check is physical:
write a random marker into staging's state database and look for it through the production
client, which can only read. Production gains nothing (a read of a missing database creates
none); the marker is removed from staging afterwards.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pymongo import MongoClient

from tasks.constants import GUARD
from watcher.production import ProductionReader


class SameDeploymentError(RuntimeError):
    pass


def assert_distinct_deployments(
    production: ProductionReader, staging: MongoClient[dict[str, Any]], state_db: str
) -> None:
    marker = f"guard-{uuid.uuid4().hex}"
    markers = staging[state_db][GUARD]
    markers.insert_one({"_id": marker, "at": datetime.now(UTC)})
    try:
        if production.find_marker(state_db, GUARD, marker):
            raise SameDeploymentError(
                "refusing to run: the staging URI reaches the production deployment (a marker "
                "written to staging was read back through the production connection). Point "
                "staging.uri at a different deployment."
            )
    finally:
        markers.delete_one({"_id": marker})
