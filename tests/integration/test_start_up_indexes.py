"""Start-up on a staging that already has indexes: reuse, never drop the user's, survive
several start-ups at once. Real watcher and worker processes, real servers."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pymongo.errors import OperationFailure
from stagesync.deployments.staging import connect_staging
from stagesync.deployments.staging_indexes import (
    IndexConflictError,
    ensure,
    ensure_indexes,
    target_indexes,
)
from stagesync.rules.identity import encode_id

from tests.support.pipeline import Pipeline, wait_for

SIMPLE = {"locale": "simple"}


def index_specs(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    return {index["name"]: dict(index) for index in pipeline.staging().list_indexes()}


def test_restored_staging_with_the_business_key_index_under_its_usual_name_syncs_at_once(
    pipeline: Pipeline,
) -> None:
    """A staging restored from production has `{userEmail: 1, accountId: 1}` named
    `userEmail_1_accountId_1`: the watcher and the workers start and sync on the first try."""
    pipeline.staging().create_index([("userEmail", 1), ("accountId", 1)])
    watcher = pipeline.start_watcher()
    worker = pipeline.start_worker(concurrency=1)
    pipeline.wait_streaming()
    pid = pipeline.prod().insert_one({"userEmail": "idx@corp.test", "accountId": 3,
                                      "total": 5}).inserted_id
    wait_for(lambda: pipeline.staging().find_one({"_sync.pid": encode_id(pid)}), 30,
             "the insert synced", pipeline)
    for proc in (watcher, worker):
        assert proc.alive(), pipeline.logs()
        assert "not reachable" not in proc.log(400), proc.log(400)
    wait_for(lambda: " ready." in worker.log(400), 30, "worker ready", pipeline)
    assert '"level": "ERROR"' not in worker.log(400), worker.log(400)
    # The bootstrap resync found staging empty: it builds its purge and TTL indexes once its
    # copy is done (`full_resync.indexes_after`).
    wait_for(lambda: {"stagesync_key", "stagesync_tombstone_ttl"} <= set(index_specs(pipeline)),
             30, "the bootstrap's indexes", pipeline)
    indexes = index_specs(pipeline)
    assert "userEmail_1_accountId_1" in indexes  # the user's index is kept and used
    business_key = [n for n, i in indexes.items()
                    if list(i["key"]) == ["userEmail", "accountId"]]
    assert business_key == ["userEmail_1_accountId_1"], indexes
    assert {"stagesync_pid", "stagesync_key", "stagesync_tombstone_ttl"} <= set(indexes)


class MongodIndexRules:
    """The staging collection, answering `createIndexes` as mongod does where SecantusDB is
    more lenient (difference: SecantusDB accepts a second index that differs from an existing
    one only in name and `expireAfterSeconds`; mongod 5.0+ compares key, collation, partial
    filter, unique and sparse, and refuses an equivalent index with 85 IndexOptionsConflict)."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def create_indexes(self, models: list[Any]) -> Any:
        for model in models:
            wanted = model.document
            for index in self._real.list_indexes():
                if index["name"] != wanted["name"] and _signature(index) == _signature(wanted):
                    raise OperationFailure(
                        "An equivalent index already exists with a different name and "
                        f"options. Requested index: {wanted}, existing index: {index}",
                        code=85)
        return self._real.create_indexes(models)


def _signature(index: Any) -> tuple[Any, ...]:
    collation = index.get("collation")
    simple = collation is None or collation.get("locale") == "simple"
    return (list(index["key"].items()), simple or dict(collation),
            index.get("partialFilterExpression"), bool(index.get("unique")),
            bool(index.get("sparse")))


def test_an_index_of_the_user_that_blocks_one_of_ours_is_named_and_never_dropped(
    pipeline: Pipeline,
) -> None:
    # The user's own TTL on stagesync's tombstone field: same signature as
    # stagesync_tombstone_ttl, another expiry.
    pipeline.staging().create_index([("_sync.expireAt", 1)], name="my_ttl",
                                    expireAfterSeconds=3600)
    target = MongodIndexRules(pipeline.staging())
    models = target_indexes(pipeline.settings.collections[0])
    with pytest.raises(IndexConflictError, match=r"my_ttl.*never drops"):
        ensure(target, models)  # type: ignore[arg-type]
    indexes = index_specs(pipeline)
    assert indexes["my_ttl"]["expireAfterSeconds"] == 3600
    assert "stagesync_tombstone_ttl" not in indexes
    assert {"stagesync_pid", "stagesync_key"} <= set(indexes)  # the others were made


def test_concurrent_start_ups_replace_an_outdated_index_of_ours_and_change_a_ttl(
    pipeline: Pipeline,
) -> None:
    """Four processes' worth of start-ups at the same moment, over our own indexes from an
    older configuration (another business key, another tombstone expiry)."""
    target = pipeline.staging()
    target.create_index([("email", 1)], name="stagesync_business_key", collation=SIMPLE)
    target.create_index([("_sync.expireAt", 1)], name="stagesync_tombstone_ttl",
                        expireAfterSeconds=3600, collation=SIMPLE)
    settings = pipeline.settings
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def start_up() -> None:
        client = connect_staging(settings.staging)
        try:
            barrier.wait(10)
            ensure_indexes(client, settings)
        except BaseException as error:  # reported below
            errors.append(error)
        finally:
            client.close()

    threads = [threading.Thread(target=start_up) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    indexes = index_specs(pipeline)
    assert list(indexes["stagesync_business_key"]["key"]) == ["userEmail", "accountId"]
    assert indexes["stagesync_tombstone_ttl"]["expireAfterSeconds"] == 0


def test_the_earlier_partial_sync_indexes_become_sparse_at_start_up_and_still_hold(
    pipeline: Pipeline,
) -> None:
    """A staging synced by a release with the partial `_sync.pid` / `_sync.key` indexes: one
    start-up replaces them with the sparse unique ones, the synced copies and a QA fixture
    without `_sync` stay as they are, and uniqueness holds afterwards."""
    target = pipeline.staging()
    for name, field in (("stagesync_pid", "_sync.pid"), ("stagesync_key", "_sync.key")):
        target.create_index([(field, 1)], name=name, unique=True, collation=SIMPLE,
                            partialFilterExpression={field: {"$exists": True}})
    target.insert_many([{"qa": "fixture one"}, {"qa": "fixture two"}])  # no _sync: free
    pipeline.start_watcher()
    pipeline.start_worker(concurrency=1)
    pipeline.wait_streaming()
    pid = pipeline.prod().insert_one({"userEmail": "sparse@corp.test", "accountId": 4,
                                      "total": 1}).inserted_id
    copy = wait_for(lambda: target.find_one({"_sync.pid": encode_id(pid)}), 30,
                    "the insert synced", pipeline)
    indexes = index_specs(pipeline)
    for name in ("stagesync_pid", "stagesync_key"):
        assert indexes[name].get("sparse") is True and indexes[name].get("unique") is True
        assert "partialFilterExpression" not in indexes[name], indexes[name]
    assert target.count_documents({"qa": {"$exists": True}}) == 2
    with pytest.raises(OperationFailure) as refused:
        target.insert_one({"_sync": {"pid": copy["_sync"]["pid"]}})
    assert refused.value.code == 11000
    with pytest.raises(OperationFailure) as refused_key:
        target.insert_one({"_sync": {"key": copy["_sync"]["key"]}})
    assert refused_key.value.code == 11000
