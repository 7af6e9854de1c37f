"""The one way into the staging state database: `state_database` and its indexes.

Every collection of the state database has its store in this room (`state/`), and only this
room opens the database (tests/unit/test_rooms.py holds the code to it). A process gets the
`Database` here once and hands it to the stores; nothing else names a state collection or
reads a state field, so a collection's layout can change in one place.
"""

from __future__ import annotations

from typing import Any

from pymongo import MongoClient
from pymongo.database import Database
from stagesync.deployments.staging_indexes import ensure
from stagesync.settings.model import StagingSettings
from stagesync.state import dead_letters, environment_backlog, pending_references


def state_database(client: MongoClient[dict[str, Any]], staging: StagingSettings
                   ) -> Database[dict[str, Any]]:
    """The state database (`staging.state_db`) through a staging client."""
    return client[staging.state_db]


def ensure_state_indexes(state_db: Database[dict[str, Any]]) -> None:
    """The indexes of the state collections that need them, ensured at every start-up (the
    resync records' are ensured when a resync starts: `resync_progress.ensure_resync_indexes`).
    Idempotent, and safe when several processes start at once (`ensure` reads first)."""
    ensure(state_db[dead_letters.COLLECTION], dead_letters.INDEXES)
    ensure(state_db[pending_references.COLLECTION], pending_references.INDEXES)
    ensure(state_db[environment_backlog.COLLECTION], environment_backlog.INDEXES)
