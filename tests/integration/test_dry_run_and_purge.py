"""`stagesync watch --dry-run` writes nothing; erasure purges only old production-born docs."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from stagesync.rules.identity import encode_id

from tests.support.pipeline import VENV_BIN, Pipeline, collection_config, wait_for


def staging_snapshot(pipeline: Pipeline) -> dict[str, list[Any]]:
    client = pipeline.staging_client
    return {
        f"{db}.{name}": sorted(map(repr, client[db][name].find({})))
        for db in client.list_database_names() if db not in ("admin", "local", "config")
        for name in client[db].list_collection_names()
    }


def test_dry_run_prints_the_plan_and_writes_nothing(pipeline: Pipeline) -> None:
    prod = pipeline.prod()
    existing = prod.insert_one({"userEmail": "a@corp.test", "accountId": 1, "total": 1})
    pipeline.start_worker()
    pipeline.start_watcher()
    pipeline.wait_streaming()
    wait_for(lambda: pipeline.staging().find_one({"_sync.pid": {"$eq": encode_id(
        existing.inserted_id)}}), 30, "initial sync", pipeline)
    for proc in pipeline.procs:
        proc.terminate()

    before = staging_snapshot(pipeline)
    dry = pipeline.start_watcher("--dry-run")
    wait_for(lambda: "nothing will be written" in dry.log(), 30, "dry run started", pipeline)
    prod.update_one({"_id": existing.inserted_id}, {"$set": {"total": 2, "status": "x"},
                                                    "$unset": {"accountId": ""}})
    prod.insert_one({"userEmail": "b@corp.test", "accountId": 2, "total": 5})
    prod.update_one({"userEmail": "b@corp.test"}, {"$set": {"total": 6}})
    output = wait_for(lambda: (text := dry.log()) and "would create" in text
                      and "would dead-letter" in text and text, 30, "planned writes printed",
                      pipeline)
    assert "missing_business_key" in output and "+total" in output
    time.sleep(1)
    assert dry.terminate() == 0
    assert staging_snapshot(pipeline) == before


def test_purge_removes_only_old_soft_deleted_documents_from_production(
    pipeline_factory: Any,
) -> None:
    pipeline: Pipeline = pipeline_factory([collection_config("orders",
                                                             purge_deleted_after="1d")])
    prod = pipeline.prod()
    ids = prod.insert_many([{"userEmail": f"u{i}@corp.test", "accountId": i}
                            for i in range(4)]).inserted_ids
    pipeline.start_worker()
    pipeline.start_watcher()
    wait_for(lambda: len(pipeline.live_staging()) == 4, 30, "synced", pipeline)
    prod.delete_many({"_id": {"$in": ids[:2]}})
    wait_for(lambda: len(pipeline.live_staging()) == 2, 30, "soft deletes", pipeline)
    staging = pipeline.staging()
    old = datetime.now(UTC) - timedelta(days=2)
    staging.update_one({"_sync.pid": {"$eq": encode_id(ids[0])}},
                       {"$currentDate": {"_sync.deletedAt": True}})  # recent: stays
    doc = staging.find_one({"_sync.pid": {"$eq": encode_id(ids[1])}})
    doc["_sync"]["deletedAt"] = old  # deleted two days ago: goes
    staging.replace_one({"_id": doc["_id"]}, doc)
    fixture = staging.insert_one({"deleted": True, "qa": "fixture"}).inserted_id
    result = pipeline.start("purge", [
        str(VENV_BIN / "celery"), "-A", "stagesync.tasks", "call", "stagesync.purge_deleted",
        "--args", f'["{pipeline.collections[0]["name"]}"]',
        "--queue", f'stagesync.{pipeline.collections[0]["name"]}',
    ])
    assert result.process.wait(60) == 0, result.log()
    wait_for(lambda: staging.find_one({"_id": doc["_id"]}) is None, 30, "purged", pipeline)
    assert staging.find_one({"_sync.pid": {"$eq": encode_id(ids[0])}}) is not None
    assert staging.find_one({"_id": fixture}) is not None
    assert len(pipeline.live_staging()) == 2
