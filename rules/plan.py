"""Deciding what one apply writes: the merge rules for a whole batch, as a pure function.

Input: the version this apply took, what it read from production (already masked) and what it
read from staging. Output: conditional writes plus the changes that must wait, dead-letter or
give way. Each write expects the staging document to be exactly as read (`_sync.v` compare-
and-swap), so a write computed from a stale read never lands; `tasks.apply.applier` re-reads and
re-plans the few that lose a race. Uniqueness of `_sync.pid` and `_sync.key` is enforced by
indexes; this module only plans writes that keep both unique when applied in one round.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import bson
from bson import ObjectId

from rules.field_update import Update, plan_field_update
from rules.identity import business_key, decode_id, encode_id, key_digest, key_paths
from rules.merge import (
    FieldRules,
    fingerprint,
    merge_fields,
    owned_paths,
    production_content,
    production_view,
    shared_last,
    shared_parents,
)
from rules.paths import Path, get_path, leaf_paths, set_path, split_dotted, update_path
from rules.sync_meta import (
    CHANGED_AT,
    CHANGED_AT_FIELD,
    DELETED_AT,
    DELETED_AT_FIELD,
    EXPIRE_AT,
    FINGERPRINT,
    KEY,
    KEY_FIELD,
    OWNED,
    PID,
    PID_FIELD,
    SYNC,
    TOMBSTONE,
    VERSION,
    VERSION_FIELD,
    SyncMeta,
    encode_owned,
    read_meta,
)
from settings.model import CollectionSettings

# 16 MiB is MongoDB's document limit; keep room for the update command around it.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024 - 64 * 1024
# A tombstone only has to outlive any apply that read production before the delete; task time
# limits keep those to minutes, so an hour is generous.
TOMBSTONE_TTL = timedelta(hours=1)

Outcome = Literal["created", "updated", "unchanged", "soft_deleted", "tombstoned", "released"]
Reason = Literal[
    "missing_business_key", "key_conflict", "schema_version", "document_too_large"
]


class Unsynced:
    """Expectation for a document that has never been synced (no `_sync`)."""

    def __repr__(self) -> str:
        return "UNSYNCED"


UNSYNCED = Unsynced()


@dataclass(frozen=True)
class CollectionRules:
    """The merge-relevant part of a collection's configuration, in path form."""

    key_paths: tuple[Path, ...]
    fields: FieldRules
    schema_version_field: Path | None = None
    accepted_schema_versions: frozenset[Any] | None = None
    # New copies take production's `_id` where staging has it free (`staging_ids: production`).
    keep_production_ids: bool = True

    @classmethod
    def from_settings(cls, settings: CollectionSettings) -> CollectionRules:
        accepted = settings.accepted_schema_versions
        return cls(
            key_paths=tuple(key_paths(settings.business_key)),
            fields=FieldRules(
                staging_fields=tuple(split_dotted(f) for f in settings.staging_fields),
                soft_delete_field=split_dotted(settings.soft_delete_field),
            ),
            schema_version_field=(
                split_dotted(settings.schema_version_field)
                if settings.schema_version_field else None
            ),
            accepted_schema_versions=frozenset(accepted) if accepted is not None else None,
            keep_production_ids=settings.staging_ids == "production",
        )

    @property
    def soft_delete_field(self) -> Path:
        return self.fields.soft_delete_field

    def key_of(self, document: Mapping[str, Any]) -> str | None:
        values = business_key(document, self.key_paths)
        return key_digest(values) if values is not None else None


@dataclass(frozen=True)
class StagingView:
    """The staging documents a batch can touch, as read just now.

    Normally only their `_sync` and soft-delete flag are read: a plan needs no more, since
    `_sync.fp` tells whether production's content changed. Documents in `whole` (staging
    `_id`s) were read in full: an exact comparison of their content (resync repairs drift made
    by hand), or a merge that update operators cannot address.
    """

    by_pid: Mapping[str, Mapping[str, Any]]
    by_key: Mapping[str, Mapping[str, Any]]
    # Documents that never went through a sync, matched on the raw business-key fields.
    unsynced_by_key: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    whole: frozenset[str] = frozenset()  # encoded staging `_id`s (any BSON type)
    # Encoded production `_id`s that a staging document of another origin already holds (an
    # insert under that `_id` failed): their copies get a new ObjectId.
    taken_ids: frozenset[str] = frozenset()

    def new_id(self, pid: str, rules: CollectionRules) -> Any:
        """The `_id` of a new copy: production's where that is free, else a new ObjectId."""
        if rules.keep_production_ids and pid not in self.taken_ids:
            return decode_id(pid)
        return ObjectId()


@dataclass(frozen=True)
class PlannedWrite:
    """One conditional write. `expect` is the `_sync.v` the document must still hold (None for
    an insert, UNSYNCED for a document without `_sync`). An insert carries `document`; any
    other write carries `update` (an update document or pipeline) or is a `delete`."""

    pid: str | None
    staging_id: Any
    expect: int | Unsynced | None
    outcome: Outcome
    document: dict[str, Any] | None = None
    update: Update | None = None
    delete: bool = False
    # The document becomes a live copy (created, adopted, revived): relevant to subsets.
    enters: bool = False

    @property
    def is_insert(self) -> bool:
        return self.expect is None


@dataclass(frozen=True)
class DeadLetter:
    pid: str
    reason: Reason
    detail: str
    key: str | None = None


@dataclass
class BatchPlan:
    writes: list[PlannedWrite] = field(default_factory=list)
    # Writes on other documents that must land before some of this batch's writes can
    # (freeing a business key); the changes waiting on them are in `deferred`.
    releases: list[PlannedWrite] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    # Already exactly as production has them, and left as they are (`write_unchanged=False`):
    # pid -> staging `_id`.
    unchanged: dict[str, Any] = field(default_factory=dict)
    deferred: list[str] = field(default_factory=list)
    # Production documents whose current state decides a key conflict: read them, re-plan.
    need_production: set[str] = field(default_factory=set)
    # Business keys this batch stops holding live: dead-lettered conflicts on them can retry.
    released_keys: set[str] = field(default_factory=set)
    # Staging documents (by `_id`) to read in full and re-plan: their merge needs content.
    need_content: set[str] = field(default_factory=set)  # encoded staging `_id`s


@dataclass
class _Round:
    claimed_keys: dict[str, str] = field(default_factory=dict)
    targeted: set[str] = field(default_factory=set)  # encoded staging `_id`s
    write_unchanged: bool = True


def plan_batch(
    *,
    version: int,
    now: datetime,
    pids: Iterable[str],
    production: Mapping[str, Mapping[str, Any] | None],
    staging: StagingView,
    rules: CollectionRules,
    keys: Mapping[str, str | None] | None = None,
    write_unchanged: bool = True,
) -> BatchPlan:
    """Plan the writes for `pids`; `production[pid]` is the masked document or None (gone).

    Every pid must be a key of `production`. Holders of a business key whose production
    document is also in `production` are judged on that fresh read. `keys` are the business
    keys of the production documents, when they must come from other values than the ones
    written (references are translated after the keys are taken).

    A live copy that already holds production's content gets its version moved to this
    apply's, unless `write_unchanged` is False (a resync: see `tasks.full_resync.chunks`); it is
    then listed in `unchanged` and nothing is written.
    """
    plan = BatchPlan()
    if keys is None:
        keys = {pid: rules.key_of(doc) for pid, doc in production.items() if doc is not None}
    state = _Round(write_unchanged=write_unchanged)
    for pid in sorted(set(pids)):
        own = staging.by_pid.get(pid)
        own_meta = read_meta(own)
        if own is not None and own_meta.version is not None and own_meta.version > version:
            # (Equal means this apply wrote it in an earlier round, e.g. a key release.)
            plan.superseded.append(pid)
        elif own is not None and encode_id(own["_id"]) in state.targeted:
            plan.deferred.append(pid)
        elif production[pid] is None:
            _plan_gone(plan, state, pid, own, own_meta, version, now, staging, rules)
        else:
            _plan_present(
                plan, state, pid, production, keys, own, own_meta, staging, version, now, rules
            )
    return plan


def _plan_gone(
    plan: BatchPlan,
    state: _Round,
    pid: str,
    own: Mapping[str, Any] | None,
    own_meta: SyncMeta,
    version: int,
    now: datetime,
    staging: StagingView,
    rules: CollectionRules,
) -> None:
    """Production no longer has the document (deleted, or outside the configured filter)."""
    if own is None:
        # Nothing to mark, but a slower apply that read the document before it went must not
        # create it afterwards: a tombstone holds the pid at this version.
        tombstone: dict[str, Any] = {"_id": staging.new_id(pid, rules)}
        set_path(tombstone, rules.soft_delete_field, True)
        tombstone[SYNC] = {
            PID: pid, VERSION: version, CHANGED_AT: now, DELETED_AT: now, OWNED: encode_owned(()),
            TOMBSTONE: True, EXPIRE_AT: now + TOMBSTONE_TTL,
        }
        plan.writes.append(PlannedWrite(pid, tombstone["_id"], None, "tombstoned", tombstone))
        return
    state.targeted.add(encode_id(own["_id"]))
    if own_meta.deleted and get_path(own, rules.soft_delete_field) is True:
        # Already marked: only the version moves, so older reads cannot revive it.
        plan.writes.append(_version_only(pid, own, own_meta, version, "unchanged"))
        return
    update = {"$set": {
        update_path(rules.soft_delete_field): True, PID_FIELD: pid, VERSION_FIELD: version,
        CHANGED_AT_FIELD: now, DELETED_AT_FIELD: own_meta.deleted_at or now,
    }}
    plan.writes.append(
        PlannedWrite(pid, own["_id"], _expectation(own_meta), "soft_deleted", update=update)
    )
    if own_meta.key is not None and not own_meta.deleted:
        plan.released_keys.add(own_meta.key)


def _plan_present(
    plan: BatchPlan,
    state: _Round,
    pid: str,
    production: Mapping[str, Mapping[str, Any] | None],
    keys: Mapping[str, str | None],
    own: Mapping[str, Any] | None,
    own_meta: SyncMeta,
    staging: StagingView,
    version: int,
    now: datetime,
    rules: CollectionRules,
) -> None:
    document = production[pid]
    assert document is not None
    key = keys[pid]
    rejected = _schema_rejection(document, rules)
    if rejected:
        _give_up(plan, state, DeadLetter(pid, "schema_version", rejected), own, own_meta, key,
                 version)
        return
    if key is None:
        fields = ", ".join(".".join(p) for p in rules.key_paths)
        letter = DeadLetter(pid, "missing_business_key",
                            f"business key ({fields}) missing or null")
        _give_up(plan, state, letter, own, own_meta, key, version)
        return
    if key in state.claimed_keys:
        plan.deferred.append(pid)  # another change of this batch takes the key this round
        return

    target: Mapping[str, Any] | None = own
    holder = staging.by_key.get(key)
    if holder is not None and own is None and read_meta(holder).pid == pid:
        plan.deferred.append(pid)  # our own copy, seen only by key: re-plan with it as own
        return
    if holder is not None and (own is None or encode_id(holder["_id"]) != encode_id(own["_id"])):
        holder_meta = read_meta(holder)
        if encode_id(holder["_id"]) in state.targeted:
            plan.deferred.append(pid)
            return
        if not holder_meta.deleted:
            verdict = _judge_live_holder(plan, key, holder_meta, production, keys)
            if verdict is None:
                plan.deferred.append(pid)
                if holder_meta.pid in production:
                    # The holder is stale and moves; if it moves onto our old key (a swap, or
                    # a longer cycle), it waits for us: let our old key go first.
                    _release_stale_claim(plan, state, pid, own, own_meta, key, version)
            else:
                _give_up(plan, state, DeadLetter(pid, "key_conflict", verdict, key), own,
                         own_meta, key, version)
            return
        if own is not None:
            # A soft-deleted document holds the key this document moves to (or, for a
            # tombstone, the key it revives): free it first, then move in next round.
            state.targeted.add(encode_id(holder["_id"] if not own_meta.tombstone else own["_id"]))
            plan.releases.append(
                _remove_tombstone(pid, own, own_meta) if own_meta.tombstone
                else _release_key(holder, holder_meta)
            )
            plan.deferred.append(pid)
            return
        target = holder  # a re-insert of the key revives the soft-deleted document
    elif own is None or own_meta.tombstone:
        unsynced = staging.unsynced_by_key.get(key)
        if unsynced is not None and encode_id(unsynced["_id"]) not in state.targeted:
            if own is not None:
                state.targeted.add(encode_id(own["_id"]))
                plan.releases.append(_remove_tombstone(pid, own, own_meta))
                plan.deferred.append(pid)
                return
            target = unsynced  # a document that predates the sync: adopt it

    target_meta = read_meta(target)
    content = production_content(document, rules.fields)
    digest = fingerprint(content)
    staging_id = target["_id"] if target is not None else staging.new_id(pid, rules)
    meta = {
        PID: pid, KEY: key, VERSION: version, CHANGED_AT: now,
        OWNED: encode_owned(owned_paths(document, rules.fields)), FINGERPRINT: digest,
    }
    # Production's part plus `_sync`: a lower bound of the written document's size (staging's
    # own fields come on top; the server refuses the write if they push it over the limit).
    if len(bson.encode({"_id": staging_id, **content, SYNC: meta})) > MAX_DOCUMENT_BYTES:
        letter = DeadLetter(pid, "document_too_large", "merged document exceeds 16 MiB", key)
        _give_up(plan, state, letter, own, own_meta, key, version)
        return
    if target is None:
        created = {"_id": staging_id, **content}
        set_path(created, rules.soft_delete_field, False)
        created[SYNC] = meta
        write = PlannedWrite(pid, staging_id, None, "created", created, enters=True)
    elif _unchanged(target, target_meta, pid, key, content, digest, staging.whole, rules):
        write = _version_only(pid, target, target_meta, version, "unchanged")
    else:
        also = {update_path(rules.soft_delete_field): False, SYNC: meta}
        owned_before = target_meta.owned
        if encode_id(staging_id) in staging.whole:
            # Read in full: plan from what staging holds, in its order (drift made by hand
            # included), not from what the last write recorded.
            owned_before = tuple(path for path, _ in leaf_paths(
                production_view(target, target_meta.owned)))
        field_update = plan_field_update(owned_before, document, rules.fields, also)
        if field_update is not None:
            update: Update = field_update.update
        elif encode_id(staging_id) in staging.whole:
            body, _ = merge_fields(target, document, target_meta.owned, rules.fields)
            set_path(body, rules.soft_delete_field, False)
            update = [{"$replaceWith": {"$literal": {"_id": staging_id, **body, SYNC: meta}}}]
        else:
            # Names `$set` cannot address: merge in memory, from the whole document.
            plan.need_content.add(encode_id(staging_id))
            plan.deferred.append(pid)
            return
        write = PlannedWrite(pid, staging_id, _expectation(target_meta), "updated",
                             update=update, enters=target_meta.deleted or not target_meta.synced)

    state.claimed_keys[key] = pid
    if target is not None:
        state.targeted.add(encode_id(staging_id))
    if own_meta.key is not None and own_meta.key != key and not own_meta.deleted:
        plan.released_keys.add(own_meta.key)
    if write.outcome == "unchanged" and not state.write_unchanged:
        plan.unchanged[pid] = write.staging_id
    else:
        plan.writes.append(write)


def _judge_live_holder(
    plan: BatchPlan,
    key: str,
    holder_meta: SyncMeta,
    production: Mapping[str, Mapping[str, Any] | None],
    keys: Mapping[str, str | None],
) -> str | None:
    """Another live staging document holds the key. A real conflict (returned as its reason)
    only if that document's production twin still has the key now; otherwise the holder is
    stale and moves, in this batch (its twin is read and applied here too): wait for it."""
    holder_pid = holder_meta.pid
    if holder_pid is None:
        return "key held by a staging document without production _id"
    if holder_pid not in production:
        plan.need_production.add(holder_pid)
        return None
    if production[holder_pid] is not None and keys.get(holder_pid) == key:
        return "another production document has the same business key"
    return None


def _give_up(
    plan: BatchPlan,
    state: _Round,
    letter: DeadLetter,
    own: Mapping[str, Any] | None,
    own_meta: SyncMeta,
    key: str | None,
    version: int,
) -> None:
    """Dead-letter a change. If its staging copy claims a key that production no longer gives
    the document, the claim goes (the stale copy stays): it must not block the document that
    holds that key in production now."""
    plan.dead_letters.append(letter)
    _release_stale_claim(plan, state, letter.pid, own, own_meta, key, version)


def _release_stale_claim(
    plan: BatchPlan,
    state: _Round,
    pid: str,
    own: Mapping[str, Any] | None,
    own_meta: SyncMeta,
    key: str | None,
    version: int,
) -> None:
    if (own is None or own_meta.key is None or own_meta.key == key or own_meta.deleted
            or encode_id(own["_id"]) in state.targeted):
        return
    state.targeted.add(encode_id(own["_id"]))
    plan.writes.append(_release_key(own, own_meta, pid=pid, version=version))
    plan.released_keys.add(own_meta.key)


def _schema_rejection(document: Mapping[str, Any], rules: CollectionRules) -> str | None:
    if rules.schema_version_field is None or rules.accepted_schema_versions is None:
        return None
    value = get_path(document, rules.schema_version_field)
    if value in rules.accepted_schema_versions and not isinstance(value, bool):
        return None
    accepted = ", ".join(sorted(map(str, rules.accepted_schema_versions)))
    return f"schema version {value!r} not accepted (accepted: {accepted})"


def _unchanged(
    target: Mapping[str, Any],
    meta: SyncMeta,
    pid: str,
    key: str,
    content: Mapping[str, Any],
    digest: str,
    whole: frozenset[str],
    rules: CollectionRules,
) -> bool:
    """Whether staging already holds exactly this production content, live, under this key.

    Read in full, the content itself is compared (a resync repairs drift made by hand);
    otherwise the fingerprint recorded with the last write stands for it.
    """
    if meta.pid != pid or meta.key != key or meta.deleted or meta.tombstone:
        return False
    if get_path(target, rules.soft_delete_field) is not False:
        return False
    if encode_id(target["_id"]) in whole:
        # Where a sub-document holding staging's own fields stands is staging's (see
        # `shared_last`), so it is compared out of production's order.
        shared = shared_parents(target, meta.owned)
        return bson.encode(shared_last(production_view(target, meta.owned), shared)) == \
            bson.encode(shared_last(content, shared))
    return meta.fingerprint == digest


def _expectation(meta: SyncMeta) -> int | Unsynced:
    return meta.version if meta.version is not None else UNSYNCED


def _version_only(
    pid: str, target: Mapping[str, Any], meta: SyncMeta, version: int, outcome: Outcome
) -> PlannedWrite:
    return PlannedWrite(pid, target["_id"], _expectation(meta), outcome,
                        update={"$set": {VERSION_FIELD: version}})


def _release_key(
    holder: Mapping[str, Any], meta: SyncMeta, pid: str | None = None, version: int | None = None
) -> PlannedWrite:
    """Drop a document's claim on its business key. For another document's soft-deleted
    holder the version stays; for our own document it records this apply's read."""
    update: dict[str, Any] = {"$unset": {KEY_FIELD: ""}}
    if version is not None:
        update["$set"] = {VERSION_FIELD: version}
    return PlannedWrite(pid, holder["_id"], _expectation(meta), "released", update=update)


def _remove_tombstone(pid: str, own: Mapping[str, Any], meta: SyncMeta) -> PlannedWrite:
    return PlannedWrite(pid, own["_id"], _expectation(meta), "released", delete=True)
