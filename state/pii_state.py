"""Which PII rules the documents in staging were masked under.

Workers record the fingerprint of the rules (and secret) they mask with; a completed full
resync resets the record to its own. When more than the current fingerprint is on record,
some staging documents still carry values masked the old way, and `check` and `status` say
that a resync re-applies the current rules.
"""

from __future__ import annotations

from typing import Any

from pymongo.database import Database
from stagesync.protocol.names import RUNTIME
from stagesync.rules.pii_digests import rules_fingerprint
from stagesync.rules.pii_strict import Classification
from stagesync.settings.collection import CollectionSettings
from stagesync.settings.model import Settings


def _record_id(collection: str) -> str:
    return f"pii:{collection}"


def record_masking(state_db: Database[dict[str, Any]], collection: str, fingerprint: str) -> None:
    state_db[RUNTIME].update_one(
        {"_id": _record_id(collection)},
        {"$set": {"current": fingerprint}, "$currentDate": {"updatedAt": True},
         "$addToSet": {"seen": fingerprint}},
        upsert=True,
    )


def reset_after_resync(
    state_db: Database[dict[str, Any]], collection: str, fingerprint: str
) -> None:
    state_db[RUNTIME].update_one(
        {"_id": _record_id(collection)},
        {"$set": {"current": fingerprint, "seen": [fingerprint]},
         "$currentDate": {"resyncedAt": True}},
        upsert=True,
    )


def masking_drift(
    state_db: Database[dict[str, Any]], settings: Settings, collection: CollectionSettings
) -> str | None:
    """A sentence for the user when staging holds documents masked under other rules."""
    classification = Classification.from_settings(collection)
    current = rules_fingerprint(collection.pii, settings.secret_bytes(),
                                classification.paths if classification else None)
    record = state_db[RUNTIME].find_one({"_id": _record_id(collection.name)})
    if not record:
        return None
    older = [fp for fp in record.get("seen") or [] if fp != current]
    if not older:
        return None
    return (
        "staging documents were masked under other PII rules or another pii_secret; run "
        f"`stagesync resync {collection.name}` to re-apply the current rules"
    )
