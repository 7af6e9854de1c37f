"""Poison changes, dead-letter replay, standby watchers and graceful shutdown."""

from __future__ import annotations

import json
import time
from typing import Any

from stagesync.rules.identity import encode_id

from tests.support.pipeline import Pipeline, collection_config, wait_for

TIMEOUT = 60


def dead_letters(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    return {e["pid"]: e for e in pipeline.state()["dead_letters"].find({"state": "open"})}


def synced(pipeline: Pipeline, production_id: Any) -> dict[str, Any] | None:
    return pipeline.staging().find_one({"_sync.pid": {"$eq": encode_id(production_id)}})


def test_poison_change_is_isolated_dead_lettered_and_replayed_after_the_fix(
    pipeline_factory: Any,
) -> None:
    # A long in-flight timeout: on a loaded machine the watcher could otherwise re-publish the
    # poison's batch, whose apply after the fix below would resolve the entry before the replay
    # does (correct, but not what this test is about).
    pipeline: Pipeline = pipeline_factory([collection_config("orders")],
                                          worker={"max_retries": 2},
                                          watcher={"inflight_timeout_seconds": 600})
    # Staging has a rule of its own that production does not: unique `code`. Two production
    # documents sharing a code make the second write fail every time (a poison change).
    pipeline.staging().create_index("code", unique=True, name="qa_unique_code")
    prod = pipeline.prod()
    pipeline.start_worker()
    pipeline.start_watcher()
    pipeline.wait_bootstrapped()  # else the bootstrap copy may apply the poison (op "resync")
    first = prod.insert_one({"userEmail": "a@corp.test", "accountId": 1, "code": 7}).inserted_id
    wait_for(lambda: synced(pipeline, first), TIMEOUT, "first document", pipeline)
    ids = prod.insert_many([
        {"userEmail": "b@corp.test", "accountId": 1, "code": 7},  # poison
        {"userEmail": "c@corp.test", "accountId": 1, "code": 8},  # its batch neighbour
    ]).inserted_ids
    poison, neighbour = ids
    wait_for(lambda: encode_id(poison) in dead_letters(pipeline), TIMEOUT,
             "poison dead-lettered", pipeline)
    entry = dead_letters(pipeline)[encode_id(poison)]
    assert entry["reason"] == "write_error" and entry["op"] == "insert"
    assert "11000" in entry["error"] and "code" not in entry  # no document body stored
    assert synced(pipeline, neighbour) is not None  # the neighbour was never held back
    later = prod.insert_one({"userEmail": "d@corp.test", "accountId": 1, "code": 9}).inserted_id
    wait_for(lambda: synced(pipeline, later), TIMEOUT, "the stream keeps flowing", pipeline)

    listed = pipeline.cli("dlq", "list", "--json")
    assert listed.returncode == 0 and encode_id(poison) in json.loads(listed.stdout)[0]["pid"]
    still = pipeline.cli("dlq", "replay", "--collection", pipeline.collections[0]["name"])
    assert still.returncode == 1 and "1 still failing" in still.stdout, still.stdout

    # The cause is fixed.
    pipeline.staging().drop_index("qa_unique_code")
    replay = pipeline.cli("dlq", "replay", "--collection", pipeline.collections[0]["name"])
    assert replay.returncode == 0 and "1 resolved" in replay.stdout, replay.stdout + replay.stderr
    assert synced(pipeline, poison) is not None
    assert dead_letters(pipeline) == {}
    assert "empty" in pipeline.cli("dlq", "list").stdout


def test_a_standby_watcher_takes_over_when_the_active_one_dies(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    first = pipeline.start_watcher()
    pipeline.wait_streaming()
    second = pipeline.start_watcher()
    name = pipeline.collections[0]["name"]
    watchers = pipeline.state()["watchers"]
    owner = watchers.find_one({"_id": name})["owner"]
    time.sleep(4)  # longer than the lease: the standby must not have taken it
    assert watchers.find_one({"_id": name})["owner"] == owner
    assert "standing by" not in first.log() and '"streaming"' in first.log()

    prod = pipeline.prod()
    before = prod.insert_one({"userEmail": "a@corp.test", "accountId": 1}).inserted_id
    wait_for(lambda: synced(pipeline, before), TIMEOUT, "sync with the first watcher", pipeline)
    first.kill()
    during = prod.insert_one({"userEmail": "b@corp.test", "accountId": 1}).inserted_id
    wait_for(lambda: watchers.find_one({"_id": name})["owner"] != owner, 15,
             "standby takes the lease", pipeline)
    wait_for(lambda: synced(pipeline, during), TIMEOUT, "change made during the takeover",
             pipeline)
    assert second.alive()


def test_sigterm_stops_the_watcher_cleanly_and_frees_the_lease(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    watcher = pipeline.start_watcher()
    pipeline.wait_streaming()
    prod = pipeline.prod()
    prod.insert_many([{"userEmail": f"u{i}@corp.test", "accountId": i} for i in range(200)])
    wait_for(lambda: len(pipeline.live_staging()) == 200, TIMEOUT, "synced", pipeline)
    started = time.monotonic()
    assert watcher.terminate(timeout=20) == 0
    assert time.monotonic() - started < 15
    record = pipeline.state()["watchers"].find_one({"_id": pipeline.collections[0]["name"]})
    assert record["owner"] is None and record["token"]
    assert "watcher stopped" in watcher.log()
    # A new watcher resumes from the saved checkpoint at once (no lease to wait out).
    pipeline.start_watcher()
    after = prod.insert_one({"userEmail": "late@corp.test", "accountId": 1}).inserted_id
    wait_for(lambda: synced(pipeline, after), 20, "resumed from the checkpoint", pipeline)
    assert len(pipeline.live_staging()) == 201


def test_documents_of_an_unaccepted_schema_version_wait_until_the_config_accepts_them(
    pipeline_factory: Any,
) -> None:
    pipeline: Pipeline = pipeline_factory([collection_config(
        "orders", schema_version_field="schemaVersion", accepted_schema_versions=[1])])
    prod = pipeline.prod()
    pipeline.start_worker()
    watcher = pipeline.start_watcher()
    pipeline.wait_streaming()
    current = prod.insert_one({"userEmail": "a@corp.test", "accountId": 1,
                               "schemaVersion": 1}).inserted_id
    future = prod.insert_one({"userEmail": "b@corp.test", "accountId": 1,
                              "schemaVersion": 2}).inserted_id
    wait_for(lambda: synced(pipeline, current), TIMEOUT, "accepted version synced", pipeline)
    entry = wait_for(lambda: dead_letters(pipeline).get(encode_id(future)), TIMEOUT,
                     "held for its schema version", pipeline)
    assert entry["reason"] == "schema_version" and "2" in entry["error"]
    assert synced(pipeline, future) is None

    # The configuration learns version 2; the watcher restarts and replays what it held.
    watcher.terminate()
    for proc in pipeline.procs:
        proc.terminate()
    pipeline.collections[0]["accepted_schema_versions"] = [1, 2]
    pipeline.write_config()
    pipeline.start_worker()
    pipeline.start_watcher()
    wait_for(lambda: synced(pipeline, future), TIMEOUT, "replayed once accepted", pipeline)
    # The apply resolves the entry right after its write lands: wait for that, not the write.
    wait_for(lambda: dead_letters(pipeline) == {}, TIMEOUT, "entry resolved", pipeline)
