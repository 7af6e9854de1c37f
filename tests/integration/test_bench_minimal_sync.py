"""The benchmark's "minimal sync" floor is a correct sync of the burst's operations.

Its figures are the floor every stagesync cost is divided by, so it must really do the work:
replace by business key (upsert) what production has, soft-delete what production lost, with
and without the product's index set and `_sync` sub-document (`minimal-idx`).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from pymongo import MongoClient
from stagesync.rules.identity import encode_id
from stagesync.rules.sync_meta import SYNC

from bench.minimal_sync import SOFT_DELETE_FIELD, prepare_staging, run
from bench.workload import BUSINESS_KEY, make_orders
from tests.support.backends import MongoPair


@pytest.mark.parametrize("product_indexes", [False, True])
def test_inserts_updates_and_deletes_reach_staging(mongo_pair: MongoPair,
                                                   product_indexes: bool) -> None:
    tag = uuid.uuid4().hex[:8]
    prod_client: MongoClient[dict[str, Any]] = MongoClient(mongo_pair.prod_uri)
    staging_client: MongoClient[dict[str, Any]] = MongoClient(mongo_pair.staging_uri)
    prod = prod_client[f"minimal_{tag}"]["orders"]
    # Another database name in staging: the product's settings refuse a mirrored namespace.
    staging = staging_client[f"minimal_staging_{tag}"]["orders"]
    docs = make_orders(30, seed=7)
    prod.insert_many([dict(d) for d in docs])
    prepare_staging(staging, prod.full_name, BUSINESS_KEY, docs, product_indexes)
    stop, ready = threading.Event(), threading.Event()
    follower = threading.Thread(target=run, args=(prod, staging, list(BUSINESS_KEY), stop),
                                kwargs={"product_indexes": product_indexes,
                                        "on_ready": ready.set}, daemon=True)
    follower.start()
    try:
        assert ready.wait(30), "the minimal sync never opened its change stream"
        new = make_orders(31, seed=8)[-1]
        prod.insert_one(dict(new))
        prod.update_one({"_id": docs[0]["_id"]}, {"$set": {"status": "shipped"}})
        prod.update_one({"_id": docs[0]["_id"]}, {"$set": {"status": "delivered"}})
        prod.delete_one({"_id": docs[1]["_id"]})

        def synced() -> bool:
            first = staging.find_one({"_id": docs[0]["_id"]}) or {}
            gone = staging.find_one({"_id": docs[1]["_id"]}) or {}
            return (staging.find_one({"_id": new["_id"]}) is not None
                    and first.get("status") == "delivered"
                    and gone.get(SOFT_DELETE_FIELD) is True)

        deadline = time.monotonic() + 30
        while not synced() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert synced()
        assert staging.count_documents({}) == 31  # the deleted one kept, soft-deleted
        copy = staging.find_one({"_id": new["_id"]})
        assert copy is not None
        assert {k: v for k, v in copy.items() if k != SYNC} == new
        if product_indexes:
            assert copy[SYNC]["pid"] == encode_id(new["_id"])
            names = set(staging.index_information())
            assert {"stagesync_pid", "stagesync_key", "stagesync_business_key"} <= names
        else:
            assert SYNC not in copy
    finally:
        stop.set()
        follower.join(15)
        prod_client.drop_database(f"minimal_{tag}")
        staging_client.drop_database(f"minimal_staging_{tag}")
        prod_client.close()
        staging_client.close()
