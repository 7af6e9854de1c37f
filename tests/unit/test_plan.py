"""The batch planner's decisions, case by case (the pure merge rules of the apply path)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import bson
from bson import ObjectId
from stagesync.rules.identity import encode_id
from stagesync.rules.merge import fingerprint, owned_paths, production_content
from stagesync.rules.plan import plan_batch
from stagesync.rules.plan_types import (
    UNSYNCED,
    BatchPlan,
    CollectionRules,
    PlannedWrite,
    StagingView,
)
from stagesync.rules.sync_meta import encode_owned, read_meta
from stagesync.settings.collection import CollectionSettings

NOW = datetime(2026, 1, 1, tzinfo=UTC)
RULES = CollectionRules.from_settings(CollectionSettings(
    name="orders", source="p.orders", target="s.orders", business_key=["email", "account"],
    staging_fields=["qaNotes"], schema_version_field="v", accepted_schema_versions=[1, 2],
))
P1, P2 = encode_id(ObjectId()), encode_id(ObjectId())


def prod(email: str, account: int = 1, **fields: Any) -> dict[str, Any]:
    return {"_id": ObjectId(), "email": email, "account": account, "v": 1, **fields}


def key(email: str, account: int = 1) -> str:
    result = RULES.key_of({"email": email, "account": account})
    assert result is not None
    return result


def staged(pid: str, email: str, account: int = 1, version: int = 1, deleted: bool = False,
           **fields: Any) -> dict[str, Any]:
    """A staging document as the sync wrote it (with its fingerprint), QA fields included."""
    body = {"email": email, "account": account, "v": 1, **fields}
    sync: dict[str, Any] = {
        "pid": pid, "key": key(email, account), "v": version, "at": NOW,
        "owned": encode_owned(owned_paths(body, RULES.fields)),
        "fp": fingerprint(production_content(body, RULES.fields)),
    }
    if deleted:
        sync["deletedAt"] = NOW
    return {"_id": ObjectId(), **body, "deleted": deleted, "_sync": sync}


def sets(write: PlannedWrite) -> dict[str, Any]:
    """What an update write sets, whatever its form (operators, or a pipeline's literals)."""
    assert write.update is not None
    if isinstance(write.update, dict):
        return dict(write.update.get("$set", {}))
    values: dict[str, Any] = {}
    for stage in write.update:
        for name, value in stage.get("$set", {}).items():
            if isinstance(value, dict) and "$literal" in value:
                values[name] = value["$literal"]
    return values


def unsets(write: PlannedWrite) -> set[str]:
    assert isinstance(write.update, dict)
    return set(write.update.get("$unset", {}))


def plan(production: dict[str, Any], staging: list[dict[str, Any]], version: int = 10,
         unsynced: dict[str, dict[str, Any]] | None = None) -> BatchPlan:
    by_pid = {d["_sync"]["pid"]: d for d in staging if "_sync" in d}
    by_key = {d["_sync"]["key"]: d for d in staging if d.get("_sync", {}).get("key")}
    view = StagingView(by_pid=by_pid, by_key=by_key, unsynced_by_key=unsynced or {})
    return plan_batch(version=version, now=NOW, pids=list(production), production=production,
                      staging=view, rules=RULES)


def test_a_new_document_is_created_with_its_sync_metadata() -> None:
    result = plan({P1: prod("a@x", total=5)}, [])
    [write] = result.writes
    assert write.outcome == "created" and write.is_insert
    meta = read_meta(write.document)
    assert (meta.pid, meta.key, meta.version) == (P1, key("a@x"), 10)
    assert write.document["deleted"] is False and write.document["total"] == 5


def test_an_update_keeps_staging_fields_and_expects_the_version_it_read() -> None:
    current = staged(P1, "a@x", total=1, qaNotes="mine")
    current["qaTag"] = "also mine"
    result = plan({P1: prod("a@x", total=2, qaNotes="from production")}, [current])
    [write] = result.writes
    assert write.outcome == "updated" and write.expect == 1
    assert write.staging_id == current["_id"] and write.document is None
    # Only production's paths, the soft-delete flag and `_sync` are written: QA fields are
    # never named, so an edit landing between the read and the write survives.
    assert sets(write)["total"] == 2 and sets(write)["deleted"] is False
    assert set(sets(write)) == {"email", "account", "v", "total", "deleted", "_sync"}
    assert not unsets(write)


def test_a_field_production_removed_is_unset() -> None:
    current = staged(P1, "a@x", total=1, coupon="X")
    [write] = plan({P1: prod("a@x", total=1)}, [current]).writes
    assert unsets(write) == {"coupon"}


def test_a_type_change_alone_is_a_change() -> None:
    current = staged(P1, "a@x", total=1)
    [write] = plan({P1: prod("a@x", total=1.0)}, [current]).writes
    assert write.outcome == "updated" and type(sets(write)["total"]) is float


def test_field_names_update_operators_cannot_reach_need_the_whole_document() -> None:
    current = staged(P1, "a@x")
    result = plan({P1: prod("a@x", **{"price.eur": 1})}, [current])
    assert result.need_content == {encode_id(current["_id"])} and result.deferred == [P1]
    whole = StagingView(by_pid={P1: current}, by_key={key("a@x"): current},
                        whole=frozenset({encode_id(current["_id"])}))
    [write] = plan_batch(version=10, now=NOW, pids=[P1], production={
        P1: prod("a@x", **{"price.eur": 1})}, staging=whole, rules=RULES).writes
    [stage] = write.update
    assert stage["$replaceWith"]["$literal"]["price.eur"] == 1


def test_an_unchanged_document_only_moves_its_version() -> None:
    current = staged(P1, "a@x")
    result = plan({P1: {k: v for k, v in current.items() if k not in ("deleted", "_sync")}},
                  [current])
    [write] = result.writes
    assert write.outcome == "unchanged" and write.update == {"$set": {"_sync.v": 10}}


def test_read_in_full_the_content_itself_is_compared() -> None:
    current = staged(P1, "a@x", total=1)
    production = {k: v for k, v in current.items() if k not in ("deleted", "_sync")}
    current["total"] = 2  # drift made by hand: the fingerprint does not see it
    assert plan({P1: production}, [current]).writes[0].outcome == "unchanged"
    whole = StagingView(by_pid={P1: current}, by_key={},
                        whole=frozenset({encode_id(current["_id"])}))
    [write] = plan_batch(version=10, now=NOW, pids=[P1], production={P1: production},
                         staging=whole, rules=RULES).writes
    assert write.outcome == "updated" and sets(write)["total"] == 1


def test_a_newer_staging_version_supersedes_this_apply() -> None:
    result = plan({P1: prod("a@x")}, [staged(P1, "a@x", version=11)])
    assert result.superseded == [P1] and result.writes == []


def test_a_delete_soft_deletes_and_frees_the_key_for_waiters() -> None:
    current = staged(P1, "a@x", total=1)
    result = plan({P1: None}, [current])
    [write] = result.writes
    assert write.outcome == "soft_deleted"
    assert sets(write)["deleted"] is True and "total" not in sets(write)
    assert sets(write)["_sync.deletedAt"] == NOW
    assert result.released_keys == {key("a@x")}


def test_a_delete_of_a_document_never_synced_leaves_a_tombstone() -> None:
    [write] = plan({P1: None}, []).writes
    assert write.outcome == "tombstoned" and write.is_insert
    meta = read_meta(write.document)
    assert meta.tombstone and meta.deleted and meta.pid == P1 and meta.key is None


def test_a_reinsert_of_a_deleted_key_revives_the_same_staging_document() -> None:
    old = staged(P1, "a@x", deleted=True, qaNotes="kept")
    [write] = plan({P2: prod("a@x", total=9)}, [old]).writes
    assert write.staging_id == old["_id"] and write.expect == 1
    assert sets(write)["deleted"] is False and "qaNotes" not in sets(write)
    meta = read_meta(sets(write))
    assert meta.pid == P2 and meta.deleted_at is None


def test_a_key_change_moves_the_document_and_releases_the_old_key() -> None:
    current = staged(P1, "a@x")
    result = plan({P1: prod("b@x")}, [current])
    [write] = result.writes
    assert write.staging_id == current["_id"]
    assert read_meta(sets(write)).key == key("b@x")
    assert result.released_keys == {key("a@x")}


def test_two_production_documents_with_one_key_are_a_conflict() -> None:
    holder = staged(P2, "a@x")
    result = plan({P1: prod("a@x"), P2: prod("a@x")}, [holder])
    assert [(d.pid, d.reason) for d in result.dead_letters] == [(P1, "key_conflict")]


def test_a_holder_whose_twin_is_unknown_is_read_before_judging() -> None:
    result = plan({P1: prod("a@x")}, [staged(P2, "a@x")])
    assert result.need_production == {P2} and result.deferred == [P1]
    assert result.dead_letters == []


def test_a_stale_holder_moving_away_is_waited_for() -> None:
    holder = staged(P2, "a@x")
    result = plan({P1: prod("a@x"), P2: prod("b@x")}, [holder])
    assert P1 in result.deferred and result.dead_letters == []
    assert [w.pid for w in result.writes] == [P2]  # the holder moves first


def test_a_swap_of_keys_releases_its_stale_claim_to_break_the_cycle() -> None:
    first, second = staged(P1, "a@x"), staged(P2, "b@x")
    result = plan({P1: prod("b@x"), P2: prod("a@x")}, [first, second])
    released = [w for w in result.writes if w.outcome == "released"]
    assert released and result.deferred


def test_a_soft_deleted_holder_of_a_target_key_gives_it_up() -> None:
    moving, deleted = staged(P1, "a@x"), staged(P2, "b@x", deleted=True)
    result = plan({P1: prod("b@x")}, [moving, deleted])
    [release] = result.releases
    assert release.staging_id == deleted["_id"]
    assert release.update == {"$unset": {"_sync.key": ""}}
    assert result.deferred == [P1]


def test_a_document_losing_its_key_is_dead_lettered_and_lets_its_key_go() -> None:
    current = staged(P1, "a@x")
    document = prod("a@x")
    del document["account"]
    result = plan({P1: document}, [current])
    assert [d.reason for d in result.dead_letters] == ["missing_business_key"]
    [write] = result.writes
    assert write.outcome == "released" and unsets(write) == {"_sync.key"}


def test_an_unaccepted_schema_version_is_held() -> None:
    result = plan({P1: prod("a@x", v=3)}, [])
    [letter] = result.dead_letters
    assert letter.reason == "schema_version" and "3" in letter.detail and result.writes == []


def test_a_document_that_predates_the_sync_is_adopted() -> None:
    legacy = {"_id": ObjectId(), "email": "a@x", "account": 1, "qaNotes": "from backup"}
    [write] = plan({P1: prod("a@x")}, [], unsynced={key("a@x"): legacy}).writes
    assert write.staging_id == legacy["_id"] and write.expect is UNSYNCED
    assert "qaNotes" not in sets(write) and sets(write)["email"] == "a@x"


def test_one_key_claimed_twice_in_a_batch_defers_the_second() -> None:
    result = plan({P1: prod("a@x"), P2: prod("a@x")}, [])
    assert len(result.writes) == 1 and len(result.deferred) == 1


def test_a_document_with_many_small_fields_fits_with_its_sync_metadata() -> None:
    # ~6.8 MB of small fields: listing every owned path as a string (the earlier
    # `_sync.owned`) took more than that again and pushed the copy over 16 MiB, dead-lettering
    # a document production holds fine.
    fields = {f"m{i:06d}": i for i in range(520_000)}
    document = prod("big@x", **fields)
    as_strings = len(bson.encode({"owned": sorted(fields)}))
    assert len(bson.encode(document)) + as_strings > 16 * 1024 * 1024
    [write] = plan({P1: document}, []).writes
    assert write.outcome == "created"
    assert len(bson.encode(write.document)) < 0.6 * (len(bson.encode(document)) + as_strings)


def test_read_in_full_a_sub_document_holding_staging_fields_may_stand_anywhere() -> None:
    current = staged(P1, "a@x", total=1, sub={"x": 1})
    production = {k: v for k, v in current.items() if k not in ("deleted", "_sync")}
    # QA put a field into `sub`, which stands ahead of production's fields in staging.
    current = {"sub": {"x": 1, "note": "qa"}, **{k: v for k, v in current.items() if k != "sub"}}
    view = StagingView(by_pid={P1: current}, by_key={key("a@x"): current},
                       whole=frozenset({encode_id(current["_id"])}))
    result = plan_batch(version=10, now=NOW, pids=[P1], production={P1: production},
                        staging=view, rules=RULES, write_unchanged=False)
    assert not result.writes and result.unchanged == {P1: current["_id"]}
    # Production's own fields out of production's order are drift.
    current = {"total": 1, **{k: v for k, v in current.items() if k != "total"}}
    view = StagingView(by_pid={P1: current}, by_key={key("a@x"): current},
                       whole=frozenset({encode_id(current["_id"])}))
    [write] = plan_batch(version=10, now=NOW, pids=[P1], production={P1: production},
                         staging=view, rules=RULES, write_unchanged=False).writes
    assert write.outcome == "updated"


def test_a_copy_whose_id_is_nan_is_its_own_key_holder() -> None:
    # NaN is not equal to itself: compared as values, the copy looked like another document
    # holding its own business key, and the resync dead-lettered it.
    nan_pid = encode_id(float("nan"))
    current = {**staged(nan_pid, "a@x"), "_id": float("nan")}
    [write] = plan({nan_pid: {**prod("a@x"), "_id": float("nan")}}, [current]).writes
    assert write.outcome == "unchanged"


def test_a_resync_leaves_an_unchanged_copy_as_it_is() -> None:
    current = staged(P1, "a@x", total=1)
    production = {k: v for k, v in current.items() if k not in ("deleted", "_sync")}
    view = StagingView(by_pid={P1: current}, by_key={key("a@x"): current},
                       whole=frozenset({encode_id(current["_id"])}))
    result = plan_batch(version=10, now=NOW, pids=[P1], production={P1: production},
                        staging=view, rules=RULES, write_unchanged=False)
    assert not result.writes and result.unchanged == {P1: current["_id"]}
    # Drift is still repaired.
    current["total"] = 2
    [write] = plan_batch(version=10, now=NOW, pids=[P1], production={P1: production},
                         staging=view, rules=RULES, write_unchanged=False).writes
    assert write.outcome == "updated"


def _plan_outside(production: dict[str, Any], staging: list[dict[str, Any]],
                  outside: set[str]) -> BatchPlan:
    by_pid = {d["_sync"]["pid"]: d for d in staging}
    return plan_batch(version=10, now=NOW, pids=list(production), production=production,
                      staging=StagingView(by_pid=by_pid, by_key={}), rules=RULES,
                      outside=frozenset(outside))


def test_a_document_outside_the_subset_without_a_copy_is_not_tombstoned() -> None:
    """Outside the target's subset (None, as a gone one), with no copy: nothing is written.
    Gone from production: a tombstone, as before."""
    result = _plan_outside({P1: None, P2: None}, [], outside={P1})
    assert result.outside == [P1]
    [write] = result.writes
    assert write.pid == P2 and write.outcome == "tombstoned"


def test_a_copy_outside_the_subset_is_still_soft_deleted() -> None:
    """A member that left keeps being removed as any copy whose document is gone."""
    current = staged(P1, "a@x")
    result = _plan_outside({P1: None}, [current], outside={P1})
    [write] = result.writes
    assert result.outside == [] and write.outcome == "soft_deleted"
