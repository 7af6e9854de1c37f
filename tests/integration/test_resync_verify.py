"""Full resync, gap-free bootstrap, subsets and `stagesync verify`, with real processes."""

from __future__ import annotations

import threading
import time
from typing import Any

from bson import ObjectId
from stagesync.rules.identity import encode_id

from tests.support.pipeline import Pipeline, collection_config, wait_for

TIMEOUT = 60


def orders(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"userEmail": f"user{i}@corp.test", "accountId": i % 7, "total": i,
             "customer": {"name": f"N{i}", "city": "Oslo"}} for i in range(start, start + count)]


def verify(pipeline: Pipeline, *args: str) -> Any:
    return pipeline.cli("verify", pipeline.collections[0]["name"], "--settle", "10", *args)


def test_bootstrap_copies_existing_documents_and_streams_without_gap(pipeline: Pipeline) -> None:
    prod = pipeline.prod()
    prod.insert_many(orders(1500))
    pipeline.start_worker()
    pipeline.start_watcher()
    # Writes while the bootstrap resync runs: the stream was opened before the copy started.
    for i in range(30):
        prod.update_one({"userEmail": f"user{i}@corp.test"}, {"$set": {"total": -i}})
    prod.insert_many(orders(20, start=5000))
    prod.delete_one({"userEmail": "user100@corp.test"})
    wait_for(lambda: verify(pipeline).returncode == 0, TIMEOUT, "verify equal", pipeline,
             interval=1.0)
    name = pipeline.collections[0]["name"]
    record = wait_for(lambda: (r := pipeline.state()["watchers"].find_one({"_id": name}))
                      and r.get("lastResync") and r, TIMEOUT, "bootstrap resync noted", pipeline)
    assert record["resyncPending"] is None
    resync = pipeline.state()["resyncs"].find_one({"_id": record["lastResync"]})
    assert resync["state"] == "done"
    # The stream may reach an updated (30) or deleted (1) document before the copy does:
    # the copy then finds it current or superseded, not absent. And a chunk whose message
    # Redis handed on (its first run outlived the visibility timeout on a loaded machine)
    # finds its own copies already there: unchanged. Every document is accounted for once.
    summary = resync["summary"]
    assert summary["created"] > 0, summary
    assert summary["created"] + summary["unchanged"] >= 1500 - 31, summary
    accounted = sum(summary.get(k, 0) for k in ("created", "updated", "unchanged", "superseded"))
    assert accounted >= 1499, summary


def test_resync_repairs_stale_staging_and_leaves_qa_documents_alone(
    pipeline: Pipeline,
) -> None:
    prod, staging = pipeline.prod(), pipeline.staging()
    prod.insert_many(orders(600))
    pipeline.start_worker()
    pipeline.start_watcher()
    wait_for(lambda: verify(pipeline).returncode == 0, TIMEOUT, "initial sync", pipeline,
             interval=1.0)
    watcher = pipeline.procs[-1]
    watcher.terminate()

    # Drift while nobody watches: staging restored from an old backup (documents lost,
    # fields edited), QA-only documents added, production deletes and inserts meanwhile.
    staging.delete_many({"accountId": {"$eq": 3}})
    staging.update_many({"accountId": {"$eq": 4}}, {"$set": {"total": -1, "qaNotes": "qa"}})
    qa_ids = staging.insert_many([{"qaFixture": i} for i in range(5)]).inserted_ids
    deleted = [d["_id"] for d in prod.find({"accountId": {"$eq": 5}}, {"_id": 1})]
    prod.delete_many({"_id": {"$in": deleted}})
    prod.insert_many(orders(50, start=9000))
    drifted = pipeline.cli("verify", pipeline.collections[0]["name"], "--settle", "0")
    assert drifted.returncode == 1, drifted.stdout
    assert "missing in staging" in drifted.stdout and "different fields" in drifted.stdout

    done = pipeline.cli("resync", pipeline.collections[0]["name"], "--wait", "--timeout", "120")
    assert done.returncode == 0, done.stdout + done.stderr + pipeline.logs()
    assert "created" in done.stdout and "soft-deleted" in done.stdout
    result = verify(pipeline)
    assert result.returncode == 0, result.stdout
    for qa_id, i in zip(qa_ids, range(5), strict=True):
        assert staging.find_one({"_id": qa_id}) == {"_id": qa_id, "qaFixture": i}
    assert staging.count_documents({"qaNotes": "qa"}) > 0  # staging-only fields survived
    gone = list(staging.find({"_sync.pid": {"$in": [encode_id(i) for i in deleted]}}))
    assert len(gone) == len(deleted) and all(d["deleted"] is True for d in gone)


def test_changes_during_a_resync_win_over_its_copy(pipeline: Pipeline) -> None:
    prod = pipeline.prod()
    prod.insert_many(orders(2000))
    pipeline.start_worker(concurrency=2)
    pipeline.start_watcher()
    pipeline.wait_streaming()
    wait_for(lambda: verify(pipeline).returncode == 0, TIMEOUT, "bootstrap", pipeline,
             interval=1.0)
    stop = threading.Event()
    written: list[ObjectId] = []

    def writer() -> None:
        i = 0
        while not stop.is_set() and i < 400:
            prod.update_one({"userEmail": f"user{i % 2000}@corp.test"},
                            {"$set": {"total": 10_000 + i}})
            if i % 20 == 0:
                written.append(prod.insert_one(orders(1, start=20_000 + i)[0]).inserted_id)
            i += 1
            time.sleep(0.005)

    thread = threading.Thread(target=writer)
    thread.start()
    resync = pipeline.cli("resync", pipeline.collections[0]["name"], "--wait", "--timeout", "120")
    stop.set()
    thread.join()
    assert resync.returncode == 0, resync.stdout + resync.stderr
    wait_for(lambda: verify(pipeline).returncode == 0, TIMEOUT, "verify after live resync",
             pipeline, interval=1.0)
    for inserted in written:  # inserted during the resync: never swept
        doc = pipeline.staging().find_one({"_sync.pid": {"$eq": encode_id(inserted)}})
        assert doc is not None and doc["deleted"] is False


def test_mixed_id_types_and_subset_filter(pipeline_factory: Any) -> None:
    pipeline: Pipeline = pipeline_factory(
        [collection_config("orders", filter={"region": {"$in": ["eu", "uk"]}},
                           resync_chunk_size=10)]
    )
    prod = pipeline.prod()
    documents = []
    # Three type brackets, numbers past 9 (which sort after 2 as numbers, not as text): the
    # resync cuts chunks per type bracket in the server's order.
    ids: list[Any] = [*range(12), *(f"s{i}" for i in range(10)),
                      *(ObjectId() for _ in range(10))]
    for i, _id in enumerate(ids):
        documents.append({"_id": _id, "userEmail": f"m{i}@corp.test", "accountId": 1,
                          "region": "eu" if i % 3 else "us"})
    prod.insert_many(documents)
    pipeline.start_worker()
    pipeline.start_watcher()
    expected = sum(1 for d in documents if d["region"] == "eu")
    wait_for(lambda: len(pipeline.live_staging()) == expected, TIMEOUT,
             "every matching document of every _id type", pipeline)
    assert not any(d.get("region") == "us" for d in pipeline.live_staging())

    # A document that stops matching the filter is soft-deleted; one that starts, appears.
    prod.update_one({"_id": 10}, {"$set": {"region": "us"}})
    prod.update_one({"_id": "s0"}, {"$set": {"region": "uk"}})
    wait_for(lambda: (pipeline.staging().find_one({"_sync.pid": {"$eq": encode_id(10)}})
                      or {}).get("deleted") is True, TIMEOUT, "left the subset", pipeline)
    wait_for(lambda: (pipeline.staging().find_one({"_sync.pid": {"$eq": encode_id("s0")}})
                      or {}).get("deleted") is False, TIMEOUT, "joined the subset", pipeline)
    result = verify(pipeline)
    assert result.returncode == 0, result.stdout
