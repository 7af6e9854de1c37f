"""What the watcher and every worker do before they touch staging, in one place.

It lives in `state/` because it is the lowest room that sees both halves: the guard and the
target indexes (`deployments/`) and the state database's stores (the guard's marker, the
state indexes). The watcher and the tasks both sit above it.
"""

from __future__ import annotations

from typing import Any

from pymongo import MongoClient
from stagesync.deployments.guard import assert_distinct_deployments
from stagesync.deployments.production import ProductionReader
from stagesync.deployments.staging_indexes import ensure_indexes
from stagesync.settings.model import Settings
from stagesync.state.database import ensure_state_indexes, state_database
from stagesync.state.guard_markers import GuardMarkers
from stagesync.state.resync_progress import loading


def prepare_staging(production: ProductionReader, staging: MongoClient[dict[str, Any]],
                    settings: Settings) -> None:
    """Refuse when staging is production under another name (`SameDeploymentError`), then
    ensure the indexes the sync relies on: the target collections' and the state database's.
    A collection a resync is bulk loading gets its deferred indexes from that resync.

    The caller has already run `assert_distinct_uris`, before it made any client. Raises
    what the servers raise (`PyMongoError`: the watcher retries) and `IndexConflictError`.
    """
    state_db = state_database(staging, settings.staging)
    assert_distinct_deployments(production, staging, settings, GuardMarkers(state_db))
    ensure_indexes(staging, settings,
                   loading=loading(state_db, (c.name for c in settings.collections)))
    ensure_state_indexes(state_db)
