"""Core sync end to end: real watcher and worker processes, real Redis, two MongoDB servers."""

from __future__ import annotations

import time
from typing import Any

from stagesync.rules.identity import encode_id

from tests.support.pipeline import Pipeline, collection_config, wait_for
from tests.support.snapshots import production_snapshot

TIMEOUT = 30


def staging_doc(pipeline: Pipeline, production_id: Any) -> dict[str, Any] | None:
    return pipeline.staging().find_one({"_sync.pid": {"$eq": encode_id(production_id)}})


def wait_doc(pipeline: Pipeline, production_id: Any, check: Any, what: str) -> dict[str, Any]:
    return wait_for(
        lambda: (doc := staging_doc(pipeline, production_id)) is not None and check(doc) and doc,
        TIMEOUT, what, pipeline,
    )


def populated_databases(pipeline: Pipeline) -> set[str]:
    """Production databases holding collections (other tests share the server)."""
    names = set(pipeline.prod_client.list_database_names()) - {"admin", "local", "config"}
    return {name for name in names if pipeline.prod_client[name].list_collection_names()}


def test_document_lifecycle_keeps_staging_fields_and_never_touches_production(
    pipeline: Pipeline,
) -> None:
    databases_before = populated_databases(pipeline)
    pipeline.start_watcher()
    pipeline.start_worker()
    pipeline.wait_streaming()
    prod = pipeline.prod()

    # insert
    first = prod.insert_one({
        "userEmail": "ann@corp.test", "accountId": 7, "total": 10, "tags": ["a", "b"],
        "customer": {"name": "Ann", "phone": "555", "address": {"city": "Oslo"}},
    }).inserted_id
    doc = wait_doc(pipeline, first, lambda d: d.get("total") == 10, "insert synced")
    staging_id = doc["_id"]
    assert doc["customer"] == {"name": "Ann", "phone": "555", "address": {"city": "Oslo"}}
    assert doc["deleted"] is False and doc["tags"] == ["a", "b"]

    # QA edits on staging-only fields, top level and nested
    pipeline.staging().update_one({"_id": staging_id}, {"$set": {
        "qaNotes": "keep me", "qaFlag": True, "customer.qaTag": "vip",
        "customer.address.qaFloor": 3,
    }})

    # update
    prod.update_one({"_id": first}, {"$set": {"total": 11, "customer.address.city": "Bergen",
                                              "tags": ["c"]}})
    doc = wait_doc(pipeline, first, lambda d: d.get("total") == 11, "update synced")
    assert doc["customer"]["address"] == {"city": "Bergen", "qaFloor": 3}
    assert doc["tags"] == ["c"]
    assert (doc["qaNotes"], doc["qaFlag"], doc["customer"]["qaTag"]) == ("keep me", True, "vip")

    # $unset of a production field removes it from staging, staging fields stay
    prod.update_one({"_id": first}, {"$unset": {"customer.phone": "", "tags": ""}})
    doc = wait_doc(pipeline, first, lambda d: "phone" not in d["customer"], "$unset synced")
    assert "tags" not in doc and doc["customer"]["qaTag"] == "vip"

    # production writing a staging-owned field (staging_fields) never overwrites it
    prod.update_one({"_id": first}, {"$set": {"qaNotes": "from production", "total": 12}})
    doc = wait_doc(pipeline, first, lambda d: d.get("total") == 12, "second update synced")
    assert doc["qaNotes"] == "keep me"

    # replace: fields absent from the replacement disappear, staging fields survive
    prod.replace_one({"_id": first}, {"userEmail": "ann@corp.test", "accountId": 7,
                                      "status": "new", "customer": {"name": "Ann B"}})
    doc = wait_doc(pipeline, first, lambda d: d.get("status") == "new", "replace synced")
    assert "total" not in doc
    assert doc["customer"] == {"name": "Ann B", "qaTag": "vip", "address": {"qaFloor": 3}}
    assert doc["qaFlag"] is True and doc["_id"] == staging_id

    # delete -> soft delete
    prod.delete_one({"_id": first})
    doc = wait_doc(pipeline, first, lambda d: d.get("deleted") is True, "soft delete")
    assert doc["_sync"]["deletedAt"] is not None and doc["status"] == "new"

    # re-insert of the same business key under a new _id revives the same staging document
    second = prod.insert_one({"userEmail": "ann@corp.test", "accountId": 7, "total": 99})
    second = second.inserted_id
    doc = wait_doc(pipeline, second, lambda d: d.get("deleted") is False, "revival")
    assert doc["_id"] == staging_id and doc["total"] == 99 and "status" not in doc
    assert doc["qaNotes"] == "keep me" and "deletedAt" not in doc["_sync"]

    # business-key change moves the staging document, no duplicate left behind
    prod.update_one({"_id": second}, {"$set": {"accountId": 8}})
    doc = wait_doc(pipeline, second, lambda d: d.get("accountId") == 8, "key change")
    assert doc["_id"] == staging_id
    assert pipeline.staging().count_documents({}) == 1

    # a document without its business key is dead-lettered; the next one still syncs
    keyless = prod.insert_one({"userEmail": "nokey@corp.test", "total": 1}).inserted_id
    after = prod.insert_one({"userEmail": "bob@corp.test", "accountId": 1, "total": 2}).inserted_id
    wait_doc(pipeline, after, lambda d: d.get("total") == 2, "document after the bad one")
    entry = wait_for(
        lambda: pipeline.state()["dead_letters"].find_one({"pid": {"$eq": encode_id(keyless)}}),
        TIMEOUT, "dead letter for the keyless document", pipeline,
    )
    assert entry["reason"] == "missing_business_key" and entry["op"] == "insert"
    assert "total" not in entry and "userEmail" not in entry  # never the document body
    assert staging_doc(pipeline, keyless) is None

    # production is left exactly as the test wrote it
    before = production_snapshot(pipeline.prod_client)
    time.sleep(2)  # the watcher and worker keep running, checkpointing, renewing leases
    assert production_snapshot(pipeline.prod_client) == before
    source_db = pipeline.collections[0]["source"].split(".")[0]
    assert populated_databases(pipeline) - databases_before == {source_db}
    assert set(pipeline.prod_client[source_db].list_collection_names()) == {"orders"}
    for document in pipeline.prod().find({}):
        assert "_sync" not in document and "deleted" not in document


def test_staging_documents_that_predate_the_sync_are_adopted_not_duplicated(
    pipeline_factory: Any,
) -> None:
    pipeline: Pipeline = pipeline_factory([collection_config("orders")])
    # staging restored from an old backup: same business key, its own _id, no _sync yet
    old = pipeline.staging().insert_one(
        {"userEmail": "eve@corp.test", "accountId": 3, "total": 1, "qaNotes": "from backup"}
    ).inserted_id
    fixture = pipeline.staging().insert_one({"qaFixture": True}).inserted_id
    prod_id = pipeline.prod().insert_one(
        {"userEmail": "eve@corp.test", "accountId": 3, "total": 5}).inserted_id
    pipeline.start_watcher()
    pipeline.start_worker()
    doc = wait_doc(pipeline, prod_id, lambda d: d.get("total") == 5, "adoption by bootstrap")
    assert doc["_id"] == old and doc["qaNotes"] == "from backup"
    assert pipeline.staging().count_documents({}) == 2
    assert pipeline.staging().find_one({"_id": fixture}) == {"_id": fixture, "qaFixture": True}
