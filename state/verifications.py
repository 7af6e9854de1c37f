"""The latest scheduled verification of each collection (`verifications`), kept by the
`stagesync.verify` task and shown by `status`. One document per collection, replaced by each
run: only the latest verdict matters to an operator."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pymongo.database import Database
from stagesync.protocol.names import VERIFICATIONS

COLLECTION = VERIFICATIONS
# Fields of a verification record (`_id`: the collection's configured name).
AT = "at"
EQUAL = "equal"
COUNTS = "counts"
MISMATCHED = "mismatched"  # how many documents differ
SAMPLE = "sample"  # the first few of them (production `_id`s), sorted
SAMPLE_SIZE = 20


def record_verification(state_db: Database[dict[str, Any]], collection: str, equal: bool,
                        counts: Mapping[str, Any], mismatched: Iterable[str]) -> None:
    """Replace the collection's record with this run's verdict."""
    differing = sorted(mismatched)
    state_db[COLLECTION].replace_one(
        {"_id": collection},
        {"_id": collection, AT: datetime.now(UTC), EQUAL: equal, COUNTS: dict(counts),
         MISMATCHED: len(differing), SAMPLE: differing[:SAMPLE_SIZE]},
        upsert=True,
    )


def last_verification(state_db: Database[dict[str, Any]], collection: str
                      ) -> dict[str, Any] | None:
    """The latest verdict in `status`'s shape (`at` in ISO 8601), or None before any."""
    verified = state_db[COLLECTION].find_one({"_id": collection})
    if not verified:
        return None
    at = verified.get(AT)
    return {"at": at.isoformat() if isinstance(at, datetime) else None,
            "equal": verified.get(EQUAL), "mismatched": verified.get(MISMATCHED)}
