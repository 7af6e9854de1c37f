"""The target fan-out: one production read per batch whatever the number of environments,
each environment with its own copies, sample and dead letters, and a failing environment
contained (tasks.apply.targets)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo.errors import AutoReconnect
from stagesync.deployments.guard import SameDeploymentError
from stagesync.deployments.staging_indexes import ensure, ensure_indexes, target_indexes
from stagesync.protocol.routing import home_queue
from stagesync.rules.identity import decode_id, encode_id
from stagesync.rules.subset import in_sample
from stagesync.state.environments import CREATING, LIVE, environment_settings
from stagesync.tasks.apply.targets import BrokenTarget, EnvironmentsUnrecorded, TargetBatch
from stagesync.tasks.enqueue import broker_app, start_replay
from stagesync.tasks.full_resync.chunks import read_sampled, samples_by_id
from stagesync.tasks.runtime import Runtime

from tests.support.pipeline import Pipeline, wait_for

TIMEOUT = 30.0


def add_environment(pipeline: Pipeline, name: str, sample: float | None = None) -> Any:
    """An environment recorded live with stagesync's indexes in its databases (what `env
    create` does before its copy)."""
    settings = pipeline.settings
    store = pipeline.environment_store()
    store.ensure_indexes()
    environment = store.create(name, settings.environment_databases(name), ttl=None,
                               sample=sample, limit=settings.environments.max)
    for collection in settings.collections:
        copy = environment_settings(collection, environment)
        ensure(pipeline.staging_client[copy.target_db][copy.target_collection],
               target_indexes(copy))
    assert store.transition(name, [CREATING], LIVE)
    return store.require(name)


def env_copies(pipeline: Pipeline, environment: Any, index: int = 0) -> Any:
    copy = environment_settings(pipeline.settings.collections[index], environment)
    return pipeline.staging_client[copy.target_db][copy.target_collection]


@pytest.fixture
def runtime(pipeline: Pipeline) -> Iterator[Runtime]:
    settings = pipeline.settings
    made = Runtime(settings)
    ensure_indexes(made.staging, settings)
    yield made
    made.close()


def failing_writes(runtime: Runtime, name: str, environment: str, error: Exception
                   ) -> list[Any]:
    """The collection's targets, the environment's writes raising `error`."""
    targets = runtime.targets(name)
    bad = next(t for t in targets if t.environment == environment)

    def fail(*_: Any, **__: Any) -> Any:
        raise error

    bad.target.execute = fail  # type: ignore[method-assign]
    return targets


def seed(pipeline: Pipeline, count: int) -> dict[str, str]:
    ids = pipeline.prod().insert_many(
        [{"userEmail": f"u{n}@x", "accountId": n, "n": n} for n in range(count)]).inserted_ids
    return {encode_id(pid): "insert" for pid in ids}


def test_one_production_read_per_batch_whatever_the_number_of_environments(
        pipeline: Pipeline, runtime: Runtime, production_finds: list[dict[str, Any]]) -> None:
    name = pipeline.collections[0]["name"]
    ops = seed(pipeline, 150)
    TargetBatch(runtime.context(name), [], ops).apply_main()
    alone = len(production_finds)
    assert alone == 1  # 150 ids: one `$in` list of at most 200
    full, sampled, other = (add_environment(pipeline, env, sample)
                            for env, sample in (("full", None), ("s30", 30.0), ("x", None)))
    runtime.environments.refresh()
    targets = runtime.targets(name)
    assert [t.scope for t in targets] == [name, f"{name}@full", f"{name}@s30", f"{name}@x"]
    production_finds.clear()
    batch = TargetBatch(targets[0], targets[1:], ops)
    batch.apply_main()
    outcomes = batch.apply_environments()
    assert len(production_finds) == alone  # three environments more: still one read
    assert all(result is not None for result in outcomes.values())
    assert env_copies(pipeline, full).count_documents({}) == 150
    assert env_copies(pipeline, other).count_documents({}) == 150
    wanted = {pid for pid in ops if in_sample(pid, 30.0, b"test-secret")}
    assert 20 < len(wanted) < 80
    # Outside the sample, as if production had none (at most a tombstone of `_sync` only).
    assert {d["_sync"]["pid"] for d in env_copies(pipeline, sampled).find(
        {"deleted": {"$ne": True}})} == wanted
    # The main staging is untouched by the environments: the same 150 copies, once.
    assert pipeline.staging().count_documents({}) == 150


def test_a_failing_environment_is_contained_and_scoped(
        pipeline: Pipeline, runtime: Runtime) -> None:
    name = pipeline.collections[0]["name"]
    broken, fine = add_environment(pipeline, "broken"), add_environment(pipeline, "fine")
    targets = failing_writes(runtime, name, "broken", RuntimeError("environment server on fire"))
    ops = seed(pipeline, 20)
    batch = TargetBatch(targets[0], targets[1:], ops)
    result = batch.apply_main()
    outcomes = batch.apply_environments()
    assert result.outcomes["created"] == 20
    assert outcomes[f"{name}@broken"] is None and outcomes[f"{name}@fine"] is not None
    assert env_copies(pipeline, fine).count_documents({}) == 20
    assert env_copies(pipeline, broken).count_documents({}) == 0
    letters = pipeline.state()["dead_letters"]
    assert letters.count_documents({"collection": f"{name}@broken",
                                    "reason": "environment_error"}) == 20
    assert letters.count_documents({"collection": {"$ne": f"{name}@broken"}}) == 0
    listed = pipeline.cli("dlq", "list", "--collection", f"{name}@broken", "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert {entry["reason"] for entry in json.loads(listed.stdout)} == {"environment_error"}
    assert len(json.loads(listed.stdout)) == 20


def test_the_stream_reaches_a_live_environment(pipeline: Pipeline) -> None:
    environment = add_environment(pipeline, "pr-1")
    pipeline.start_watcher()
    pipeline.start_worker()
    pipeline.wait_streaming()
    prod = pipeline.prod()
    pid = prod.insert_one({"userEmail": "a@x", "accountId": 1, "v": 1}).inserted_id
    prod.update_one({"_id": pid}, {"$set": {"v": 2}})
    copies = env_copies(pipeline, environment)
    wait_for(lambda: (copies.find_one({"_sync.pid": encode_id(pid)}) or {}).get("v") == 2,
             TIMEOUT, "the change in the environment", pipeline)
    copies.update_one({"_sync.pid": encode_id(pid)}, {"$set": {"qaNotes": "env only"}})
    prod.delete_one({"_id": pid})
    wait_for(lambda: (copies.find_one({"_sync.pid": encode_id(pid)}) or {}).get("deleted"),
             TIMEOUT, "the soft delete in the environment", pipeline)
    env_doc = copies.find_one({"_sync.pid": encode_id(pid)})
    main_doc = wait_for(lambda: pipeline.staging().find_one(
        {"_sync.pid": encode_id(pid), "deleted": True}), TIMEOUT, "main soft delete", pipeline)
    assert env_doc["qaNotes"] == "env only" and "qaNotes" not in main_doc
    assert env_doc["_sync"]["v"] == main_doc["_sync"]["v"]  # one version serves every target


def test_an_environment_on_production_is_refused_and_contained(pipeline_factory: Any) -> None:
    probe: Pipeline = pipeline_factory()
    pipeline: Pipeline = pipeline_factory(environments={"uri": probe.pair.prod_uri})
    name = pipeline.collections[0]["name"]
    store = pipeline.environment_store()
    settings = pipeline.settings
    store.create("p", settings.environment_databases("p"), ttl=None, sample=None, limit=5)
    assert store.transition("p", [CREATING], LIVE)
    runtime = Runtime(settings)
    try:
        ensure_indexes(runtime.staging, settings)
        main, broken = runtime.targets(name)
        assert isinstance(broken, BrokenTarget)
        assert isinstance(broken.error, SameDeploymentError)
        ops = seed(pipeline, 10)
        batch = TargetBatch(main, [broken], ops)  # type: ignore[arg-type]
        assert batch.apply_main().outcomes["created"] == 10
        assert batch.apply_environments() == {f"{name}@p": None}
    finally:
        runtime.close()
    assert pipeline.state()["dead_letters"].count_documents(
        {"collection": f"{name}@p", "reason": "environment_error"}) == 10
    database = settings.environment_databases("p")[settings.collections[0].target_db]
    assert database not in pipeline.prod_client.list_database_names()  # nothing written there


def test_a_small_sample_is_decided_on_ids_and_only_its_documents_read(
        pipeline: Pipeline, runtime: Runtime, production_finds: list[dict[str, Any]]) -> None:
    name = pipeline.collections[0]["name"]
    ops = seed(pipeline, 300)
    add_environment(pipeline, "s5", 5.0)
    add_environment(pipeline, "s50", 50.0)
    small = runtime.context(f"{name}@s5")
    assert samples_by_id(small)
    assert not samples_by_id(runtime.context(f"{name}@s50"))  # cheaper read whole
    assert not samples_by_id(runtime.context(name))
    walked = {pid: {"_id": decode_id(pid)} for pid in ops if small.sampled(pid)}
    assert 3 <= len(walked) <= 40
    production_finds.clear()
    documents = read_sampled(small, walked)
    assert production_finds == [{"_id": {"$in": [doc["_id"] for doc in walked.values()]}}]
    assert set(documents) == set(walked)
    assert all(doc is not None and doc["accountId"] == int(doc["userEmail"][1:-2])
               for doc in documents.values())  # whole documents
    # One deleted since the walk is left out, as a later full read would leave it.
    gone = next(iter(walked))
    pipeline.prod().delete_one({"_id": decode_id(gone)})
    assert gone not in read_sampled(small, walked)


def test_a_passing_environment_failure_is_replayed_until_it_takes(
        pipeline: Pipeline, runtime: Runtime) -> None:
    name = pipeline.collections[0]["name"]
    flaky = add_environment(pipeline, "flaky")
    targets = failing_writes(runtime, name, "flaky",
                             AutoReconnect("environment server restarting"))
    ops = seed(pipeline, 20)
    app, queue = broker_app(pipeline.settings), home_queue(pipeline.settings.collections[0])
    replayed: list[tuple[str, list[str]]] = []

    def replay(scope: str, pids: list[str]) -> None:
        replayed.append((scope, sorted(pids)))
        start_replay(app, runtime.state_db, scope, queue, pids, "environment_error")

    batch = TargetBatch(targets[0], targets[1:], ops, replay=replay)
    batch.apply_main()
    assert batch.apply_environments() == {f"{name}@flaky": None}
    assert replayed == [(f"{name}@flaky", sorted(ops))]
    letters = pipeline.state()["dead_letters"]
    # A worker (whose environment's server answers) takes the replay: nothing left behind.
    pipeline.start_worker(concurrency=1)
    wait_for(lambda: env_copies(pipeline, flaky).count_documents({"deleted": False}) == 20
             and letters.count_documents({"collection": f"{name}@flaky",
                                          "state": "open"}) == 0,
             TIMEOUT, "the replayed environment", pipeline)

    # Where not even the dead letters can be recorded, the message must be retried whole.
    def unreachable(*_: Any, **__: Any) -> Any:
        raise AutoReconnect("state database unreachable")

    flaky_target = next(t for t in targets if t.environment == "flaky")
    flaky_target.dead_letters.record = unreachable  # type: ignore[method-assign]
    again = TargetBatch(targets[0], targets[1:], seed(pipeline, 3), replay=replay)
    again.apply_main()
    with pytest.raises(EnvironmentsUnrecorded):
        again.apply_environments()
