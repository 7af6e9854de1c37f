"""The `_sync` sub-document every synced staging document carries (documented in the README).

    _sync.pid        production `_id`, canonical Extended JSON (indexed, unique)
    _sync.key        business-key digest (unique among documents that hold one)
    _sync.v          version of the apply that last wrote it (see DESIGN: versions order reads)
    _sync.at         when its content last changed
    _sync.owned      leaf paths production owns, dotted, escaped
    _sync.deletedAt  when production deleted it (soft delete); absent while live
    _sync.tombstone  true on a marker for a production document deleted before it was synced
    _sync.expireAt   when such a marker may go (TTL index)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tasks.rules.paths import Path, split_dotted

SYNC = "_sync"
PID = "pid"
KEY = "key"
VERSION = "v"
CHANGED_AT = "at"
OWNED = "owned"
DELETED_AT = "deletedAt"
TOMBSTONE = "tombstone"
EXPIRE_AT = "expireAt"

# Dotted names for queries and indexes.
PID_FIELD = f"{SYNC}.{PID}"
KEY_FIELD = f"{SYNC}.{KEY}"
VERSION_FIELD = f"{SYNC}.{VERSION}"
DELETED_AT_FIELD = f"{SYNC}.{DELETED_AT}"
EXPIRE_AT_FIELD = f"{SYNC}.{EXPIRE_AT}"


@dataclass(frozen=True)
class SyncMeta:
    pid: str | None
    key: str | None
    version: int | None
    owned: frozenset[Path]
    deleted_at: datetime | None
    tombstone: bool

    @property
    def synced(self) -> bool:
        return self.version is not None

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None


def read_meta(document: Mapping[str, Any] | None) -> SyncMeta:
    raw = document.get(SYNC) if document else None
    if not isinstance(raw, Mapping):
        return SyncMeta(None, None, None, frozenset(), None, False)
    version = raw.get(VERSION)
    return SyncMeta(
        pid=raw.get(PID),
        key=raw.get(KEY),
        version=int(version) if isinstance(version, int) else None,
        owned=frozenset(split_dotted(p) for p in raw.get(OWNED) or () if isinstance(p, str)),
        deleted_at=raw.get(DELETED_AT),
        tombstone=bool(raw.get(TOMBSTONE)),
    )
