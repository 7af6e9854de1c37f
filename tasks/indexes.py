"""Indexes the sync relies on, created by stagesync itself at start-up, idempotently.

On each target collection:
- `stagesync_pid`: unique `_sync.pid`, the lookup of every apply and the guarantee that one
  production document feeds at most one staging document;
- `stagesync_key`: unique business-key digest, partial so documents without one (QA fixtures)
  are free: at most one staging document per business key;
- `stagesync_business_key`: the raw business-key fields, for the first sync of documents that
  predate stagesync;
- `stagesync_deleted_at`, for purges of old soft-deleted documents;
- `stagesync_tombstone_ttl`, letting MongoDB drop tombstones once they have served.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, IndexModel, MongoClient
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from settings.model import CollectionSettings, Settings
from tasks.constants import DEAD_LETTERS
from tasks.rules.sync_meta import DELETED_AT_FIELD, EXPIRE_AT_FIELD, KEY_FIELD, PID_FIELD

INDEX_OPTIONS_CONFLICT = (85, 86)  # IndexOptionsConflict, IndexKeySpecsConflict


def target_indexes(collection: CollectionSettings) -> list[IndexModel]:
    return [
        IndexModel([(PID_FIELD, ASCENDING)], name="stagesync_pid", unique=True,
                   partialFilterExpression={PID_FIELD: {"$exists": True}}),
        IndexModel([(KEY_FIELD, ASCENDING)], name="stagesync_key", unique=True,
                   partialFilterExpression={KEY_FIELD: {"$exists": True}}),
        IndexModel([(field, ASCENDING) for field in collection.business_key],
                   name="stagesync_business_key"),
        IndexModel([(DELETED_AT_FIELD, ASCENDING)], name="stagesync_deleted_at", sparse=True),
        IndexModel([(EXPIRE_AT_FIELD, ASCENDING)], name="stagesync_tombstone_ttl",
                   expireAfterSeconds=0),
    ]


def ensure_indexes(client: MongoClient[dict[str, Any]], settings: Settings) -> None:
    for collection in settings.collections:
        target = client[collection.target_db][collection.target_collection]
        _ensure(target, target_indexes(collection))
    state = client[settings.staging.state_db]
    _ensure(state[DEAD_LETTERS], [
        IndexModel([("collection", ASCENDING), ("state", ASCENDING), ("reason", ASCENDING),
                    ("key", ASCENDING)], name="stagesync_dead_letters"),
        IndexModel([("expireAt", ASCENDING)], name="stagesync_resolved_ttl",
                   expireAfterSeconds=0),
    ])


def _ensure(collection: Collection[dict[str, Any]], indexes: list[IndexModel]) -> None:
    for index in indexes:
        try:
            collection.create_indexes([index])
        except OperationFailure as error:
            if error.code not in INDEX_OPTIONS_CONFLICT:
                raise
            # Our own index under an older definition (say, a changed business key).
            collection.drop_index(index.document["name"])
            collection.create_indexes([index])
