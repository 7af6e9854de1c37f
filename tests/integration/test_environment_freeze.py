"""`stagesync env freeze|thaw|reset` with a real watcher and workers: a frozen environment
holds still while production writes, its thaw applies only what it missed (or copies again when
it missed too much), a reset removes QA edits and fixtures, and a create or reset killed with
SIGKILL is never listed live half made and is finished by running it again."""

from __future__ import annotations

import time
from typing import Any

from stagesync.rules.identity import encode_id
from stagesync.state.dead_letters import DeadLetterEntry, DeadLetterStore
from stagesync.state.environments import CREATING, FROZEN, LIVE, RESETTING
from stagesync.state.versions import take_version

from tests.integration.test_environments import env_collection, listed, live_pids
from tests.support.pipeline import VENV_BIN, Pipeline, Proc, wait_for

TIMEOUT = 90.0


def snapshot(collection: Any) -> list[dict[str, Any]]:
    return list(collection.find({}, sort=[("_id", 1)]))


def production_view(pipeline: Pipeline) -> dict[int, Any]:
    """accountId -> n of what production holds now."""
    return {doc["accountId"]: doc.get("n") for doc in pipeline.prod().find({})}


def environment_view(collection: Any) -> dict[int, Any]:
    return {doc["accountId"]: doc.get("n") for doc in collection.find({"deleted": False})}


def started(pipeline: Pipeline, documents: int) -> Proc:
    """Production seeded, the main staging bootstrapped; the worker."""
    pipeline.prod().insert_many([{"userEmail": f"u{n}@x", "accountId": n, "n": n}
                                 for n in range(documents)])
    pipeline.start_watcher()
    worker = pipeline.start_worker()
    pipeline.wait_bootstrapped()
    return worker


def create(pipeline: Pipeline, name: str, *args: str) -> None:
    created = pipeline.cli("env", "create", name, *args, "--wait", "--timeout", "90")
    assert created.returncode == 0, created.stdout + created.stderr + pipeline.logs()


def test_freeze_holds_still_and_thaw_applies_only_what_it_missed(pipeline: Pipeline) -> None:
    started(pipeline, 300)
    create(pipeline, "pr-1")
    copies = env_collection(pipeline, "pr-1")
    copies.update_one({"accountId": 7}, {"$set": {"qaNotes": "kept"}})

    frozen = pipeline.cli("env", "freeze", "pr-1")
    assert frozen.returncode == 0, frozen.stdout + frozen.stderr
    entry = listed(pipeline)[0]
    assert entry["state"] == FROZEN and entry["frozen_at"] and entry["thawing"] is None
    assert set(entry["frozen_cluster_time"]) == {"t", "i"}
    before = snapshot(copies)

    # Production moves: many changes to a few documents, inserts and deletes.
    prod = pipeline.prod()
    for round_number in range(5):
        for n in range(40):
            prod.update_one({"accountId": n}, {"$set": {"n": -(round_number * 1000 + n)}})
    prod.insert_many([{"userEmail": f"new{n}@x", "accountId": 1000 + n} for n in range(20)])
    prod.delete_many({"accountId": {"$gte": 290, "$lt": 300}})
    wait_for(lambda: environment_view(pipeline.staging()) == production_view(pipeline),
             TIMEOUT, "the main staging caught up", pipeline)
    # A replay of the environment's failures waits for its thaw too.
    scope = f"{pipeline.collections[0]['name']}@pr-1"
    state = pipeline.state()
    DeadLetterStore(state).record([DeadLetterEntry(
        collection=scope, pid=encode_id(prod.find_one({"accountId": 1})["_id"]), op="update",
        reason="environment_error", error="AutoReconnect: passing",
        version=take_version(state, pipeline.collections[0]["name"]))])
    replay = pipeline.cli("dlq", "replay", "--collection", scope)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    wait_for(lambda: state["replay_jobs"].find_one({"collection": scope, "state": "done"}),
             TIMEOUT, "the replay job", pipeline)
    time.sleep(1.5)
    assert snapshot(copies) == before  # not one write, not one soft delete
    assert state["dead_letters"].count_documents({"collection": scope, "state": "open"}) == 1
    entry = listed(pipeline)[0]
    assert entry["backlog"] == 70  # per document: 40 updated, 20 inserted, 10 deleted
    assert entry["collections"][pipeline.collections[0]["name"]]["lag_seconds"] > 1.0

    thawed = pipeline.cli("env", "thaw", "pr-1", "--wait", "--timeout", "90")
    assert thawed.returncode == 0, thawed.stdout + thawed.stderr + pipeline.logs()
    assert "applying the documents it missed" in thawed.stdout
    assert environment_view(copies) == production_view(pipeline)
    assert copies.find_one({"accountId": 7})["qaNotes"] == "kept"  # staging-only field
    entry = listed(pipeline)[0]
    assert (entry["state"], entry["thawing"], entry["backlog"]) == (LIVE, None, 0)
    assert entry["frozen_at"] is None
    # Live again: the stream writes into it.
    prod.update_one({"accountId": 100}, {"$set": {"n": "after"}})
    wait_for(lambda: (copies.find_one({"accountId": 100}) or {}).get("n") == "after",
             TIMEOUT, "the stream in the thawed environment", pipeline)
    # Thawing a live environment is harmless; freezing a missing one says which.
    again = pipeline.cli("env", "thaw", "pr-1")
    assert again.returncode == 0 and "nothing to catch up" in again.stdout, again.stdout
    missing = pipeline.cli("env", "freeze", "nope")
    assert missing.returncode == 1 and "no environment named 'nope'" in missing.stderr


def test_a_thaw_past_the_backlog_bound_copies_again(pipeline_factory: Any) -> None:
    pipeline: Pipeline = pipeline_factory(environments={"freeze_backlog": 10})
    started(pipeline, 100)
    create(pipeline, "b1")
    copies = env_collection(pipeline, "b1")
    assert pipeline.cli("env", "freeze", "b1").returncode == 0
    prod = pipeline.prod()
    for n in range(30):
        prod.update_one({"accountId": n}, {"$set": {"n": -n}})
    prod.delete_many({"accountId": {"$gte": 95}})
    wait_for(lambda: environment_view(pipeline.staging()) == production_view(pipeline),
             TIMEOUT, "the main staging caught up", pipeline)
    store = pipeline.environment_store()
    wait_for(lambda: store.require("b1").overflowed, TIMEOUT, "the backlog overflowed",
             pipeline)
    assert copies.count_documents({"deleted": False}) == 100  # still frozen

    thawed = pipeline.cli("env", "thaw", "b1", "--wait", "--timeout", "90")
    assert thawed.returncode == 0, thawed.stdout + thawed.stderr + pipeline.logs()
    assert "copying it again" in thawed.stdout
    assert environment_view(copies) == production_view(pipeline)
    assert store.require("b1").thaw is None and store.require("b1").state == LIVE


def test_reset_removes_qa_edits_and_fixtures(pipeline: Pipeline) -> None:
    started(pipeline, 200)
    create(pipeline, "r1", "--sample", "10")  # decided on the `_id`s (SAMPLE_BY_ID_PERCENT)
    copies = env_collection(pipeline, "r1")
    kept = live_pids(copies)
    assert 5 < len(kept) < 45
    copies.update_many({}, {"$set": {"qaNotes": "edited"}})
    copies.insert_one({"fixture": True})
    copies.database["fixtures"].insert_one({"made": "by a test"})
    assert pipeline.cli("env", "freeze", "r1").returncode == 0

    reset = pipeline.cli("env", "reset", "r1", "--wait", "--timeout", "90")
    assert reset.returncode == 0, reset.stdout + reset.stderr + pipeline.logs()
    assert live_pids(copies) == kept  # the same sample
    assert copies.count_documents({"qaNotes": {"$exists": True}}) == 0
    assert copies.count_documents({"fixture": True}) == 0
    assert "fixtures" not in copies.database.list_collection_names()
    assert {index["name"] for index in copies.list_indexes()} >= {"stagesync_pid"}
    entry = listed(pipeline)[0]
    assert (entry["state"], entry["frozen_at"]) == (LIVE, None)
    pipeline.prod().update_one({"accountId": 1}, {"$set": {"n": "after"}})
    wait_for(lambda: pipeline.staging().find_one({"accountId": 1})["n"] == "after",
             TIMEOUT, "the main staging", pipeline)
    if any(doc["accountId"] == 1 for doc in copies.find({"deleted": False})):
        wait_for(lambda: copies.find_one({"accountId": 1})["n"] == "after", TIMEOUT,
                 "the stream in the reset environment", pipeline)


def test_create_and_reset_killed_are_finished_by_running_them_again(
        pipeline: Pipeline) -> None:
    worker = started(pipeline, 300)
    stagesync = str(VENV_BIN / "stagesync")
    store = pipeline.environment_store()

    # No worker: the copy, published at once, cannot finish before the create is killed.
    worker.terminate()
    creating = pipeline.start("create", [stagesync, "env", "create", "k1", "--wait"])
    wait_for(lambda: store.get("k1") is not None, 30, "the record", pipeline)
    time.sleep(0.5)  # recorded; its databases being made or its copy published
    creating.kill()
    assert [(e["name"], e["state"]) for e in listed(pipeline)] == [("k1", CREATING)]
    again = pipeline.start("create", [stagesync, "env", "create", "k1", "--wait"])
    # The run again takes the environment up (it prints the copy's progress) before any
    # worker could finish what the first one published.
    wait_for(lambda: "copying" in again.log(), 60, "the create run again", pipeline)
    pipeline.start_worker()
    assert again.process.wait(90) == 0, again.log() + pipeline.logs()
    copies = env_collection(pipeline, "k1")
    assert len(live_pids(copies)) == 300

    copies.update_many({}, {"$set": {"qaNotes": "edited"}})
    resetting = pipeline.start("reset", [stagesync, "env", "reset", "k1", "--wait"])
    wait_for(lambda: store.require("k1").state == RESETTING, 30, "resetting", pipeline)
    time.sleep(1.0)  # before its documents are removed (it waits for the workers first)
    resetting.kill()
    for _ in range(3):  # never listed live while half made
        assert listed(pipeline)[0]["state"] == RESETTING
        time.sleep(1.0)
    again = pipeline.cli("env", "reset", "k1", "--wait", "--timeout", "90")
    assert again.returncode == 0, again.stdout + again.stderr + pipeline.logs()
    assert len(live_pids(copies)) == 300
    assert copies.count_documents({"qaNotes": {"$exists": True}}) == 0
    assert listed(pipeline)[0]["state"] == LIVE


def test_a_thaw_killed_is_finished_by_running_it_again(pipeline: Pipeline) -> None:
    started(pipeline, 200)
    create(pipeline, "t1")
    copies = env_collection(pipeline, "t1")
    assert pipeline.cli("env", "freeze", "t1").returncode == 0
    prod = pipeline.prod()
    for n in range(0, 200, 2):
        prod.update_one({"accountId": n}, {"$set": {"n": -n - 1}})
    wait_for(lambda: environment_view(pipeline.staging()) == production_view(pipeline),
             TIMEOUT, "the main staging caught up", pipeline)
    store = pipeline.environment_store()
    wait_for(lambda: listed(pipeline)[0]["backlog"] == 100, TIMEOUT, "the backlog", pipeline)

    # Killed while it waits for the workers, before any drain was published.
    thawing = pipeline.start("thaw", [str(VENV_BIN / "stagesync"), "env", "thaw", "t1"])
    wait_for(lambda: store.require("t1").thaw is not None, 30, "the thaw recorded", pipeline)
    thawing.kill()
    time.sleep(2.0)
    entry = listed(pipeline)[0]
    assert (entry["state"], entry["thawing"], entry["backlog"]) == (LIVE, "drain", 100)
    assert environment_view(copies) != production_view(pipeline)

    again = pipeline.cli("env", "thaw", "t1", "--wait", "--timeout", "90")
    assert again.returncode == 0, again.stdout + again.stderr + pipeline.logs()
    assert environment_view(copies) == production_view(pipeline)
    assert store.require("t1").thaw is None
