"""The small conditional writes a plan is made of, besides creates and merges: tombstones,
version moves, key releases; and the schema-version gate. Pure, like the planner."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from stagesync.rules.paths import get_path, set_path
from stagesync.rules.plan_types import UNSYNCED, CollectionRules, Outcome, PlannedWrite, Unsynced
from stagesync.rules.sync_meta import (
    CHANGED_AT,
    DELETED_AT,
    EXPIRE_AT,
    KEY_FIELD,
    OWNED,
    PID,
    SYNC,
    TOMBSTONE,
    VERSION,
    VERSION_FIELD,
    SyncMeta,
    encode_owned,
)

# A tombstone only has to outlive any apply that read production before the delete; task time
# limits keep those to minutes, so an hour is generous.
TOMBSTONE_TTL = timedelta(hours=1)


def tombstone(pid: str, staging_id: Any, version: int, now: datetime,
              rules: CollectionRules) -> PlannedWrite:
    """Holds a deleted pid at this version, so a slower apply that read the document before
    it went cannot create it afterwards."""
    document: dict[str, Any] = {"_id": staging_id}
    set_path(document, rules.soft_delete_field, True)
    document[SYNC] = {
        PID: pid, VERSION: version, CHANGED_AT: now, DELETED_AT: now, OWNED: encode_owned(()),
        TOMBSTONE: True, EXPIRE_AT: now + TOMBSTONE_TTL,
    }
    return PlannedWrite(pid, staging_id, None, "tombstoned", document)


def expectation(meta: SyncMeta) -> int | Unsynced:
    return meta.version if meta.version is not None else UNSYNCED


def version_only(
    pid: str, target: Mapping[str, Any], meta: SyncMeta, version: int, outcome: Outcome
) -> PlannedWrite:
    return PlannedWrite(pid, target["_id"], expectation(meta), outcome,
                        update={"$set": {VERSION_FIELD: version}})


def release_key(
    holder: Mapping[str, Any], meta: SyncMeta, pid: str | None = None, version: int | None = None
) -> PlannedWrite:
    """Drop a document's claim on its business key. For another document's soft-deleted
    holder the version stays; for our own document it records this apply's read."""
    update: dict[str, Any] = {"$unset": {KEY_FIELD: ""}}
    if version is not None:
        update["$set"] = {VERSION_FIELD: version}
    return PlannedWrite(pid, holder["_id"], expectation(meta), "released", update=update)


def remove_tombstone(pid: str, own: Mapping[str, Any], meta: SyncMeta) -> PlannedWrite:
    return PlannedWrite(pid, own["_id"], expectation(meta), "released", delete=True)


def schema_rejection(document: Mapping[str, Any], rules: CollectionRules) -> str | None:
    if rules.schema_version_field is None or rules.accepted_schema_versions is None:
        return None
    value = get_path(document, rules.schema_version_field)
    if value in rules.accepted_schema_versions and not isinstance(value, bool):
        return None
    accepted = ", ".join(sorted(map(str, rules.accepted_schema_versions)))
    return f"schema version {value!r} not accepted (accepted: {accepted})"
