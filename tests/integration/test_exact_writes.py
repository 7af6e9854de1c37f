"""What MongoDB itself decides about a write, checked where it is decided.

- A replacement that changes only BSON types or a sub-document's field order reaches staging
  exactly, and `verify` flags such a drift made by hand (decoded Python values cannot see it:
  `1 == 1.0 == True`, and dicts ignore order).
- Top-level field names starting with `$`, and names with dots, which update operators cannot
  address: such documents are created, updated and soft-deleted like any other, never frozen
  or dead-lettered.
- Write-concern errors (only `writeConcernErrors` in the bulk reply): the batch is not done;
  the error is transient, so the task retries it. Faked at the call site: the test server has
  no replication, so it cannot fail a write concern.
- Collations: every `_sync.*` read runs with the simple collation (the test server ignores
  collations, so the call site is checked: a staging collection restored with a
  case-insensitive default collation would otherwise match pids that differ only in case).
"""

from __future__ import annotations

from typing import Any

import pytest
from bson import Int64
from pymongo.errors import BulkWriteError, WriteConcernError
from stagesync.deployments.failures import is_transient
from stagesync.deployments.production import ProductionReader
from stagesync.deployments.staging import connect_staging
from stagesync.deployments.staging_indexes import ensure_indexes
from stagesync.rules.identity import encode_id
from stagesync.rules.pii import Masker
from stagesync.tasks.apply.applier import apply_changes
from stagesync.tasks.apply.context import ApplyContext

from tests.support.pipeline import Pipeline, wait_for

TIMEOUT = 30


def staged(pipeline: Pipeline, production_id: Any) -> dict[str, Any] | None:
    return pipeline.staging().find_one({"_sync.pid": encode_id(production_id)})


def test_type_and_order_changes_reach_staging_and_verify_sees_drift(pipeline: Pipeline) -> None:
    pipeline.start_watcher()
    pipeline.start_worker()
    pipeline.wait_streaming()
    prod = pipeline.prod()
    first = prod.insert_one({"userEmail": "t@x", "accountId": 1, "n": 1,
                             "flag": True, "sub": {"a": 1, "b": 2}}).inserted_id
    wait_for(lambda: staged(pipeline, first), TIMEOUT, "copy", pipeline)
    pipeline.staging().update_one({"_sync.pid": encode_id(first)}, {"$set": {"qa": 1}})

    # Only types and order change: 1 -> 1.0, True -> 1, int32 -> int64, {a, b} -> {b, a}.
    prod.replace_one({"_id": first}, {"userEmail": "t@x", "accountId": 1, "n": 1.0,
                                      "flag": 1, "big": Int64(7), "sub": {"b": 2, "a": 1}})

    def exact() -> dict[str, Any] | None:
        doc = staged(pipeline, first)
        if doc and list(doc["sub"]) == ["b", "a"] and type(doc["n"]) is float:
            return doc
        return None
    doc = wait_for(exact, TIMEOUT, "type and order change", pipeline)
    assert type(doc["flag"]) is int and type(doc["big"]) is Int64 and doc["qa"] == 1
    name = pipeline.collections[0]["name"]
    assert pipeline.cli("verify", name).returncode == 0

    # Drift by hand that only types and order show.
    pipeline.staging().update_one({"_id": doc["_id"]}, {"$set": {"n": 1, "sub": {"a": 1, "b": 2}}})
    drift = pipeline.cli("verify", name, "--settle", "0")
    assert drift.returncode == 1, drift.stdout
    assert "n" in drift.stdout and "sub (field order)" in drift.stdout

    # A resync repairs it.
    assert pipeline.cli("resync", name, "--wait", "--timeout", "120").returncode == 0
    assert pipeline.cli("verify", name).returncode == 0

    # Production starts writing into a sub-document QA made, amid its other fields: the
    # sub-document stays where QA put it (after them), which is no drift.
    pipeline.staging().update_one({"_id": doc["_id"]}, {"$set": {"zz": {"note": 1}}})
    prod.replace_one({"_id": first}, {"userEmail": "t@x", "accountId": 1, "zz": {"x": 1},
                                      "n": 1.0, "flag": 1, "big": Int64(7), "sub": {"b": 2}})
    doc = wait_for(lambda: (d := staged(pipeline, first)) and "a" not in d["sub"] and d,
                   TIMEOUT, "the write into QA's sub-document", pipeline)
    assert doc["zz"] == {"note": 1, "x": 1}
    result = pipeline.cli("verify", name, "--settle", "0")
    assert result.returncode == 0, result.stdout


def test_field_names_update_operators_cannot_address_are_synced(pipeline: Pipeline) -> None:
    pipeline.start_watcher()
    pipeline.start_worker()
    pipeline.wait_streaming()
    prod = pipeline.prod()
    # MongoDB 5.0+ stores `$`-prefixed and dotted names; a replacement or `$set` cannot name
    # them, so they would freeze the document if written that way.
    pid = prod.insert_one({"userEmail": "d@x", "accountId": 1, "$price": 1,
                           "price.eur": 2, "meta": {"$tag": "a"}}).inserted_id
    wait_for(lambda: (staged(pipeline, pid) or {}).get("$price") == 1, TIMEOUT, "insert",
             pipeline)
    pipeline.staging().update_one({"_sync.pid": encode_id(pid)}, {"$set": {"qaNotes": "keep"}})
    prod.update_one({"_id": pid}, [{"$replaceWith": {"$literal": {
        "_id": pid, "userEmail": "d@x", "accountId": 1, "$price": 3, "meta": {"$tag": "b"}}}}])
    doc = wait_for(lambda: (d := staged(pipeline, pid)) and d.get("$price") == 3 and d,
                   TIMEOUT, "update", pipeline)
    assert "price.eur" not in doc and doc["meta"] == {"$tag": "b"} and doc["qaNotes"] == "keep"
    prod.delete_one({"_id": pid})
    wait_for(lambda: (staged(pipeline, pid) or {}).get("deleted") is True, TIMEOUT,
             "soft delete", pipeline)
    assert pipeline.state()["dead_letters"].count_documents({}) == 0


def context_for(pipeline: Pipeline) -> tuple[ApplyContext, Any, Any]:
    settings = pipeline.settings
    collection = settings.collections[0]
    production = ProductionReader(settings.prod)
    staging = connect_staging(settings.staging)
    ensure_indexes(staging, settings)
    state = staging[settings.staging.state_db]
    context = ApplyContext.build(collection, Masker({}, b""), production.collection(collection),
                                 staging, state,)
    return context, production, staging


def test_a_write_concern_error_leaves_the_batch_not_done(pipeline: Pipeline) -> None:
    context, production, staging = context_for(pipeline)
    real = context.target.collection

    class NotReplicated:
        """The staging collection, whose bulk writes land on the primary but are not
        acknowledged by a majority: pymongo raises BulkWriteError with only
        `writeConcernErrors` (64 WriteConcernFailed, or 100 after a step-down)."""

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def bulk_write(self, operations: Any, ordered: bool = True) -> Any:
            result = real.bulk_write(operations, ordered=ordered)
            raise BulkWriteError({
                "writeErrors": [], "writeConcernErrors": [
                    {"code": 100, "errmsg": "UnsatisfiableWriteConcern: not enough nodes"}],
                "nInserted": result.inserted_count, "nMatched": result.matched_count,
                "nModified": result.modified_count, "nRemoved": 0, "nUpserted": 0,
                "upserted": []})

    pid = pipeline.prod().insert_one({"userEmail": "w@x", "accountId": 1}).inserted_id
    try:
        context.target.collection = NotReplicated()  # type: ignore[assignment]
        with pytest.raises(WriteConcernError) as raised:
            apply_changes(context, {encode_id(pid): "insert"})
        assert is_transient(raised.value)
    finally:
        production.close()
        staging.close()


def test_sync_reads_run_with_the_simple_collation(pipeline: Pipeline) -> None:
    context, production, staging = context_for(pipeline)
    real = context.target.collection
    seen: list[Any] = []

    class Recording:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def find(self, *args: Any, **kwargs: Any) -> Any:
            seen.append((args[0] if args else kwargs.get("filter"), kwargs.get("collation")))
            return real.find(*args, **kwargs)

    pid = pipeline.prod().insert_one({"userEmail": "c@x", "accountId": 1}).inserted_id
    try:
        context.target.collection = Recording()  # type: ignore[assignment]
        apply_changes(context, {encode_id(pid): "insert"})
        apply_changes(context, {encode_id(pid): "update"})
    finally:
        production.close()
        staging.close()
    sync_reads = [(query, collation) for query, collation in seen
                  if any(str(field).startswith(("_sync", "userEmail")) for field in query)]
    assert sync_reads and all(
        collation is not None and collation.document == {"locale": "simple"}
        for _, collation in sync_reads), sync_reads
