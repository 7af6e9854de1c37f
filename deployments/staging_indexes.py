"""Indexes the sync relies on, ensured by every watcher and worker at start-up.

On each target collection:
- `stagesync_pid`: unique `_sync.pid`, the lookup of every apply and the guarantee that one
  production document feeds at most one staging document;
- `stagesync_key`: unique business-key digest, sparse so documents without one (QA fixtures)
  are free: at most one staging document per business key;

Both are sparse rather than partial (`{$exists: true}`): on a single field the two hold exactly
the same entries and enforce the same uniqueness, but a sparse index is one every query
planner uses for an equality or `$in` on the field, while a partial one is used only when the
planner proves the query implies the filter (some MongoDB-compatible servers never do, and
then every apply's lookup scans the collection). Deployments with the earlier partial
definitions get the sparse ones at the next start-up: an outdated `stagesync_*` index is
dropped and rebuilt (below).
- `stagesync_business_key`: the raw business-key fields, for the first sync of documents that
  predate stagesync;
- `stagesync_deleted_at`, for purges of old soft-deleted documents;
- `stagesync_tombstone_ttl`, letting MongoDB drop tombstones once they have served.

A resync into an empty target loads like a bulk loader (`tasks.full_resync.indexes_after`):
the indexes in `DEFERRED`, which no apply looks anything up by, are dropped while it copies and
built over the loaded documents after. A worker that starts meanwhile leaves them to the load
(`ensure_indexes(..., loading=...)`).

All use the simple collation, stated explicitly: a staging collection restored with a
case-insensitive default collation would otherwise give them that collation, and ids or keys
that differ only in case would collide.

Start-up must never be a dead end on a staging that already has indexes (MongoDB refuses a
second index with the same key pattern and collation under another name: 85
IndexOptionsConflict). So the existing indexes are read first and:
- an index with the same keys and options that serve the same purpose is reused, whatever its
  name (a restored staging usually has `userEmail_1_accountId_1`);
- a TTL that changed is changed in place with `collMod`;
- an index is dropped only when stagesync created it (its name starts with `stagesync_`) and
  its definition is outdated (say, a changed business key);
- an index of the user's that blocks one stagesync needs is reported by name, never dropped.
Several workers and a watcher start at once: whatever one of them creates, drops or changes
meanwhile (68, 85, 86, 276, 27) makes the others read the indexes again and re-decide.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, IndexModel, MongoClient
from pymongo.collection import Collection
from pymongo.errors import OperationFailure
from stagesync.protocol.names import (
    BUSINESS_KEY_INDEX,
    DELETED_AT_INDEX,
    KEY_INDEX,
    OWN_INDEX_PREFIX,
    PID_INDEX,
    TOMBSTONE_TTL_INDEX,
)
from stagesync.rules.sync_meta import DELETED_AT_FIELD, EXPIRE_AT_FIELD, KEY_FIELD, PID_FIELD
from stagesync.settings.collection import CollectionSettings
from stagesync.settings.model import Settings

OWN_PREFIX = OWN_INDEX_PREFIX
SIMPLE_COLLATION = {"locale": "simple"}
# Another start-up changed the indexes between our read and our command: read again.
# IndexNotFound, IndexAlreadyExists, IndexOptionsConflict, IndexKeySpecsConflict,
# IndexBuildAborted.
RACE_CODES = frozenset({27, 68, 85, 86, 276})
ATTEMPTS = 4
# Built after a bulk load rather than maintained by its inserts (module doc).
DEFERRED = frozenset({DELETED_AT_INDEX, TOMBSTONE_TTL_INDEX})


class IndexConflictError(RuntimeError):
    """An index stagesync did not create blocks one it needs; only a person may drop it."""


def target_indexes(collection: CollectionSettings) -> list[IndexModel]:
    simple = {"collation": SIMPLE_COLLATION}
    return [
        IndexModel([(PID_FIELD, ASCENDING)], name=PID_INDEX, unique=True, sparse=True,
                   **simple),
        IndexModel([(KEY_FIELD, ASCENDING)], name=KEY_INDEX, unique=True, sparse=True,
                   **simple),
        IndexModel([(field, ASCENDING) for field in collection.business_key],
                   name=BUSINESS_KEY_INDEX, **simple),
        IndexModel([(DELETED_AT_FIELD, ASCENDING)], name=DELETED_AT_INDEX, sparse=True,
                   **simple),
        IndexModel([(EXPIRE_AT_FIELD, ASCENDING)], name=TOMBSTONE_TTL_INDEX,
                   expireAfterSeconds=0, **simple),
    ]


def deferred_indexes(collection: CollectionSettings) -> list[IndexModel]:
    """The indexes a bulk load builds after its inserts (module doc)."""
    return [model for model in target_indexes(collection) if model.document["name"] in DEFERRED]


def ensure_indexes(client: MongoClient[dict[str, Any]], settings: Settings,
                   loading: Container[str] = ()) -> None:
    """The target collections' indexes; those `DEFERRED` are left out on the collections
    named in `loading` (a bulk load builds them when it is done). The state database's are
    its stores' business (`state.database.ensure_state_indexes`): this room sits below them."""
    for collection in settings.collections:
        target = client[collection.target_db][collection.target_collection]
        ensure(target, [model for model in target_indexes(collection)
                        if collection.name not in loading
                        or model.document["name"] not in DEFERRED])


def drop_deferred(collection: Collection[dict[str, Any]]) -> list[str]:
    """Drop stagesync's own `DEFERRED` indexes from a collection about to be bulk loaded; the
    names dropped. An index of the user's that serves instead is left (it only slows the
    load); one that another set-up dropped first is no error."""
    present = {str(index.get("name")) for index in collection.list_indexes()}
    dropped = []
    for name in sorted(DEFERRED & present):
        try:
            collection.drop_index(name)
        except OperationFailure as error:
            if error.code not in RACE_CODES:
                raise
            continue
        dropped.append(name)
    return dropped


def missing_deferred(collection: Collection[dict[str, Any]],
                     settings: CollectionSettings) -> bool:
    """Whether a `DEFERRED` index is not served on this collection (a load that did not end)."""
    existing = list(collection.list_indexes())
    return any(plan_index(model.document, existing).reuse is None
               for model in deferred_indexes(settings))


# -- deciding, without I/O ------------------------------------------------------------------


@dataclass(frozen=True)
class IndexPlan:
    """What to do for one wanted index, given the collection's indexes."""

    reuse: str | None = None  # an existing index serves: nothing to build
    drop: str | None = None  # our own outdated index, dropped first
    change_ttl: tuple[str, float] | None = None  # collMod of our own index's TTL
    create: bool = False


def plan_index(wanted: Mapping[str, Any], existing: Sequence[Mapping[str, Any]]) -> IndexPlan:
    name = wanted["name"]
    same_name = next((index for index in existing if index.get("name") == name), None)
    drop = None
    if same_name is not None:
        if serves(same_name, wanted):
            return IndexPlan(reuse=name)
        if serves(same_name, wanted, ignore_ttl=True) and "expireAfterSeconds" in wanted:
            return IndexPlan(change_ttl=(name, wanted["expireAfterSeconds"]))
        if str(name).startswith(OWN_PREFIX):
            drop = name  # an outdated definition of our own index
    for index in existing:
        if index.get("name") != name and serves(index, wanted):
            return IndexPlan(reuse=str(index["name"]), drop=drop)
    return IndexPlan(drop=drop, create=True)


def serves(index: Mapping[str, Any], wanted: Mapping[str, Any], ignore_ttl: bool = False
           ) -> bool:
    """Whether an existing index does the wanted one's job: same keys, same collation, the
    same partial filter, unique if uniqueness is wanted, same sparseness and TTL."""
    if _keys(index.get("key", {})) != _keys(wanted["key"]):
        return False
    if _is_simple(index.get("collation")) != _is_simple(wanted.get("collation")):
        return False
    if not _is_simple(wanted.get("collation")) and \
            _plain(index.get("collation")) != _plain(wanted.get("collation")):
        return False
    if _plain(index.get("partialFilterExpression")) != _plain(
            wanted.get("partialFilterExpression")):
        return False
    if wanted.get("unique") and not index.get("unique"):
        return False
    if bool(index.get("sparse")) != bool(wanted.get("sparse")):
        return False
    return ignore_ttl or _ttl(index) == _ttl(wanted)


def blocker(wanted: Mapping[str, Any], existing: Sequence[Mapping[str, Any]]
            ) -> Mapping[str, Any] | None:
    """The index that keeps the wanted one from being created: same keys, does not serve."""
    for index in existing:
        if index.get("name") != wanted["name"] and \
                _keys(index.get("key", {})) == _keys(wanted["key"]):
            return index
    return None


# -- carrying it out ------------------------------------------------------------------------


def ensure(collection: Collection[dict[str, Any]], indexes: Sequence[IndexModel]) -> None:
    for model in indexes:
        _ensure_one(collection, model)


def _ensure_one(collection: Collection[dict[str, Any]], model: IndexModel) -> None:
    wanted = model.document
    for attempt in range(1, ATTEMPTS + 1):
        existing = list(collection.list_indexes())
        plan = plan_index(wanted, existing)
        try:
            _carry_out(collection, model, plan)
            return
        except OperationFailure as error:
            if error.code not in RACE_CODES:
                raise
            if attempt == ATTEMPTS:
                found = blocker(wanted, list(collection.list_indexes()))
                if found is not None and not str(found.get("name", "")).startswith(OWN_PREFIX):
                    raise IndexConflictError(_conflict_message(collection, wanted, found)
                                             ) from None
                raise


def _carry_out(collection: Collection[dict[str, Any]], model: IndexModel,
               plan: IndexPlan) -> None:
    if plan.drop is not None:
        collection.drop_index(plan.drop)
    if plan.change_ttl is not None:
        name, seconds = plan.change_ttl
        collection.database.command(
            "collMod", collection.name, index={"name": name, "expireAfterSeconds": seconds})
    if plan.create:
        collection.create_indexes([model])


def _conflict_message(collection: Collection[dict[str, Any]], wanted: Mapping[str, Any],
                      found: Mapping[str, Any]) -> str:
    keys = ", ".join(f"{field}: {direction}" for field, direction in _keys(wanted["key"]))
    options = {k: v for k, v in found.items() if k not in ("v", "key", "name", "ns")}
    return (
        f"staging index {found['name']!r} on {collection.full_name} ({{{keys}}}, options "
        f"{_plain(options)}) keeps stagesync from creating {wanted['name']!r}, which needs "
        f"{_describe(wanted)}. stagesync never drops an index it did not create: drop or change "
        f"{found['name']!r}, then start again."
    )


def _describe(wanted: Mapping[str, Any]) -> str:
    parts = ["the simple collation" if _is_simple(wanted.get("collation")) else "a collation"]
    if wanted.get("unique"):
        parts.append("uniqueness")
    if wanted.get("partialFilterExpression"):
        parts.append(f"the partial filter {_plain(wanted['partialFilterExpression'])}")
    if "expireAfterSeconds" in wanted:
        parts.append(f"expireAfterSeconds {wanted['expireAfterSeconds']}")
    return ", ".join(parts)


def _keys(key: Any) -> list[tuple[str, Any]]:
    items = key.items() if isinstance(key, Mapping) else key
    return [(str(field), float(direction) if isinstance(direction, int | float) else direction)
            for field, direction in items]


def _is_simple(collation: Any) -> bool:
    """listIndexes omits the simple collation on MongoDB; some servers spell it out."""
    return collation is None or (isinstance(collation, Mapping)
                                 and collation.get("locale") == "simple")


def _ttl(index: Mapping[str, Any]) -> float | None:
    value = index.get("expireAfterSeconds")
    return float(value) if value is not None else None


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
