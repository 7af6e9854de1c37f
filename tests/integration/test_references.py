"""References between collections (users, products, orders) survive the sync.

Copies created by the sync keep production's `_id` where staging has it free; declared
reference paths are written as the staging `_id` of the referenced copy, whatever way that copy
came to be (created, adopted, revived, or given a new `_id` because production's was taken);
a reference written before its target exists is rewritten when the target arrives.
"""

from __future__ import annotations

import json
from typing import Any

from bson import ObjectId
from stagesync.rules.identity import encode_id

from tests.support.pipeline import Pipeline, collection_config, wait_for

TIMEOUT = 60


def configs(tag: str) -> list[dict[str, Any]]:
    return [
        collection_config("users", tag, business_key=["email"]),
        collection_config("products", tag, business_key=["sku"]),
        collection_config("orders", tag, business_key=["orderNo"],
                          references={"customerId": f"users_{tag}",
                                      "lines.productId": f"products_{tag}",
                                      "giftFor": f"users_{tag}"}),
    ]


def copy_of(pipeline: Pipeline, index: int, production_id: Any) -> dict[str, Any] | None:
    return pipeline.staging(index).find_one({"_sync.pid": encode_id(production_id)})


def resolved(pipeline: Pipeline) -> bool:
    """Every staging order's references lead to the staging copy with the business key of
    production's target."""
    users, products, orders = (pipeline.staging(i) for i in range(3))
    for order in pipeline.prod(2).find({}):
        staged = copy_of(pipeline, 2, order["_id"])
        if staged is None:
            return False
        target = users.find_one({"_id": staged["customerId"]})
        customer = pipeline.prod(0).find_one({"_id": order["customerId"]})
        if target is None or customer is None or target.get("email") != customer["email"]:
            return False
        for staged_line, line in zip(staged["lines"], order["lines"], strict=True):
            product = products.find_one({"_id": staged_line["productId"]})
            source = pipeline.prod(1).find_one({"_id": line["productId"]})
            if product is None or source is None or product.get("sku") != source["sku"]:
                return False
        gifts = [users.find_one({"_id": value}) for value in staged["giftFor"]]
        if any(gift is None for gift in gifts):
            return False
    return orders.count_documents({}) == pipeline.prod(2).count_documents({})


def test_references_resolve_to_the_right_staging_documents(pipeline_factory: Any) -> None:
    tag = ObjectId().__str__()[-8:]
    pipeline: Pipeline = pipeline_factory(configs(tag))
    users, products, orders = (pipeline.prod(i) for i in range(3))
    staging_users, staging_products = pipeline.staging(0), pipeline.staging(1)

    # Staging already has: a user under its own `_id` (adopted by key), and a QA fixture that
    # holds the `_id` a production product will have.
    adopted_id = staging_users.insert_one({"email": "adopted@x", "qa": True}).inserted_id
    late_adopted_id = staging_users.insert_one({"email": "late@x", "qa": True}).inserted_id
    taken = ObjectId()
    staging_products.insert_one({"_id": taken, "qaFixture": True})

    pipeline.start_watcher()
    pipeline.start_worker(concurrency=2)
    pipeline.wait_streaming(index=2)

    # An order written before its customer exists in production.
    early_customer = ObjectId()
    p1 = products.insert_one({"sku": "P-1", "name": "one"}).inserted_id
    p2 = products.insert_one({"_id": taken, "sku": "P-2", "name": "two"}).inserted_id
    orders.insert_one({"orderNo": 1, "customerId": early_customer, "giftFor": [],
                       "lines": [{"productId": p1, "qty": 1}, {"productId": p2, "qty": 2}]})
    users.insert_one({"_id": early_customer, "email": "early@x"})
    # An order written before its customer, whose copy will be an adopted one: the order is
    # applied with production's value first, then rewritten when the customer is adopted.
    late_customer = ObjectId()
    late_order = orders.insert_one({"orderNo": 4, "customerId": late_customer, "giftFor": [],
                                    "lines": []}).inserted_id
    wait_for(lambda: copy_of(pipeline, 2, late_order), TIMEOUT, "order 4 copied", pipeline)
    users.insert_one({"_id": late_customer, "email": "late@x"})

    # An adopted user, and a user deleted and re-inserted (new production `_id`, revived copy).
    adopted = users.insert_one({"email": "adopted@x", "name": "A"}).inserted_id
    first = users.insert_one({"email": "revived@x"}).inserted_id
    orders.insert_one({"orderNo": 2, "customerId": adopted, "giftFor": [first, adopted],
                       "lines": [{"productId": p2, "qty": 5}]})
    wait_for(lambda: (copy_of(pipeline, 0, first) or {}).get("email") == "revived@x",
             TIMEOUT, "revived@x copied", pipeline)
    users.delete_one({"_id": first})
    wait_for(lambda: (copy_of(pipeline, 0, first) or {}).get("deleted") is True,
             TIMEOUT, "revived@x soft-deleted", pipeline)
    second = users.insert_one({"email": "revived@x"}).inserted_id
    orders.insert_one({"orderNo": 3, "customerId": second, "giftFor": [second],
                       "lines": [{"productId": p1, "qty": 1}]})

    wait_for(lambda: resolved(pipeline), TIMEOUT, "every reference resolved", pipeline,
             interval=0.5)

    # Copies created by the sync carry production's `_id`; adopted, revived and taken ones
    # keep their staging `_id`, and the references point there.
    assert copy_of(pipeline, 0, early_customer)["_id"] == early_customer
    assert copy_of(pipeline, 1, p1)["_id"] == p1
    assert copy_of(pipeline, 0, adopted)["_id"] == adopted_id
    assert copy_of(pipeline, 0, second)["_id"] == first
    moved = copy_of(pipeline, 1, p2)
    assert moved["_id"] != taken and staging_products.find_one({"_id": taken})["qaFixture"]
    order2 = copy_of(pipeline, 2, orders.find_one({"orderNo": 2})["_id"])
    assert order2["customerId"] == adopted_id and order2["lines"][0]["productId"] == moved["_id"]
    assert order2["giftFor"] == [first, adopted_id]
    order3 = copy_of(pipeline, 2, orders.find_one({"orderNo": 3})["_id"])
    assert order3["customerId"] == first and order3["giftFor"] == [first]
    assert copy_of(pipeline, 2, late_order)["customerId"] == late_adopted_id

    name = f"orders_{tag}"
    assert pipeline.cli("verify", name).returncode == 0
    status = json.loads(pipeline.cli("status", "--json").stdout)
    row = next(r for r in status["collections"] if r["collection"] == name) if isinstance(
        status, dict) else next(r for r in status if r["collection"] == name)
    assert row["pending_references"] == 0

    # A reference corrupted by hand is caught by verify.
    pipeline.staging(2).update_one({"_id": order2["_id"]}, {"$set": {"customerId": ObjectId()}})
    broken = pipeline.cli("verify", name, "--settle", "0")
    assert broken.returncode == 1
    assert "dangling references at customerId" in broken.stdout
