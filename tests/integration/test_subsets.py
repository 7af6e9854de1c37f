"""Subsets that keep their references whole, while streaming (and by resync).

A sample of root documents (`subset: {percent}`, a keyed hash of the production `_id`), and
children that follow a declared reference (`subset: {follow}`): staging holds exactly the
closure, and follows membership changes within seconds, with no resync.
"""

from __future__ import annotations

import json
from typing import Any

from bson import ObjectId
from stagesync.rules.identity import decode_id, encode_id
from stagesync.rules.subset import in_sample
from stagesync.state.pending_references import pending_count

from tests.support.pipeline import Pipeline, collection_config, wait_for

TIMEOUT = 90
SECRET = b"test-secret"  # the pipeline fixture's pii_secret


def live_pids(pipeline: Pipeline, index: int) -> set[str]:
    return {doc["_sync"]["pid"] for doc in pipeline.staging(index).find(
        {"deleted": False, "_sync.pid": {"$exists": True}}, {"_sync": 1})}


def pids(documents: Any) -> set[str]:
    return {encode_id(doc["_id"]) for doc in documents}


def users_and_orders(tag: str, percent: float) -> list[dict[str, Any]]:
    return [
        collection_config("users", tag, business_key=["email"], subset={"percent": percent}),
        collection_config("orders", tag, business_key=["orderNo"],
                          references={"customerId": f"users_{tag}"},
                          subset={"follow": "customerId"}),
    ]


def closure_diff(pipeline: Pipeline, users: set[str], orders: set[str]
                 ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What staging holds live beyond or short of the expected closure (empty when equal)."""
    return (tuple(sorted(live_pids(pipeline, 0) ^ users)),
            tuple(sorted(live_pids(pipeline, 1) ^ orders)))


def expected_closure(pipeline: Pipeline, percent: float) -> tuple[set[str], set[str]]:
    users = {pid for pid in pids(pipeline.prod(0).find({}, {"_id": 1}))
             if in_sample(pid, percent, SECRET)}
    orders = {encode_id(order["_id"]) for order in pipeline.prod(1).find({})
              if encode_id(order["customerId"]) in users}
    return users, orders


def test_a_sample_of_users_and_the_orders_that_follow_them(pipeline_factory: Any) -> None:
    tag = str(ObjectId())[-8:]
    pipeline: Pipeline = pipeline_factory(users_and_orders(tag, 20))
    pipeline.start_watcher()
    pipeline.start_worker(concurrency=2)
    pipeline.wait_streaming(index=1)
    users = pipeline.prod(0).insert_many([{"email": f"u{i}@x"} for i in range(60)]).inserted_ids
    pipeline.prod(1).insert_many([{"orderNo": i, "customerId": users[i % 60], "total": i}
                                  for i in range(180)])
    want_users, want_orders = expected_closure(pipeline, 20)
    assert 0 < len(want_users) < 60
    wait_for(lambda: closure_diff(pipeline, want_users, want_orders) == ((), ()), TIMEOUT,
             "staging holds exactly the closure", pipeline, interval=0.5)
    # Nothing of a document outside the subset reached staging.
    outside = {encode_id(u) for u in users} - want_users
    assert not any(doc.get("email") for doc in pipeline.staging(0).find(
        {"_sync.pid": {"$in": sorted(outside)}}))
    name = f"orders_{tag}"
    assert pipeline.cli("verify", name).returncode == 0
    assert pipeline.cli("verify", f"users_{tag}").returncode == 0
    # An order outside the subset waits for no copy: nothing is left pending.
    assert pending_count(pipeline.state(), name) == 0
    # `status` gives staging's size (soft-deleted copies included) beside production's.
    status = pipeline.cli("status", "--json")
    sizes = {row["collection"]: row["documents"]
             for row in json.loads(status.stdout)["collections"]}
    assert sizes[f"users_{tag}"] == {"production_estimate": 60,
                                     "staging_estimate": pipeline.staging(0).count_documents({})}
    assert sizes[name]["production_estimate"] == 180
    assert sizes[name]["staging_estimate"] == pipeline.staging(1).count_documents({})
    # Children are read by the followed path when a parent enters: `check` asks for an index.
    missing = "has no index on 'customerId'"
    assert missing in " ".join(pipeline.cli("check").stdout.split())
    pipeline.prod(1).create_index("customerId")
    assert missing not in " ".join(pipeline.cli("check").stdout.split())
    # A member order whose user's copy is gone from staging breaks the closure: verify says so.
    member = next(iter(want_orders))
    user_pid = encode_id(pipeline.prod(1).find_one({"_id": decode_id(member)})["customerId"])
    pipeline.staging(0).update_one({"_sync.pid": user_pid}, {"$set": {"deleted": True}})
    broken = pipeline.cli("verify", name, "--settle", "0")
    assert broken.returncode == 1 and "subset closure" in broken.stdout, broken.stdout
    pipeline.staging(0).update_one({"_sync.pid": user_pid}, {"$set": {"deleted": False}})

    # (d) A resync of the subset into an empty staging gives the same state as streaming.
    streamed = (live_pids(pipeline, 0), live_pids(pipeline, 1))
    for index in (0, 1):
        pipeline.staging(index).delete_many({})
    for collection in (f"users_{tag}", name):
        done = pipeline.cli("resync", collection, "--wait", "--timeout", "120")
        assert done.returncode == 0, done.stdout + done.stderr
    wait_for(lambda: (live_pids(pipeline, 0), live_pids(pipeline, 1)) == streamed, TIMEOUT,
             "resync equals streaming", pipeline, interval=0.5)


def test_a_parent_moving_in_and_out_of_the_filter_brings_and_removes_its_children(
    pipeline_factory: Any,
) -> None:
    tag = str(ObjectId())[-8:]
    pipeline: Pipeline = pipeline_factory([
        collection_config("accounts", tag, business_key=["code"], filter={"region": "eu"}),
        collection_config("orders", tag, business_key=["orderNo"],
                          references={"accountId": f"accounts_{tag}"},
                          subset={"follow": "accountId"}),
    ])
    pipeline.start_watcher()
    pipeline.start_worker(concurrency=2)
    pipeline.wait_streaming(index=1)
    eu = pipeline.prod(0).insert_one({"code": "A", "region": "eu"}).inserted_id
    us = pipeline.prod(0).insert_one({"code": "B", "region": "us"}).inserted_id
    eu_orders = pids({"_id": i} for i in pipeline.prod(1).insert_many(
        [{"orderNo": i, "accountId": eu} for i in range(5)]).inserted_ids)
    us_orders = pids({"_id": i} for i in pipeline.prod(1).insert_many(
        [{"orderNo": 100 + i, "accountId": us} for i in range(5)]).inserted_ids)
    wait_for(lambda: live_pids(pipeline, 1) == eu_orders, TIMEOUT, "eu orders only", pipeline)

    pipeline.prod(0).update_one({"_id": us}, {"$set": {"region": "eu"}})
    wait_for(lambda: live_pids(pipeline, 1) == eu_orders | us_orders, TIMEOUT,
             "the moved account brings its orders", pipeline)
    pipeline.prod(0).update_one({"_id": us}, {"$set": {"region": "us"}})
    wait_for(lambda: live_pids(pipeline, 1) == eu_orders, TIMEOUT,
             "moving back soft-deletes them", pipeline)
    staged = pipeline.staging(1).find_one({"_sync.pid": sorted(us_orders)[0]})
    assert staged is not None and staged["deleted"] is True

    # A child whose reference moves to another parent is re-evaluated.
    moved = sorted(eu_orders)[0]
    pipeline.prod(1).update_one({"_id": ObjectId(moved.split('"')[3])},
                                {"$set": {"accountId": us}})
    wait_for(lambda: moved not in live_pids(pipeline, 1), TIMEOUT, "child moved out", pipeline)
    assert pipeline.cli("verify", f"orders_{tag}").returncode == 0


def test_a_three_level_chain(pipeline_factory: Any) -> None:
    tag = str(ObjectId())[-8:]
    payments = collection_config("payments", tag, business_key=["paymentNo"],
                                 references={"orderId": f"orders_{tag}"},
                                 subset={"follow": "orderId"})
    configs = [*users_and_orders(tag, 50), payments]
    pipeline: Pipeline = pipeline_factory(configs)
    pipeline.start_watcher()
    pipeline.start_worker(concurrency=2)
    pipeline.wait_streaming(index=2)
    users = pipeline.prod(0).insert_many([{"email": f"u{i}@x"} for i in range(20)]).inserted_ids
    orders = pipeline.prod(1).insert_many([{"orderNo": i, "customerId": users[i % 20]}
                                           for i in range(40)]).inserted_ids
    pipeline.prod(2).insert_many([{"paymentNo": i, "orderId": orders[i % 40]}
                                  for i in range(80)])
    want_users, want_orders = expected_closure(pipeline, 50)
    want_payments = {encode_id(p["_id"]) for p in pipeline.prod(2).find({})
                     if encode_id(p["orderId"]) in want_orders}
    wait_for(lambda: (live_pids(pipeline, 0), live_pids(pipeline, 1), live_pids(pipeline, 2))
             == (want_users, want_orders, want_payments), TIMEOUT, "three-level closure",
             pipeline, interval=0.5)
    # A user leaving (deleted in production) takes its orders and their payments along.
    leaving = next(u for u in users if encode_id(u) in want_users)
    pipeline.prod(0).delete_one({"_id": leaving})
    gone_orders = {encode_id(o["_id"]) for o in pipeline.prod(1).find({"customerId": leaving})}
    gone_payments = {encode_id(p["_id"]) for p in pipeline.prod(2).find(
        {"orderId": {"$in": [o["_id"] for o in pipeline.prod(1).find({"customerId": leaving})]}})}
    wait_for(lambda: live_pids(pipeline, 2) == want_payments - gone_payments
             and live_pids(pipeline, 1) == want_orders - gone_orders, TIMEOUT,
             "the chain follows a deleted user", pipeline, interval=0.5)
    assert pipeline.cli("verify", f"payments_{tag}").returncode == 0
