"""The same-deployment guard's marker (`guard`): the last-resort check of
`deployments.guard`, a random `_id` written to staging's state database and looked for
through the read-only production connection.

The guard sits below this room, so it is handed this store (`deployments.guard.MarkerStore`)
rather than opening the state database itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo.database import Database
from stagesync.protocol.names import GUARD_MARKERS

COLLECTION = GUARD_MARKERS
AT = "at"  # when the marker was written (it is removed at once; a leftover shows when)


class GuardMarkers:
    """Markers in one state database; `database` and `collection` say where production must
    look for them (the same namespace, if production is staging under another name)."""

    collection = COLLECTION

    def __init__(self, state_db: Database[dict[str, Any]]) -> None:
        self.markers = state_db[COLLECTION]
        self.database = state_db.name

    def write(self, marker: str) -> None:
        self.markers.insert_one({"_id": marker, AT: datetime.now(UTC)})

    def remove(self, marker: str) -> None:
        self.markers.delete_one({"_id": marker})

    def leftovers(self) -> list[dict[str, Any]]:
        """Markers still there (none, unless a process died mid-check)."""
        return list(self.markers.find({}))
