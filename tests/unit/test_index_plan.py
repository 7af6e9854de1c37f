"""Start-up index decisions (`deployments.staging_indexes.plan_index`): reuse, change a TTL,
replace only our own outdated indexes, never touch the user's. The indexes are shaped as
listIndexes returns them on MongoDB (the simple collation omitted)."""

from __future__ import annotations

from typing import Any

from bson import SON
from stagesync.deployments.staging_indexes import (
    IndexPlan,
    blocker,
    plan_index,
    serves,
    target_indexes,
)
from stagesync.settings.collection import CollectionSettings

ORDERS = CollectionSettings(name="orders", source="p.orders", target="s.orders",
                            business_key=["userEmail", "accountId"])


def wanted(name: str) -> dict[str, Any]:
    return next(m.document for m in target_indexes(ORDERS) if m.document["name"] == name)


def listed(name: str, key: list[tuple[str, Any]], **options: Any) -> dict[str, Any]:
    return {"v": 2, "key": SON(key), "name": name, **options}


ID_INDEX = listed("_id_", [("_id", 1)])


def test_every_stagesync_index_states_the_simple_collation() -> None:
    for model in target_indexes(ORDERS):
        assert model.document["collation"] == {"locale": "simple"}, model.document["name"]


def test_an_equivalent_index_under_another_name_is_reused() -> None:
    restored = listed("userEmail_1_accountId_1", [("userEmail", 1), ("accountId", 1)])
    plan = plan_index(wanted("stagesync_business_key"), [ID_INDEX, restored])
    assert plan.reuse == "userEmail_1_accountId_1" and not plan.create and plan.drop is None


def test_a_unique_index_on_the_same_keys_serves_a_plain_lookup() -> None:
    unique = listed("by_key", [("userEmail", 1.0), ("accountId", 1)], unique=True)
    assert plan_index(wanted("stagesync_business_key"), [unique]).reuse == "by_key"


def test_an_index_with_another_collation_does_not_serve() -> None:
    case_insensitive = listed("userEmail_1_accountId_1", [("userEmail", 1), ("accountId", 1)],
                              collation={"locale": "en", "strength": 2})
    plan = plan_index(wanted("stagesync_business_key"), [case_insensitive])
    assert plan.create and plan.reuse is None and plan.drop is None


def test_our_own_index_from_a_case_insensitive_collection_is_rebuilt_simple() -> None:
    inherited = listed("stagesync_pid", [("_sync.pid", 1)], unique=True, sparse=True,
                       collation={"locale": "en", "strength": 2})
    plan = plan_index(wanted("stagesync_pid"), [inherited])
    assert plan.drop == "stagesync_pid" and plan.create


def test_uniqueness_and_sparseness_matter_for_the_sync_indexes() -> None:
    plain = listed("pid_lookup", [("_sync.pid", 1)])
    unique_everywhere = listed("pid_unique", [("_sync.pid", 1)], unique=True)
    assert plan_index(wanted("stagesync_pid"), [plain, unique_everywhere]).create
    good = listed("pid_ok", [("_sync.pid", 1)], unique=True, sparse=True)
    assert plan_index(wanted("stagesync_pid"), [plain, good]).reuse == "pid_ok"


def test_the_earlier_partial_definitions_are_rebuilt_sparse() -> None:
    """Deployments from before the sparse indexes: their partial `stagesync_pid` and
    `stagesync_key` are ours and outdated, so they are dropped and rebuilt."""
    for name, field in (("stagesync_pid", "_sync.pid"), ("stagesync_key", "_sync.key")):
        partial = listed(name, [(field, 1)], unique=True,
                         partialFilterExpression=SON([(field, SON([("$exists", True)]))]))
        plan = plan_index(wanted(name), [partial])
        assert plan.drop == name and plan.create and plan.reuse is None


def test_a_changed_ttl_is_changed_in_place() -> None:
    ours = listed("stagesync_tombstone_ttl", [("_sync.expireAt", 1)], expireAfterSeconds=3600)
    plan = plan_index(wanted("stagesync_tombstone_ttl"), [ours])
    assert plan.change_ttl == ("stagesync_tombstone_ttl", 0)
    assert plan.drop is None and not plan.create


def test_the_same_index_is_kept() -> None:
    ours = listed("stagesync_tombstone_ttl", [("_sync.expireAt", 1)], expireAfterSeconds=0,
                  collation={"locale": "simple"})  # some servers list the simple collation
    assert plan_index(wanted("stagesync_tombstone_ttl"), [ours]).reuse == "stagesync_tombstone_ttl"


def test_our_outdated_business_key_index_is_replaced_or_dropped_for_a_serving_one() -> None:
    stale = listed("stagesync_business_key", [("email", 1)])
    assert plan_index(wanted("stagesync_business_key"), [stale]) == IndexPlan(
        drop="stagesync_business_key", create=True)
    restored = listed("userEmail_1_accountId_1", [("userEmail", 1), ("accountId", 1)])
    plan = plan_index(wanted("stagesync_business_key"), [stale, restored])
    assert plan.reuse == "userEmail_1_accountId_1" and plan.drop == "stagesync_business_key"


def test_indexes_of_the_user_are_never_dropped() -> None:
    for existing in (
        [listed("my_ttl", [("_sync.expireAt", 1)], expireAfterSeconds=3600)],
        [listed("userEmail_1_accountId_1", [("userEmail", 1), ("accountId", 1)], sparse=True)],
        [listed("pid_lookup", [("_sync.pid", 1)])],
    ):
        for model in target_indexes(ORDERS):
            plan = plan_index(model.document, existing)
            assert plan.drop is None or plan.drop.startswith("stagesync_"), (existing, plan)


def test_key_order_and_direction_matter() -> None:
    reversed_order = listed("a", [("accountId", 1), ("userEmail", 1)])
    descending = listed("b", [("userEmail", -1), ("accountId", 1)])
    for index in (reversed_order, descending):
        assert not serves(index, wanted("stagesync_business_key"))


def test_blocker_names_the_index_on_the_same_keys() -> None:
    mine = listed("my_ttl", [("_sync.expireAt", 1)], expireAfterSeconds=3600)
    assert blocker(wanted("stagesync_tombstone_ttl"), [ID_INDEX, mine]) == mine
    assert blocker(wanted("stagesync_pid"), [ID_INDEX, mine]) is None
