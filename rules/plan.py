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
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import bson
from stagesync.rules.field_update import Update, plan_field_update
from stagesync.rules.identity import encode_id
from stagesync.rules.merge import (
    content_digest,
    content_of,
    merge_fields,
    production_view,
    shared_last,
    shared_parents,
)
from stagesync.rules.paths import Path, get_path, leaf_paths, set_path, update_path
from stagesync.rules.plan_types import (
    BatchPlan,
    CollectionRules,
    DeadLetter,
    PlannedWrite,
    StagingView,
)
from stagesync.rules.plan_writes import (
    expectation,
    release_key,
    remove_tombstone,
    schema_rejection,
    tombstone,
    version_only,
)
from stagesync.rules.sync_meta import (
    CHANGED_AT,
    CHANGED_AT_FIELD,
    DELETED_AT_FIELD,
    FINGERPRINT,
    KEY,
    OWNED,
    PID,
    PID_FIELD,
    SYNC,
    VERSION,
    VERSION_FIELD,
    SyncMeta,
    encode_owned,
    read_meta,
)

# 16 MiB is MongoDB's document limit; keep room for the update command around it.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024 - 64 * 1024


@dataclass
class PlanningRound:
    """One planning round of a batch: what it reads from, and what it has claimed so far."""

    plan: BatchPlan
    version: int
    now: datetime
    production: Mapping[str, Mapping[str, Any] | None]
    keys: Mapping[str, str | None]
    staging: StagingView
    rules: CollectionRules
    write_unchanged: bool = True
    claimed_keys: dict[str, str] = field(default_factory=dict)
    targeted: set[str] = field(default_factory=set)  # encoded staging `_id`s

    def target(self, document: Mapping[str, Any]) -> None:
        """No other change of this round may write this staging document."""
        self.targeted.add(encode_id(document["_id"]))

    def is_targeted(self, document: Mapping[str, Any]) -> bool:
        return encode_id(document["_id"]) in self.targeted


@dataclass(frozen=True)
class _Change:
    """One pid of the batch, with its own staging copy as read (if any)."""

    pid: str
    own: Mapping[str, Any] | None
    own_meta: SyncMeta
    key: str | None = None


# Nine keyword-only parameters: every call names each one, and bundling them would only move
# the same nine names into a throw-away object at each of the planner's callers.
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
    outside: AbstractSet[str] = frozenset(),
) -> BatchPlan:
    """Plan the writes for `pids`; `production[pid]` is the masked document or None (gone).

    Every pid must be a key of `production`. Holders of a business key whose production
    document is also in `production` are judged on that fresh read. `keys` are the business
    keys of the production documents, when they must come from other values than the ones
    written (references are translated after the keys are taken).

    A live copy that already holds production's content gets its version moved to this
    apply's, unless `write_unchanged` is False (a resync: see `tasks.full_resync.chunks`); it
    is then listed in `unchanged` and nothing is written.

    `outside`: pids whose production document exists but lies outside the target's subset
    (None in `production`). One without a copy is listed in `outside` and nothing is written:
    no tombstone. In a sampled target that is nearly every change; the race a tombstone would
    close (a slower apply that read the document as a member creating it afterwards) is closed
    by the creator instead (`tasks.apply.applier.confirm_entered`).
    """
    if keys is None:
        keys = {pid: rules.key_of(doc) for pid, doc in production.items() if doc is not None}
    state = PlanningRound(BatchPlan(), version, now, production, keys, staging, rules,
                          write_unchanged)
    for pid in sorted(set(pids)):
        own = staging.by_pid.get(pid)
        change = _Change(pid, own, read_meta(own), keys.get(pid))
        meta = change.own_meta
        if own is not None and meta.version is not None and meta.version > version:
            # (Equal means this apply wrote it in an earlier round, e.g. a key release.)
            state.plan.superseded.append(pid)
        elif own is not None and state.is_targeted(own):
            state.plan.deferred.append(pid)
        elif production[pid] is None and own is None and pid in outside:
            state.plan.outside.append(pid)
        elif production[pid] is None:
            _plan_gone(state, change)
        else:
            _plan_present(state, change)
    return state.plan


def _plan_gone(state: PlanningRound, change: _Change) -> None:
    """Production no longer has the document (deleted, or outside the configured filter)."""
    own, meta, rules = change.own, change.own_meta, state.rules
    if own is None:
        # Nothing to mark, but a slower apply that read the document before it went must not
        # create it afterwards: a tombstone holds the pid at this version.
        state.plan.writes.append(tombstone(
            change.pid, state.staging.new_id(change.pid, rules), state.version, state.now,
            rules))
        return
    state.target(own)
    if meta.deleted and get_path(own, rules.soft_delete_field) is True:
        # Already marked: only the version moves, so older reads cannot revive it.
        state.plan.writes.append(version_only(change.pid, own, meta, state.version,
                                              "unchanged"))
        return
    update = {"$set": {
        update_path(rules.soft_delete_field): True, PID_FIELD: change.pid,
        VERSION_FIELD: state.version, CHANGED_AT_FIELD: state.now,
        DELETED_AT_FIELD: meta.deleted_at or state.now,
    }}
    state.plan.writes.append(
        PlannedWrite(change.pid, own["_id"], expectation(meta), "soft_deleted", update=update)
    )
    if meta.key is not None and not meta.deleted:
        state.plan.released_keys.add(meta.key)


def _plan_present(state: PlanningRound, change: _Change) -> None:
    document = state.production[change.pid]
    assert document is not None
    rejected = schema_rejection(document, state.rules)
    if rejected:
        _give_up(state, change, DeadLetter(change.pid, "schema_version", rejected))
        return
    if change.key is None:
        fields = ", ".join(".".join(p) for p in state.rules.key_paths)
        _give_up(state, change, DeadLetter(change.pid, "missing_business_key",
                                           f"business key ({fields}) missing or null"))
        return
    if change.key in state.claimed_keys:
        state.plan.deferred.append(change.pid)  # another change of this batch takes the key
        return
    found, target = _target_of(state, change)
    if found:
        _plan_write(state, change, document, target)


def _target_of(state: PlanningRound, change: _Change
               ) -> tuple[bool, Mapping[str, Any] | None]:
    """The staging document this change writes (None: a new copy), or (False, None) when the
    change waits, gives way or gives up this round."""
    pid, own, own_meta, key = change.pid, change.own, change.own_meta, change.key
    assert key is not None
    plan = state.plan
    holder = state.staging.by_key.get(key)
    if holder is not None and own is None and read_meta(holder).pid == pid:
        plan.deferred.append(pid)  # our own copy, seen only by key: re-plan with it as own
        return False, None
    if holder is not None and (own is None or encode_id(holder["_id"]) != encode_id(own["_id"])):
        return _held_by_another(state, change, holder)
    if own is None or own_meta.tombstone:
        unsynced = state.staging.unsynced_by_key.get(key)
        if unsynced is not None and not state.is_targeted(unsynced):
            if own is not None:
                state.target(own)
                plan.releases.append(remove_tombstone(pid, own, own_meta))
                plan.deferred.append(pid)
                return False, None
            return True, unsynced  # a document that predates the sync: adopt it
    return True, own


def _held_by_another(state: PlanningRound, change: _Change, holder: Mapping[str, Any]
                     ) -> tuple[bool, Mapping[str, Any] | None]:
    """Another staging document holds the key this change wants."""
    pid, own, own_meta, key = change.pid, change.own, change.own_meta, change.key
    assert key is not None
    plan = state.plan
    holder_meta = read_meta(holder)
    if state.is_targeted(holder):
        plan.deferred.append(pid)
        return False, None
    if not holder_meta.deleted:
        verdict = _judge_live_holder(state, key, holder_meta)
        if verdict is None:
            plan.deferred.append(pid)
            if holder_meta.pid in state.production:
                # The holder is stale and moves; if it moves onto our old key (a swap, or a
                # longer cycle), it waits for us: let our old key go first.
                _release_stale_claim(state, change)
        else:
            _give_up(state, change, DeadLetter(pid, "key_conflict", verdict, key))
        return False, None
    if own is not None:
        # A soft-deleted document holds the key this document moves to (or, for a tombstone,
        # the key it revives): free it first, then move in next round.
        state.target(holder if not own_meta.tombstone else own)
        plan.releases.append(
            remove_tombstone(pid, own, own_meta) if own_meta.tombstone
            else release_key(holder, holder_meta)
        )
        plan.deferred.append(pid)
        return False, None
    return True, holder  # a re-insert of the key revives the soft-deleted document


def _plan_write(state: PlanningRound, change: _Change, document: Mapping[str, Any],
                target: Mapping[str, Any] | None) -> None:
    """Create, update or confirm the target with this production document."""
    pid, key, rules = change.pid, change.key, state.rules
    assert key is not None
    # The leaves are walked once: content, owned paths and the update all come from them.
    leaves, content = rules.fields.syncable_content(document)
    encoded = bson.encode(content)
    digest = content_digest(encoded)
    target_meta = _meta_of(change, target)
    if target is not None and _unchanged(state, change, target, target_meta, content, encoded,
                                         digest):
        # Decided before the rest is built: a copy that already holds production's content
        # (often, in a burst on hot documents) costs neither its owned paths nor a size check.
        _claim(state, change, version_only(pid, target, target_meta, state.version,
                                           "unchanged"), target)
        return
    staging_id = target["_id"] if target is not None else state.staging.new_id(pid, rules)
    meta = {
        PID: pid, KEY: key, VERSION: state.version, CHANGED_AT: state.now,
        OWNED: encode_owned(path for path, _ in leaves), FINGERPRINT: digest,
    }
    # Production's part plus `_sync`: a lower bound of the written document's size (staging's
    # own fields come on top; the server refuses the write if they push it over the limit).
    # BSON sizes add up: the two documents' bytes, less one header and terminator (5 bytes).
    size = len(encoded) + len(bson.encode({"_id": staging_id, SYNC: meta})) - 5
    if size > MAX_DOCUMENT_BYTES:
        letter = DeadLetter(pid, "document_too_large", "merged document exceeds 16 MiB", key)
        _give_up(state, change, letter)
        return
    if target is None:
        created = {"_id": staging_id, **content}
        set_path(created, rules.soft_delete_field, False)
        created[SYNC] = meta
        write = PlannedWrite(pid, staging_id, None, "created", created, enters=True)
    else:
        update = _update(state, change, _Target(target, target_meta), leaves, meta)
        if update is None:
            return
        write = update
    _claim(state, change, write, target)


def _meta_of(change: _Change, target: Mapping[str, Any] | None) -> SyncMeta:
    """The target's `_sync`, read once: mostly the change's own copy, already read."""
    return change.own_meta if target is change.own else read_meta(target)


@dataclass(frozen=True)
class _Target:
    """The staging document a change updates, with its `_sync` as read."""

    document: Mapping[str, Any]
    meta: SyncMeta


def _update(state: PlanningRound, change: _Change, target_of: _Target,
            leaves: list[tuple[Path, Any]], meta: Mapping[str, Any]) -> PlannedWrite | None:
    """The update of an existing copy; None when it must first be read in full."""
    target, target_meta = target_of.document, target_of.meta
    rules, staging_id = state.rules, target["_id"]
    whole = encode_id(staging_id) in state.staging.whole
    also = {update_path(rules.soft_delete_field): False, SYNC: meta}
    owned_before = target_meta.owned
    if whole:
        # Read in full: plan from what staging holds, in its order (drift made by hand
        # included), not from what the last write recorded.
        owned_before = tuple(path for path, _ in leaf_paths(
            production_view(target, target_meta.owned)))
    field_update = plan_field_update(owned_before, leaves, rules.fields, also)
    if field_update is not None:
        update: Update = field_update.update
    elif whole:
        body, _ = merge_fields(target, content_of(leaves), target_meta.owned, rules.fields)
        set_path(body, rules.soft_delete_field, False)
        update = [{"$replaceWith": {"$literal": {"_id": staging_id, **body, SYNC: meta}}}]
    else:
        # Names `$set` cannot address: merge in memory, from the whole document.
        state.plan.need_content.add(encode_id(staging_id))
        state.plan.deferred.append(change.pid)
        return None
    return PlannedWrite(change.pid, staging_id, expectation(target_meta), "updated",
                        update=update, enters=target_meta.deleted or not target_meta.synced)


def _claim(state: PlanningRound, change: _Change, write: PlannedWrite,
           target: Mapping[str, Any] | None) -> None:
    """Record the write and what it takes: its key, its document, the key it lets go."""
    assert change.key is not None
    state.claimed_keys[change.key] = change.pid
    if target is not None:
        state.targeted.add(encode_id(write.staging_id))
    own_meta = change.own_meta
    if own_meta.key is not None and own_meta.key != change.key and not own_meta.deleted:
        state.plan.released_keys.add(own_meta.key)
    if write.outcome == "unchanged" and not state.write_unchanged:
        state.plan.unchanged[change.pid] = write.staging_id
    else:
        state.plan.writes.append(write)


def _judge_live_holder(state: PlanningRound, key: str, holder_meta: SyncMeta) -> str | None:
    """Another live staging document holds the key. A real conflict (returned as its reason)
    only if that document's production twin still has the key now; otherwise the holder is
    stale and moves, in this batch (its twin is read and applied here too): wait for it."""
    holder_pid = holder_meta.pid
    if holder_pid is None:
        return "key held by a staging document without production _id"
    if holder_pid not in state.production:
        state.plan.need_production.add(holder_pid)
        return None
    if state.production[holder_pid] is not None and state.keys.get(holder_pid) == key:
        return "another production document has the same business key"
    return None


def _give_up(state: PlanningRound, change: _Change, letter: DeadLetter) -> None:
    """Dead-letter a change. If its staging copy claims a key that production no longer gives
    the document, the claim goes (the stale copy stays): it must not block the document that
    holds that key in production now."""
    state.plan.dead_letters.append(letter)
    _release_stale_claim(state, change)


def _release_stale_claim(state: PlanningRound, change: _Change) -> None:
    own, own_meta = change.own, change.own_meta
    if (own is None or own_meta.key is None or own_meta.key == change.key or own_meta.deleted
            or state.is_targeted(own)):
        return
    state.target(own)
    state.plan.writes.append(release_key(own, own_meta, pid=change.pid,
                                         version=state.version))
    state.plan.released_keys.add(own_meta.key)


def _unchanged(state: PlanningRound, change: _Change, target: Mapping[str, Any],
               meta: SyncMeta, content: Mapping[str, Any], encoded: bytes, digest: str) -> bool:
    """Whether staging already holds exactly this production content, live, under this key.

    Read in full, the content itself is compared (a resync repairs drift made by hand);
    otherwise the fingerprint recorded with the last write stands for it.
    """
    if meta.pid != change.pid or meta.key != change.key or meta.deleted or meta.tombstone:
        return False
    if get_path(target, state.rules.soft_delete_field) is not False:
        return False
    if encode_id(target["_id"]) in state.staging.whole:
        # Where a sub-document holding staging's own fields stands is staging's (see
        # `shared_last`), so it is compared out of production's order.
        shared = shared_parents(target, meta.owned)
        view = production_view(target, meta.owned)
        if not shared:  # nearly always: production's order is the order to compare in
            return bson.encode(view) == encoded
        return bson.encode(shared_last(view, shared)) == bson.encode(shared_last(content, shared))
    return meta.fingerprint == digest
