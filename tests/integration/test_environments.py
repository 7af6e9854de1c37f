"""`stagesync env create|list|delete` with a real watcher and workers; expiry by the beat
task (published to a real worker); a sampled environment keeps its references whole."""

from __future__ import annotations

import json
import random
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId
from stagesync.protocol.names import EXPIRE_ENVIRONMENTS
from stagesync.protocol.routing import home_queue
from stagesync.rules.identity import encode_id
from stagesync.rules.subset import in_sample
from stagesync.state.dead_letters import DeadLetterEntry, DeadLetterStore
from stagesync.state.environments import CREATING, DELETING, LIVE
from stagesync.state.versions import take_version
from stagesync.tasks.enqueue import broker_app

from tests.support.pipeline import Pipeline, collection_config, wait_for

TIMEOUT = 60.0
SECRET = "test-secret"  # the pipeline's pii_secret


def env_collection(pipeline: Pipeline, environment: str, index: int = 0) -> Any:
    database, _, name = pipeline.collections[index]["target"].partition(".")
    return pipeline.staging_client[f"{database}__{environment}"][name]


def live_pids(collection: Any) -> set[str]:
    return {doc["_sync"]["pid"] for doc in collection.find(
        {"deleted": False, "_sync.pid": {"$exists": True}}, {"_sync": 1})}


def listed(pipeline: Pipeline) -> list[dict[str, Any]]:
    result = pipeline.cli("env", "list", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_create_stream_list_expire_and_delete(pipeline: Pipeline) -> None:
    prod = pipeline.prod()
    prod.insert_many([{"userEmail": f"u{n}@x", "accountId": n, "n": n} for n in range(400)])
    pipeline.start_watcher()
    worker = pipeline.start_worker()
    pipeline.wait_bootstrapped()
    pipeline.staging().update_one({"accountId": 1}, {"$set": {"qaNotes": "main only"}})

    began = time.monotonic()
    created = pipeline.cli("env", "create", "pr-1", "--wait", "--timeout", "60")
    seconds = time.monotonic() - began
    assert created.returncode == 0, created.stdout + created.stderr + pipeline.logs()
    assert "environment pr-1: live" in created.stdout
    copies = env_collection(pipeline, "pr-1")
    assert len(live_pids(copies)) == 400
    assert copies.count_documents({"qaNotes": {"$exists": True}}) == 0  # main's QA edit stays
    print(f"env create --wait, 400 documents: {seconds:.1f}s")

    # The stream reaches the live environment.
    pid = prod.insert_one({"userEmail": "new@x", "accountId": 999}).inserted_id
    prod.update_one({"accountId": 2}, {"$set": {"n": -2}})
    wait_for(lambda: copies.find_one({"_sync.pid": encode_id(pid)}) and
             (copies.find_one({"accountId": 2}) or {}).get("n") == -2,
             TIMEOUT, "the stream in the environment", pipeline)

    entries = listed(pipeline)
    assert [entry["name"] for entry in entries] == ["pr-1"]
    entry = entries[0]
    name = pipeline.collections[0]["name"]
    database = pipeline.collections[0]["target"].partition(".")[0]
    assert entry["state"] == LIVE and entry["expires_at"] is not None
    assert entry["created_at"] < entry["expires_at"]
    assert entry["collections"] == {name: {
        "target": f"{database}__pr-1.orders", "documents": 401,
        "lag_seconds": entry["collections"][name]["lag_seconds"]}}
    assert isinstance(entry["collections"][name]["lag_seconds"], float)

    # A short lifetime: the beat job (published here to the real worker) deletes it.
    short = pipeline.cli("env", "create", "short", "--ttl", "1s")
    assert short.returncode == 0, short.stdout + short.stderr
    assert "short" in pipeline.staging_client.list_database_names() or \
        f"{database}__short" in pipeline.staging_client.list_database_names()
    settings = pipeline.settings
    # And what a delete killed halfway leaves (`deleting`, a database not yet dropped): the
    # same pass finishes it.
    store = pipeline.environment_store()
    store.create("half", settings.environment_databases("half"), ttl=None, sample=None,
                 limit=settings.environments.max)
    pipeline.staging_client[f"{database}__half"]["orders"].insert_one({"x": 1})
    assert store.transition("half", [CREATING], DELETING)
    expires = store.require("short").expires_at
    assert expires is not None
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()))  # `env create` is quick
    broker_app(settings).send_task(EXPIRE_ENVIRONMENTS,
                                   queue=home_queue(settings.collections[0]))
    wait_for(lambda: store.get("short") is None and store.get("half") is None, TIMEOUT,
             "the expired environment and the half-deleted one gone", pipeline)
    assert f"{database}__half" not in pipeline.staging_client.list_database_names()
    assert [e["name"] for e in listed(pipeline)] == ["pr-1"]
    assert f"{database}__short" not in pipeline.staging_client.list_database_names()

    # Delete drops only the databases recorded for it.
    neighbour = pipeline.staging_client[f"{database}__pr-10"]["orders"]
    neighbour.insert_one({"mine": True})
    deleted = pipeline.cli("env", "delete", "pr-1")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    names = pipeline.staging_client.list_database_names()
    assert f"{database}__pr-1" not in names and f"{database}__pr-10" in names
    assert database in names and pipeline.staging().count_documents({}) == 401
    assert listed(pipeline) == []
    state = pipeline.state()
    assert state["dead_letters"].count_documents({"collection": {"$regex": "@pr-1$"}}) == 0
    assert worker.alive()
    # The stream goes on into the main staging alone.
    prod.update_one({"accountId": 3}, {"$set": {"n": -3}})
    wait_for(lambda: (pipeline.staging().find_one({"accountId": 3}) or {}).get("n") == -3,
             TIMEOUT, "the main staging after the delete", pipeline)
    assert f"{database}__pr-1" not in pipeline.staging_client.list_database_names()
    neighbour.database.client.drop_database(neighbour.database.name)


def test_an_environment_created_while_production_writes_ends_equal_to_it(
        pipeline: Pipeline) -> None:
    """The copy starts once the environment is announced to the workers: batches that learn
    of it after reading production write it from that read, so no change falls between them."""
    prod = pipeline.prod()
    ids = prod.insert_many([{"userEmail": f"u{n}@x", "accountId": n, "n": 0}
                            for n in range(300)]).inserted_ids
    pipeline.start_watcher()
    pipeline.start_worker(concurrency=2)
    pipeline.wait_bootstrapped()
    stop = threading.Event()

    def write() -> None:
        rng = random.Random(7)
        while not stop.is_set():
            prod.update_one({"_id": rng.choice(ids)}, {"$inc": {"n": 1}})
            time.sleep(0.005)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        created = pipeline.cli("env", "create", "busy", "--wait", "--timeout", "90")
        time.sleep(1.0)  # writes after the copy too
    finally:
        stop.set()
        writer.join()
    assert created.returncode == 0, created.stdout + created.stderr + pipeline.logs()
    copies = env_collection(pipeline, "busy")
    wanted = {encode_id(doc["_id"]): doc["n"] for doc in prod.find({}, {"n": 1})}
    assert sum(wanted.values()) > 100  # production moved during the create

    def held() -> dict[str, int]:
        return {doc["_sync"]["pid"]: doc["n"] for doc in copies.find(
            {"deleted": False, "_sync.pid": {"$exists": True}}, {"_sync": 1, "n": 1})}

    wait_for(lambda: held() == wanted, TIMEOUT, "the environment equal to production",
             pipeline)


def test_errors_say_which(pipeline_factory: Any) -> None:
    pipeline: Pipeline = pipeline_factory(environments={"max": 1})
    bad = pipeline.cli("env", "create", "PR_1")
    assert bad.returncode == 2 and "bad environment name 'PR_1'" in bad.stderr, bad.stderr
    first = pipeline.cli("env", "create", "a")  # no worker: it stays `creating`
    assert first.returncode == 0, first.stdout + first.stderr
    store = pipeline.environment_store()
    assert store.require("a").state == CREATING
    too_many = pipeline.cli("env", "create", "b")
    assert too_many.returncode == 1, too_many.stdout + too_many.stderr
    assert "too many environments: 1 exist and environments.max is 1" in too_many.stderr
    assert store.transition("a", [CREATING], LIVE)
    taken = pipeline.cli("env", "create", "a")
    assert taken.returncode == 1 and "environment 'a' already exists" in taken.stderr
    missing = pipeline.cli("env", "delete", "nope")
    assert missing.returncode == 1 and "no environment named 'nope'" in missing.stderr
    assert pipeline.cli("env", "delete", "a").returncode == 0


def test_create_run_again_finishes_an_environment_stuck_in_creating(pipeline: Pipeline) -> None:
    pipeline.prod().insert_many([{"userEmail": f"u{n}@x", "accountId": n} for n in range(50)])
    pipeline.start_watcher()
    pipeline.start_worker()
    pipeline.wait_bootstrapped()
    # What a create killed right after recording leaves: the record, no copy started.
    settings = pipeline.settings
    store = pipeline.environment_store()
    store.create("stuck", settings.environment_databases("stuck"), ttl=None, sample=None,
                 limit=settings.environments.max)
    assert [(e["name"], e["state"]) for e in listed(pipeline)] == [("stuck", CREATING)]
    again = pipeline.cli("env", "create", "stuck", "--wait", "--timeout", "60")
    assert again.returncode == 0, again.stdout + again.stderr + pipeline.logs()
    assert store.require("stuck").state == LIVE
    assert len(live_pids(env_collection(pipeline, "stuck"))) == 50


def test_environments_never_on_production(pipeline_factory: Any) -> None:
    probe: Pipeline = pipeline_factory()
    pipeline: Pipeline = pipeline_factory(environments={"uri": probe.pair.prod_uri})
    refused = pipeline.cli("env", "create", "pr-1")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "environments.uri" in refused.stderr and "production" in refused.stderr
    assert pipeline.environment_store().get("pr-1") is None  # nothing recorded


@pytest.mark.parametrize(("percent", "indexed", "embedded", "by_parents"), [
    (25, False, False, False),  # no index on customerId: the orders are read by `_id` range
    (10, True, False, True),  # indexed, a small sample: only the sampled users' orders are read
    # An embedded document at customerId could be a DBRef, which `$in` would not find: by range.
    # (SecantusDB refuses to index a DBRef itself: "internal server error".)
    (10, True, True, False),
], ids=["by-range", "by-parents", "embedded-by-range"])
def test_a_sampled_environment_keeps_its_references_whole(
        pipeline_factory: Any, percent: int, indexed: bool, embedded: bool, by_parents: bool
) -> None:
    tag = str(ObjectId())[-8:]
    users = collection_config("users", tag, business_key=["email"])
    orders = collection_config("orders", tag, business_key=["orderNo"],
                               references={"customerId": f"users_{tag}"},
                               subset={"follow": "customerId"})
    pipeline: Pipeline = pipeline_factory([users, orders])
    user_ids = pipeline.prod(0).insert_many(
        [{"email": f"u{n}@x", "n": n} for n in range(200)]).inserted_ids
    pipeline.prod(1).insert_many([{"orderNo": n, "customerId": user_ids[n % 200]}
                                  for n in range(400)])
    if indexed:
        pipeline.prod(1).create_index("customerId")
    if embedded:  # an order that references no user: in no staging
        pipeline.prod(1).update_one({"orderNo": 0}, {"$set": {"customerId": {"legacy": 7}}})
    pipeline.start_watcher()
    pipeline.start_worker()
    pipeline.wait_bootstrapped()
    created = pipeline.cli("env", "create", "s1", "--sample", str(percent), "--wait",
                           "--timeout", "90")
    assert created.returncode == 0, created.stdout + created.stderr + pipeline.logs()
    copy = pipeline.state()["resyncs"].find_one({"kind": "resync",
                                                 "collection": f"orders_{tag}@s1"})
    assert copy is not None and copy.get("byParents") is by_parents, (copy, pipeline.logs())

    sampled = {encode_id(pid) for pid in user_ids if in_sample(encode_id(pid), percent,
                                                               SECRET.encode())}
    env_users, env_orders = env_collection(pipeline, "s1", 0), env_collection(pipeline, "s1", 1)
    # A real subset: some users, not all. (Bounds around the expected count, 10 % of 200,
    # failed about once in a hundred runs: the ids, and so the sample's size, are random.)
    assert 0 < len(sampled) < len(user_ids)
    assert live_pids(env_users) == sampled, pipeline.logs()
    expected = {encode_id(order["_id"]) for order in pipeline.prod(1).find({})
                if encode_id(order["customerId"]) in sampled}
    wait_for(lambda: live_pids(env_orders) == expected, 30, "the orders that follow", pipeline)
    # Every reference resolves inside the environment.
    copies = {doc["_id"] for doc in env_users.find({"deleted": False})}
    assert all(order["customerId"] in copies for order in env_orders.find({"deleted": False}))
    # The main staging holds everything, untouched.
    assert len(pipeline.live_staging(0)) == 200
    assert len(pipeline.live_staging(1)) == 400 - embedded
    # A new order of a sampled user arrives through the stream; one of another user does not.
    inside = next(pid for pid in user_ids if encode_id(pid) in sampled)
    outside = next(pid for pid in user_ids if encode_id(pid) not in sampled)
    pipeline.prod(1).insert_many([{"orderNo": 1000, "customerId": inside},
                                  {"orderNo": 1001, "customerId": outside}])
    wait_for(lambda: env_orders.find_one({"orderNo": 1000, "deleted": False}), TIMEOUT,
             "the new order of a sampled user", pipeline)
    wait_for(lambda: pipeline.staging(1).find_one({"orderNo": 1001}), TIMEOUT,
             "the main staging", pipeline)
    assert env_orders.find_one({"orderNo": 1001, "deleted": False}) is None


def test_the_watcher_replays_an_environment_s_waiting_failures(pipeline: Pipeline) -> None:
    prod = pipeline.prod()
    ids = prod.insert_many([{"userEmail": f"u{n}@x", "accountId": n} for n in range(30)]
                           ).inserted_ids
    pipeline.start_watcher()
    pipeline.start_worker()
    pipeline.wait_bootstrapped()
    created = pipeline.cli("env", "create", "w1", "--wait", "--timeout", "60")
    assert created.returncode == 0, created.stdout + created.stderr + pipeline.logs()
    copies = env_collection(pipeline, "w1")
    # What a lost replay leaves: copies missing, their passing failures open and untouched.
    name = pipeline.collections[0]["name"]
    lost = [encode_id(_id) for _id in ids[:5]]
    copies.delete_many({"_sync.pid": {"$in": lost}})
    state = pipeline.state()
    DeadLetterStore(state).record(DeadLetterEntry(
        collection=f"{name}@w1", pid=pid, op="update", reason="environment_error",
        error="AutoReconnect: environment server restarting",
        version=take_version(state, name)) for pid in lost)
    state["dead_letters"].update_many(
        {"collection": f"{name}@w1"},
        {"$set": {"lastSeen": datetime.now(UTC) - timedelta(minutes=2)}})
    wait_for(lambda: len(live_pids(copies)) == 30 and state["dead_letters"].count_documents(
        {"collection": f"{name}@w1", "state": "open"}) == 0, 90,
        "the watcher's replay of the environment's failures", pipeline)
