"""A resync into an empty staging loads before it builds the purge and TTL indexes
(`tasks.full_resync.indexes_after`): they exist when it is done, the business keys that
production gives two documents end as they always do (one copy, the others dead-lettered
`key_conflict`), a worker starting during the load leaves those indexes to it, and a load that
never built them is completed by the next resync. Real workers and servers."""

from __future__ import annotations

from collections import Counter
from typing import Any

from stagesync.deployments.staging import connect_staging
from stagesync.deployments.staging_indexes import DEFERRED, ensure_indexes
from stagesync.rules.identity import encode_id
from stagesync.state.resync_progress import (
    INDEXES_AFTER,
    begin_phase,
    loading,
    new_resync,
    phase_plan,
)

from tests.support.pipeline import Pipeline, collection_config

TIMEOUT = 120
# Positions in `_id` order that share one business key: far enough apart to fall in
# different batches of 20, so that the unique `_sync.key`, not a batch's own plan, decides.
SHARED = {5: "twice@corp.test", 150: "twice@corp.test",
          10: "thrice@corp.test", 90: "thrice@corp.test", 170: "thrice@corp.test"}


def order(i: int) -> dict[str, Any]:
    return {"_id": i, "userEmail": SHARED.get(i, f"user{i}@corp.test"), "accountId": 1,
            "total": i}


def index_names(pipeline: Pipeline) -> set[str]:
    return {str(index["name"]) for index in pipeline.staging().list_indexes()}


def resync(pipeline: Pipeline) -> dict[str, Any]:
    name = pipeline.collections[0]["name"]
    done = pipeline.cli("resync", name, "--wait", "--timeout", str(TIMEOUT))
    assert done.returncode == 0, done.stdout + done.stderr + pipeline.logs()
    resync_id = done.stdout.split("resync ", 1)[1].split()[0]
    record = pipeline.state()["resyncs"].find_one({"_id": resync_id})
    assert record is not None, done.stdout
    return record


def test_a_load_into_an_empty_staging_builds_its_indexes_and_keeps_keys_unique(
    pipeline_factory: Any,
) -> None:
    pipeline: Pipeline = pipeline_factory([collection_config("orders",
                                                             resync_chunk_size=20)])
    pipeline.prod().insert_many([order(i) for i in range(200)])
    pipeline.start_worker()
    record = resync(pipeline)
    assert record[INDEXES_AFTER] is True and record["state"] == "done"
    assert index_names(pipeline) >= DEFERRED
    staging = pipeline.staging()
    live = Counter(doc["userEmail"] for doc in staging.find({"deleted": False}))
    assert set(live.values()) == {1} and len(live) == 200 - 3  # one copy per business key
    name = pipeline.collections[0]["name"]
    dead = {entry["pid"]: entry["reason"]
            for entry in pipeline.state()["dead_letters"].find({"collection": name})}
    # The copies whose key was held went through the normal path: key conflicts.
    assert dead == dict.fromkeys([encode_id(i) for i in SHARED
                                  if staging.find_one({"_sync.pid": encode_id(i)}) is None],
                                 "key_conflict")
    assert len(dead) == 3
    # A second resync into the now synced staging changes nothing and builds nothing.
    again = resync(pipeline)
    assert again[INDEXES_AFTER] is False
    assert again["summary"]["created"] == 0 and again["summary"]["updated"] == 0


def test_a_worker_starting_during_a_load_leaves_the_deferred_indexes_to_it(
    pipeline: Pipeline,
) -> None:
    name = pipeline.collections[0]["name"]
    state = pipeline.state()
    staging = connect_staging(pipeline.settings.staging)
    try:
        resync_id = new_resync(state, name, "test")
        begin_phase(state, resync_id, "planning", "copy", phase_plan(1, [], encode_id),
                    {INDEXES_AFTER: True})
        assert loading(state, [name, "other"]) == {name}
        ensure_indexes(staging, pipeline.settings, loading=loading(state, [name]))
        names = index_names(pipeline)
        assert "stagesync_pid" in names and not DEFERRED & names
        # Past the copy (sweeping, done) the collection is no longer loading.
        state["resyncs"].update_one({"_id": resync_id}, {"$set": {"state": "sweeping"}})
        assert loading(state, [name]) == set()
        ensure_indexes(staging, pipeline.settings, loading=loading(state, [name]))
        assert index_names(pipeline) >= DEFERRED
    finally:
        staging.close()


def test_the_next_resync_completes_indexes_a_load_never_built(pipeline_factory: Any) -> None:
    """A load that failed before its build: the next resync's set-up builds them first."""
    pipeline: Pipeline = pipeline_factory([collection_config("orders")])
    pipeline.prod().insert_many([order(i) for i in range(30) if i not in SHARED])
    pipeline.start_worker()
    resync(pipeline)
    for index in DEFERRED:
        pipeline.staging().drop_index(index)
    record = resync(pipeline)
    assert record[INDEXES_AFTER] is False
    assert index_names(pipeline) >= DEFERRED
