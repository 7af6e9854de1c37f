"""The benchmark's "limit" baseline applies what its stream has, also under a steady trickle.

A getMore on a change stream waits for new events (up to the server's maxAwaitTimeMS, 1 s by
default on MongoDB) and returns as soon as one arrives. A loop that reads "until the stream
comes up empty" therefore never stops under a trickle of one change every 50 ms: the baseline
held every change until the writes stopped, and its steady-state lag was the whole run.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from pymongo import MongoClient

from bench.limit_copy import run
from tests.support.backends import MongoPair


def test_changes_reach_staging_while_a_trickle_of_writes_goes_on(mongo_pair: MongoPair) -> None:
    tag = uuid.uuid4().hex[:8]
    prod_client: MongoClient[dict[str, Any]] = MongoClient(mongo_pair.prod_uri)
    staging_client: MongoClient[dict[str, Any]] = MongoClient(mongo_pair.staging_uri)
    prod = prod_client[f"limit_{tag}"]["orders"]
    staging = staging_client[f"limit_{tag}"]["orders"]
    stop = threading.Event()
    ready = threading.Event()
    follower = threading.Thread(target=run, args=(prod, staging, stop),
                                kwargs={"on_ready": ready.set}, daemon=True)
    follower.start()
    try:
        assert ready.wait(30), "the baseline never opened its change stream"
        first = prod.insert_one({"n": 0}).inserted_id
        seen_during_trickle = False
        deadline = time.monotonic() + 4.0
        n = 1
        while time.monotonic() < deadline:  # one write every 50 ms: never a 1-second gap
            prod.insert_one({"n": n})
            n += 1
            if staging.find_one({"_id": first}) is not None:
                seen_during_trickle = True
                break
            time.sleep(0.05)
        assert seen_during_trickle, "the first change waited for the trickle to end"
    finally:
        stop.set()
        follower.join(15)
        prod_client.drop_database(f"limit_{tag}")
        staging_client.drop_database(f"limit_{tag}")
        prod_client.close()
        staging_client.close()
