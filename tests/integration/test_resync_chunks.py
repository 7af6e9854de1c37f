"""Full resync by `_id` range chunks, with real workers: every `_id` type copied exactly once,
a worker killed halfway costs no finished chunk, a live stream writing into the same
documents still ends with staging equal to production, and a copy of ObjectIds sweeps
staging as it goes (no sweep phase) unless a copy of another `_id` type needs one."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from bson import Binary, Decimal128, Int64, MaxKey, MinKey, ObjectId, Timestamp
from stagesync.deployments.staging_indexes import DEFERRED
from stagesync.rules.id_ranges import IdRange
from stagesync.rules.identity import encode_id

from tests.support.pipeline import Pipeline, collection_config, wait_for

TIMEOUT = 120


def order(i: int, **extra: Any) -> dict[str, Any]:
    return {"userEmail": f"user{i}@corp.test", "accountId": i % 5, "total": i,
            "customer": {"name": f"N{i}", "city": "Oslo"}, **extra}


def mixed_ids() -> list[Any]:
    """Many brackets, several chunks in the big ones, single-value brackets too, and the
    `_id`s that sets and equality get wrong: NaN (not equal to itself), Decimal128 and
    embedded documents (unhashable), null (a falsy `_id` the copy once dropped)."""
    awkward: list[Any] = [float("nan"), Decimal128("99.125"), *({"part": i} for i in range(4))]
    return [
        MinKey(), None, *range(-20, 40), *(Int64(10**12 + i) for i in range(5)),
        *(i + 0.5 for i in range(5)), float("inf"), *(f"s{i:03d}" for i in range(45)),
        *(Binary(bytes([i, i]), 0) for i in range(4)), *(ObjectId() for _ in range(45)),
        False, True, *(datetime(2000 + i, 1, 1, tzinfo=UTC) for i in range(6)),
        *(Timestamp(100, i) for i in range(1, 4)), MaxKey(), *awkward,
    ]


def resync_record(pipeline: Pipeline, output: str) -> dict[str, Any]:
    resync_id = output.split("resync ", 1)[1].split()[0]
    record = pipeline.state()["resyncs"].find_one({"_id": resync_id})
    assert record is not None, output
    return record


def copies_by_pid(pipeline: Pipeline) -> Counter[str]:
    return Counter(doc["_sync"]["pid"] for doc in pipeline.staging().find({}, {"_sync": 1}))


def copy_mixed_ids(pipeline: Pipeline, ids: list[Any]) -> None:
    pipeline.prod().insert_many([order(n, _id=value) for n, value in enumerate(ids)])
    pipeline.start_worker()
    first = pipeline.cli("resync", pipeline.collections[0]["name"], "--wait", "--timeout",
                         str(TIMEOUT))
    assert first.returncode == 0, first.stdout + first.stderr + pipeline.logs()
    record = resync_record(pipeline, first.stdout)
    assert record["summary"]["created"] == len(ids)
    assert record["copy"]["planned"] > 5  # the brackets are cut into several chunks
    assert copies_by_pid(pipeline) == Counter(encode_id(value) for value in ids)
    totals = {encode_id(doc["_id"]): doc["total"] for doc in pipeline.prod().find({})}
    for document in pipeline.staging().find({}):
        assert document["total"] == totals[document["_sync"]["pid"]]
        assert document["deleted"] is False


def test_every_id_type_is_copied_exactly_once(pipeline_factory: Any) -> None:
    pipeline: Pipeline = pipeline_factory([collection_config("orders", resync_chunk_size=10)])
    copy_mixed_ids(pipeline, mixed_ids())


def test_a_second_resync_of_mixed_ids_changes_nothing(pipeline_factory: Any) -> None:
    pipeline: Pipeline = pipeline_factory([collection_config("orders", resync_chunk_size=10)])
    # Without the NaN `_id`: SecantusDB refuses every update of that document ("would modify
    # the immutable field '_id'", code 66: its check finds NaN unequal to itself), which
    # MongoDB accepts. The planner's side of NaN is covered in tests/unit/test_plan.py.
    ids = [value for value in mixed_ids() if value == value]
    copy_mixed_ids(pipeline, ids)
    name = pipeline.collections[0]["name"]
    # Into an already-synced staging: nothing created, nothing duplicated, nothing swept.
    again = pipeline.cli("resync", name, "--wait", "--timeout", str(TIMEOUT))
    assert again.returncode == 0, again.stdout + again.stderr + pipeline.logs()
    summary = resync_record(pipeline, again.stdout)["summary"]
    assert summary["created"] == 0 and summary["soft_deleted"] == 0
    assert summary["unchanged"] == len(ids), str(summary)
    assert copies_by_pid(pipeline) == Counter(encode_id(value) for value in ids)
    verify = pipeline.cli("verify", name, "--settle", "0")
    assert verify.returncode == 0, verify.stdout


@pytest.mark.slow  # waits for Redis to hand the killed worker's messages on (visibility timeout)
def test_a_resync_killed_halfway_finishes_after_a_restart_without_redoing_finished_chunks(
    pipeline_factory: Any,
) -> None:
    # Slowed by the collection's rate limit so that the kill lands halfway. The shortest
    # visibility timeout allowed: Redis hands the killed worker's messages on after it.
    pipeline: Pipeline = pipeline_factory(
        [collection_config("orders", resync_chunk_size=50, rate_limit="150/s")],
        worker={"visibility_timeout_seconds": 10, "task_time_limit_seconds": 8})
    prod, staging, state = pipeline.prod(), pipeline.staging(), pipeline.state()
    prod.insert_many([order(i) for i in range(1600)])
    worker = pipeline.start_worker()
    name = pipeline.collections[0]["name"]
    started = pipeline.cli("resync", name)
    assert started.returncode == 0, started.stdout + started.stderr
    resync_id = resync_record(pipeline, started.stdout)["_id"]

    def chunks(wanted: str) -> list[dict[str, Any]]:
        return list(state["resyncs"].find({"resync": resync_id, "phase": "copy",
                                           "state": wanted}))

    finished = wait_for(lambda: len(chunks("done")) >= 2 and chunks("done"), TIMEOUT,
                        "two finished chunks", pipeline)
    worker.kill()
    record = state["resyncs"].find_one({"_id": resync_id})
    assert record["state"] == "applying", "the kill must land before the copy ends"
    # What the finished chunks wrote, to prove that nothing redoes them.
    versions = {doc["_sync"]["pid"]: doc["_sync"]["v"] for doc in staging.find({}, {"_sync": 1})}
    finished_ids = {chunk["_id"]: chunk["finishedAt"] for chunk in finished}

    pipeline.start_worker()
    done = wait_for(lambda: (r := state["resyncs"].find_one({"_id": resync_id}))
                    and r["state"] in ("done", "failed") and r, TIMEOUT + 60,
                    "the resync finished after the restart", pipeline, interval=0.5)
    assert done["state"] == "done", done.get("error")
    for chunk_id, finished_at in finished_ids.items():
        assert state["resyncs"].find_one({"_id": chunk_id})["finishedAt"] == finished_at
    redone = []
    for chunk in finished:
        for document in prod.find(IdRange(chunk["lo"], chunk.get("hi")).query(), {"_id": 1}):
            pid = encode_id(document["_id"])
            now = staging.find_one({"_sync.pid": pid}, {"_sync": 1})
            if now["_sync"]["v"] != versions[pid]:
                redone.append(pid)
    assert not redone, f"{len(redone)} documents of finished chunks were written again"
    assert copies_by_pid(pipeline) == Counter(
        encode_id(d["_id"]) for d in prod.find({}, {"_id": 1}))
    verify = pipeline.cli("verify", name, "--settle", "0")
    assert verify.returncode == 0, verify.stdout


def streaming_pipeline(pipeline_factory: Any) -> tuple[Pipeline, LiveWriter]:
    """1,500 orders, a worker and a watcher, and the writer to start during a resync."""
    # The resync is slow here (SecantusDB, 2 cores shared with the stream's applies): the
    # watcher must not take a pause for a stall and start another one.
    pipeline: Pipeline = pipeline_factory([collection_config("orders", resync_chunk_size=100)],
                                          status={"stalled_after_seconds": 120})
    prod = pipeline.prod()
    ids = prod.insert_many([order(i) for i in range(1500)]).inserted_ids
    pipeline.start_worker()
    pipeline.start_watcher()
    return pipeline, LiveWriter(prod, ids)


def test_a_bootstrap_resync_with_a_live_stream_on_the_same_documents_ends_equal(
    pipeline_factory: Any,
) -> None:
    # No checkpoint: the watcher opens the stream, then resyncs into the empty staging.
    pipeline, writes = streaming_pipeline(pipeline_factory)
    name = pipeline.collections[0]["name"]
    state = pipeline.state()
    # Writes start once the resync has looked at staging (empty: its copies skip the staging
    # read and race the stream's inserts) and run until it is done.
    pending = wait_for(lambda: (r := state["watchers"].find_one({"_id": name}))
                       and r.get("resyncPending"), TIMEOUT, "the bootstrap resync", pipeline)
    wait_for(lambda: (state["resyncs"].find_one({"_id": pending}) or {}).get("state")
             != "planning", TIMEOUT, "the resync set up", pipeline)
    with writes:
        wait_for(lambda: (state["resyncs"].find_one({"_id": pending}) or {}).get("state")
                 in ("done", "failed"), TIMEOUT, "the bootstrap resync", pipeline,
                 interval=0.2)
        during = sum(writes.counts.values())
    resync = state["resyncs"].find_one({"_id": pending})
    assert resync["state"] == "done" and resync["emptyStart"] is True
    # The copy loaded before it built the purge and TTL indexes, the stream applying
    # meanwhile; they exist once it is done.
    assert resync["indexesAfter"] is True
    assert {index["name"] for index in pipeline.staging().list_indexes()} >= DEFERRED
    assert during > 30, writes.counts  # the stream wrote while the resync copied
    writes.check_staging(pipeline, name)


def test_a_resync_into_a_synced_staging_with_a_live_stream_ends_equal(
    pipeline_factory: Any,
) -> None:
    """The copy sweeps its spans while the stream deletes, inserts and updates."""
    pipeline, writes = streaming_pipeline(pipeline_factory)
    name = pipeline.collections[0]["name"]
    wait_for(lambda: pipeline.cli("verify", name, "--settle", "5").returncode == 0, TIMEOUT,
             "the bootstrap", pipeline, interval=1.0)
    with writes:
        done = pipeline.cli("resync", name, "--wait", "--timeout", str(TIMEOUT))
        during = sum(writes.counts.values())
    assert done.returncode == 0, done.stdout + done.stderr + pipeline.logs()
    record = resync_record(pipeline, done.stdout)
    assert record["foldsSweep"] is True and record["emptyStart"] is False
    assert during > 30, writes.counts
    writes.check_staging(pipeline, name)


def test_a_resync_of_object_ids_sweeps_staging_as_it_copies(pipeline_factory: Any) -> None:
    pipeline: Pipeline = pipeline_factory([collection_config("orders", resync_chunk_size=10)])
    prod = pipeline.prod()
    ids = prod.insert_many([order(i) for i in range(95)]).inserted_ids  # ascending ObjectIds
    pipeline.start_worker()
    name = pipeline.collections[0]["name"]
    first = pipeline.cli("resync", name, "--wait", "--timeout", str(TIMEOUT))
    assert first.returncode == 0, first.stdout + first.stderr + pipeline.logs()
    # Gone while no watcher ran: below the first chunk, inside chunks, above the last one.
    gone = [ids[0], ids[1], ids[10], ids[11], ids[12], ids[47], ids[93], ids[94]]
    prod.delete_many({"_id": {"$in": gone}})
    # Its pid is an ObjectId older than any in production: below every span but the first's.
    pipeline.staging().insert_one({"userEmail": "old@corp.test", "accountId": 1, "_sync": {
        **pipeline.staging().find_one({"_sync.pid": encode_id(ids[2])})["_sync"],
        "pid": encode_id(ObjectId("000000010000000000000000")), "key": "a stale key"}})

    again = pipeline.cli("resync", name, "--wait", "--timeout", str(TIMEOUT))
    assert again.returncode == 0, again.stdout + again.stderr + pipeline.logs()
    record = resync_record(pipeline, again.stdout)
    assert record["summary"]["soft_deleted"] == len(gone) + 1, record["summary"]
    assert record["summary"]["unchanged"] == len(ids) - len(gone)
    assert record["copy"]["planned"] > 2
    resyncs = pipeline.state()["resyncs"]
    assert resyncs.count_documents({"resync": record["_id"], "phase": "sweep"}) == 0
    staging = pipeline.staging()
    for production_id in gone:
        assert staging.find_one({"_sync.pid": encode_id(production_id)})["deleted"] is True
    assert staging.count_documents({"deleted": False}) == len(ids) - len(gone)
    verify = pipeline.cli("verify", name, "--settle", "0")
    assert verify.returncode == 0, verify.stdout


def test_a_span_mostly_gone_from_production_is_left_to_the_sweep_phase(
    pipeline_factory: Any,
) -> None:
    """More stale copies beside a batch than in it are not held in memory: the chunk leaves
    its span to the sweep phase, which pages, and they are soft-deleted all the same."""
    pipeline: Pipeline = pipeline_factory([collection_config("orders", resync_chunk_size=10)])
    prod = pipeline.prod()
    ids = prod.insert_many([order(i) for i in range(95)]).inserted_ids
    pipeline.start_worker()
    name = pipeline.collections[0]["name"]
    first = pipeline.cli("resync", name, "--wait", "--timeout", str(TIMEOUT))
    assert first.returncode == 0, first.stdout + first.stderr + pipeline.logs()
    gone = ids[20:60]  # one batch's span holds them all
    prod.delete_many({"_id": {"$in": gone}})

    again = pipeline.cli("resync", name, "--wait", "--timeout", str(TIMEOUT))
    assert again.returncode == 0, again.stdout + again.stderr + pipeline.logs()
    record = resync_record(pipeline, again.stdout)
    assert record["summary"]["soft_deleted"] == len(gone), record["summary"]
    resyncs = pipeline.state()["resyncs"]
    assert resyncs.count_documents({"resync": record["_id"], "phase": "copy",
                                    "unswept": True}) >= 1
    assert resyncs.count_documents({"resync": record["_id"], "phase": "sweep"}) >= 1
    assert pipeline.staging().count_documents({"deleted": False}) == len(ids) - len(gone)


def test_a_stale_copy_of_another_id_type_gets_the_sweep_phase(pipeline_factory: Any) -> None:
    pipeline: Pipeline = pipeline_factory([collection_config("orders", resync_chunk_size=10)])
    prod = pipeline.prod()
    prod.insert_many([order(i) for i in range(30)])
    prod.insert_one(order(99, _id=7))
    pipeline.start_worker()
    name = pipeline.collections[0]["name"]
    first = pipeline.cli("resync", name, "--wait", "--timeout", str(TIMEOUT))
    assert first.returncode == 0, first.stdout + first.stderr + pipeline.logs()
    prod.delete_one({"_id": 7})  # production now holds ObjectIds only

    again = pipeline.cli("resync", name, "--wait", "--timeout", str(TIMEOUT))
    assert again.returncode == 0, again.stdout + again.stderr + pipeline.logs()
    record = resync_record(pipeline, again.stdout)
    assert record["summary"]["soft_deleted"] == 1, record["summary"]
    resyncs = pipeline.state()["resyncs"]
    assert resyncs.count_documents({"resync": record["_id"], "phase": "sweep"}) >= 1
    assert pipeline.staging().find_one({"_sync.pid": encode_id(7)})["deleted"] is True


class LiveWriter:
    """Production's writes while a resync runs, as a stream of a live application: 80 %
    updates, 10 % deletes, 10 % inserts, every 20 ms, from a thread."""

    def __init__(self, prod: Any, ids: list[Any]) -> None:
        self.prod = prod
        self.live = list(ids)
        self.deleted: list[Any] = []
        self.inserted: list[Any] = []
        self.counts = Counter[str]()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._write, daemon=True)

    def __enter__(self) -> LiveWriter:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()

    def _write(self) -> None:
        rng = random.Random(7)
        while not self.stop.is_set():
            roll = rng.random()
            target = rng.choice(self.live)
            if roll < 0.8:
                self.prod.update_one({"_id": target}, {"$set": {
                    "total": rng.randint(1, 10**6), "status": rng.choice("abc")}})
                self.counts["update"] += 1
            elif roll < 0.9:
                self.prod.delete_one({"_id": target})
                self.live.remove(target)
                self.deleted.append(target)
                self.counts["delete"] += 1
            else:
                new = self.prod.insert_one(order(10_000 + len(self.inserted))).inserted_id
                self.live.append(new)
                self.inserted.append(new)
                self.counts["insert"] += 1
            time.sleep(0.02)

    def check_staging(self, pipeline: Pipeline, name: str) -> None:
        """Staging ends equal to production, each deleted document soft-deleted, each one
        inserted live, and no document with two live copies."""
        wait_for(lambda: pipeline.cli("verify", name, "--settle", "10").returncode == 0,
                 TIMEOUT, "staging equal to production", pipeline, interval=1.0)
        staging = pipeline.staging()
        for production_id in self.deleted:
            copy = staging.find_one({"_sync.pid": encode_id(production_id)})
            assert copy is None or copy["deleted"] is True
        # An inserted document may have been deleted again by the writer: it is in both lists.
        for production_id in set(self.inserted) - set(self.deleted):
            copy = staging.find_one({"_sync.pid": encode_id(production_id)})
            assert copy is not None and copy["deleted"] is False
        live = Counter(doc["_sync"]["pid"]
                       for doc in staging.find({"deleted": False}, {"_sync": 1}))
        assert max(live.values()) == 1


def test_bookkeeping_is_indexed_expires_and_counts_without_scanning(
    pipeline_factory: Any,
) -> None:
    pipeline: Pipeline = pipeline_factory([collection_config("orders", resync_chunk_size=10)])
    pipeline.prod().insert_many([order(i) for i in range(95)])
    pipeline.start_worker()
    done = pipeline.cli("resync", pipeline.collections[0]["name"], "--wait", "--timeout",
                        str(TIMEOUT))
    assert done.returncode == 0, done.stdout + done.stderr + pipeline.logs()
    record = resync_record(pipeline, done.stdout)
    resyncs = pipeline.state()["resyncs"]
    indexes = resyncs.index_information()
    assert indexes["stagesync_resync_chunks"]["key"][0] == ("resync", 1)
    assert indexes["stagesync_resyncs_ttl"]["expireAfterSeconds"] == 0
    chunks = list(resyncs.find({"resync": record["_id"]}))
    assert chunks and all(chunk.get("expireAt") for chunk in chunks)
    assert record["expireAt"] > record["finishedAt"]
    # Progress is one document's counters, equal to the exact per-chunk summary.
    assert record["docs"] == record["total"] == 95
    assert record["counts"]["created"] == record["summary"]["created"] == 95
    assert record["chunksDone"] == len(chunks)
    plan = resyncs.find({"resync": record["_id"], "phase": "copy", "state": "queued"}).explain()
    assert "stagesync_resync_chunks" in str(plan)
