"""Strict PII mode end to end, the record of unclassified paths, `stagesync pii scan`, and the
unique-index warning of `check`. Real watcher and worker processes, real Redis, two MongoDB
deployments; raw values carry a random token and are searched for everywhere the pipeline
leaves something (see test_pii_and_guard.py for the searches)."""

from __future__ import annotations

import json
import logging
import textwrap
import urllib.request
from typing import Any

import pytest
import yaml
from bson import ObjectId
from stagesync.cli.local_servers import free_port
from stagesync.protocol.names import UNCLASSIFIED
from stagesync.rules.identity import encode_id
from stagesync.settings.collection import CollectionSettings
from stagesync.state.unclassified_paths import (
    MAX_PATHS_PER_COLLECTION,
    forget_classified,
    held_count,
    record_unclassified,
    unclassified_report,
)

from tests.integration.test_pii_and_guard import (
    leaks,
    log_text,
    output,
    redis_dump,
    run_cli,
    staging_server_dump,
    token,
)
from tests.support.backends import MongoPair
from tests.support.pii_data import PERSONAL, generated_orders
from tests.support.pipeline import Pipeline, collection_config, unique, wait_for
from tests.support.snapshots import production_snapshot

TIMEOUT = 60


# --------------------------------------------------------------------------------------------
# The record in the state database
# --------------------------------------------------------------------------------------------


@pytest.fixture
def state_db(mongo_pair: MongoPair) -> Any:
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(mongo_pair.staging_uri)
    name = unique("st_")
    yield client[name]
    client.drop_database(name)
    client.close()


def strict_orders(name: str, **overrides: Any) -> CollectionSettings:
    config: dict[str, Any] = {"name": name, "source": "p.orders", "target": "s.orders",
                              "business_key": ["userEmail"], "pii_mode": "strict",
                              "allow": ["plan"]}
    config.update(overrides)
    return CollectionSettings(**config)


def test_record_unclassified_counts_bounds_and_warns_once(
    state_db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    name = unique("orders")
    caplog.set_level(logging.WARNING, logger="stagesync.pii")
    assert record_unclassified(state_db, name, {}) == []  # open mode: nothing, no I/O
    assert state_db.list_collection_names() == []

    new = record_unclassified(state_db, name, {"ssn": 2, "customer.dateOfBirth": 1})
    assert sorted(new) == ["customer.dateOfBirth", "ssn"]
    assert record_unclassified(state_db, name, {"ssn": 3}) == []  # known: counted, not new
    record = state_db[UNCLASSIFIED].find_one({"collection": name, "path": "ssn"})
    assert record["count"] == 5 and record["firstSeen"] <= record["lastSeen"]
    warnings = [r for r in caplog.records if r.getMessage().startswith("unclassified path")]
    assert sorted(r.path for r in warnings) == ["customer.dateOfBirth", "ssn"]  # once each
    assert held_count(state_db, name) == 2

    # A field name that is itself personal data (a map keyed by email) is recorded as `*`.
    assert record_unclassified(state_db, name, {"byEmail.ann\\.lee@corp\\.io": 1}) == [
        "byEmail.*"]
    texts = json.dumps([r.__dict__.get("path") for r in caplog.records])
    dump = json.dumps(list(state_db[UNCLASSIFIED].find({}, {"_id": 0, "path": 1})))
    assert "lee@corp" not in texts and "lee@corp" not in dump

    # Bounded: beyond the cap, new paths are only counted.
    many = {f"field{i}": 1 for i in range(MAX_PATHS_PER_COLLECTION + 30)}
    record_unclassified(state_db, name, many)
    assert state_db[UNCLASSIFIED].count_documents({"collection": name}) == \
        MAX_PATHS_PER_COLLECTION
    overflow = state_db[UNCLASSIFIED].find_one({"overflowOf": name})
    assert overflow["paths"] == 33  # 3 recorded before + 230 offered - 200 places
    assert held_count(state_db, name) == MAX_PATHS_PER_COLLECTION


def test_report_shows_what_the_configuration_still_leaves_out(state_db: Any) -> None:
    name = unique("orders")
    record_unclassified(state_db, name, {"ssn": 1, "customer.dateOfBirth": 1, "notes": 4})
    report = unclassified_report(state_db, strict_orders(name))
    assert [entry["path"] for entry in report["paths"]] == [
        "customer.dateOfBirth", "notes", "ssn"]
    assert report["paths"][1]["count"] == 4 and report["paths"][1]["first_seen"]

    allowed = strict_orders(name, allow=["plan", "customer"], pii={"notes": "redact"})
    assert [e["path"] for e in unclassified_report(state_db, allowed)["paths"]] == ["ssn"]
    assert unclassified_report(state_db, strict_orders(name, pii_mode="open"))["paths"] == []

    assert forget_classified(state_db, allowed) == 2
    assert state_db[UNCLASSIFIED].count_documents({"collection": name}) == 1
    assert held_count(state_db, name) == 1
    assert forget_classified(state_db, strict_orders(name, pii_mode="open")) == 1
    assert held_count(state_db, name) == 0


# --------------------------------------------------------------------------------------------
# Strict mode end to end
# --------------------------------------------------------------------------------------------


def status_row(pipeline: Pipeline) -> dict[str, Any]:
    result = run_cli(pipeline, "status", "--json")
    assert result.stdout, output(result)
    return json.loads(result.stdout)["collections"][0]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_strict_collection_leaves_new_fields_out_until_they_are_allowed(
    pipeline_factory: Any,
) -> None:
    tag = token()
    worker_port = free_port()
    pipeline: Pipeline = pipeline_factory(
        [collection_config("people", pii={"userEmail": "hash", "customer.name": "fake:name"},
                           pii_mode="strict", allow=["plan", "customer.tier"])],
        metrics={"worker_port_base": worker_port},
    )
    name = pipeline.collections[0]["name"]
    prod = pipeline.prod()
    first = {"_id": ObjectId(), "userEmail": f"ann.{tag}@corp.io", "accountId": 1,
             "plan": "gold", "customer": {"name": f"Ann {tag}", "tier": 1}}
    prod.insert_one(first)
    worker = pipeline.start_worker(concurrency=1)
    pipeline.start_watcher()
    pipeline.wait_streaming()
    wait_for(lambda: pipeline.staging().find_one({"plan": "gold"}), TIMEOUT, "first copy",
             pipeline)

    # While streaming, production gains a new top-level and a new nested field.
    secret_top = f"loyalty-{tag}-top"
    secret_nested = f"1980-{tag}-nested"
    second = {"_id": ObjectId(), "userEmail": f"bob.{tag}@corp.io", "accountId": 2,
              "plan": "silver", "loyaltyCode": secret_top,
              "customer": {"name": f"Bob {tag}", "tier": 2, "birthDate": secret_nested}}
    prod.insert_one(second)
    prod.update_one({"_id": first["_id"]}, {"$set": {
        "loyaltyCode": f"{secret_top}-ann", "customer.birthDate": f"{secret_nested}-ann",
        "plan": "platinum"}})
    needles = {secret_top, secret_nested, f"{secret_top}-ann", f"{secret_nested}-ann",
               first["userEmail"], second["userEmail"], first["customer"]["name"],
               second["customer"]["name"]}

    def synced(pid: Any, plan: str) -> Any:
        return wait_for(lambda: pipeline.staging().find_one(
            {"_sync.pid": {"$eq": encode_id(pid)}, "plan": plan}), TIMEOUT,
            f"{plan} copied", pipeline)

    bob = synced(second["_id"], "silver")
    ann = synced(first["_id"], "platinum")
    for document in (ann, bob):
        assert "loyaltyCode" not in document
        assert set(document["customer"]) == {"name", "tier"}
    assert bob["customer"]["tier"] == 2

    # Recorded by the workers: `status --json` names both paths, as a warning too.
    row = wait_for(lambda: (r := status_row(pipeline)) and len(r["unclassified_paths"]) >= 2
                   and r, TIMEOUT, "unclassified paths in status", pipeline)
    paths = {entry["path"]: entry for entry in row["unclassified_paths"]}
    assert set(paths) == {"loyaltyCode", "customer.birthDate"}
    assert paths["loyaltyCode"]["count"] >= 2
    assert any("loyaltyCode" in w and "customer.birthDate" in w for w in row["warnings"])
    assert "stagesync_pii_unclassified_paths{" in scrape(worker_port)
    assert f'stagesync_pii_unclassified_paths{{collection="{name}"}} 2.0' in scrape(worker_port)
    text = run_cli(pipeline, "status")
    assert "loyaltyCode" in " ".join(output(text).split())

    # `check` fails, naming both.
    check = run_cli(pipeline, "check")
    flat = " ".join(output(check).split())
    assert check.returncode == 1, output(check)
    assert "loyaltyCode" in flat and "customer.birthDate" in flat, flat
    assert "pii_mode strict" in flat

    # No raw value anywhere: staging (every database), Redis, CLI output, process logs.
    assert not leaks(staging_server_dump(pipeline.staging_client).values(), needles)
    assert not leaks(redis_dump(pipeline.redis_url), needles)
    assert not leaks([output(check), output(text), json.dumps(row)], needles)
    worker_log = log_text(worker)
    assert "unclassified path left out of staging" in worker_log
    assert '"path": "loyaltyCode"' in worker_log
    assert '"path": "customer.birthDate"' in worker_log
    assert not leaks([log_text(proc) for proc in pipeline.procs], needles)

    # Allowed, then resynced: copied. The workers read the new configuration on restart.
    pipeline.collections[0]["allow"] = ["plan", "customer.tier", "customer.birthDate",
                                        "loyaltyCode"]
    pipeline.write_config()
    worker.terminate()
    pipeline.start_worker(concurrency=1)
    resync = pipeline.cli("resync", name, "--wait", "--timeout", "120")
    assert resync.returncode == 0, resync.stdout + resync.stderr
    ann = wait_for(lambda: pipeline.staging().find_one(
        {"_sync.pid": {"$eq": encode_id(first["_id"])}, "loyaltyCode": {"$exists": True}}),
        TIMEOUT, "ann's allowed fields", pipeline)
    assert ann["loyaltyCode"] == f"{secret_top}-ann"
    assert ann["customer"]["birthDate"] == f"{secret_nested}-ann"
    bob = pipeline.staging().find_one({"_sync.pid": {"$eq": encode_id(second["_id"])}})
    assert bob["loyaltyCode"] == secret_top and bob["customer"]["birthDate"] == secret_nested
    assert status_row(pipeline)["unclassified_paths"] == []
    check = run_cli(pipeline, "check")
    assert check.returncode == 0, output(check)


def test_a_resync_records_the_paths_it_leaves_out(pipeline_factory: Any) -> None:
    tag = token()
    pipeline: Pipeline = pipeline_factory(
        [collection_config("people", pii_mode="strict", allow=["plan"])])
    pipeline.prod().insert_many([{"userEmail": f"u{i}@corp.test", "accountId": i,
                                  "plan": "gold", "nationalId": f"{tag}-{i}"}
                                 for i in range(20)])
    pipeline.start_worker(concurrency=1)
    pipeline.start_watcher()  # no checkpoint yet: a full resync copies the documents
    wait_for(lambda: pipeline.staging().count_documents({"plan": "gold"}) == 20, TIMEOUT,
             "bootstrap copy", pipeline)
    assert pipeline.staging().count_documents({"nationalId": {"$exists": True}}) == 0
    row = wait_for(lambda: (r := status_row(pipeline))["unclassified_paths"] and r, TIMEOUT,
                   "unclassified path recorded by the resync", pipeline)
    assert [entry["path"] for entry in row["unclassified_paths"]] == ["nationalId"]
    assert row["unclassified_paths"][0]["count"] == 20


# --------------------------------------------------------------------------------------------
# `stagesync pii scan`, pasted, then `check`
# --------------------------------------------------------------------------------------------


def test_scan_proposal_pasted_into_the_config_passes_check(pipeline_factory: Any) -> None:
    pipeline: Pipeline = pipeline_factory([collection_config("orders")])
    name = pipeline.collections[0]["name"]
    documents = generated_orders(300)
    for document in documents:
        document.pop("_id")
    pipeline.prod().insert_many(documents)
    before = production_snapshot(pipeline.prod_client)

    scan = run_cli(pipeline, "pii", "scan", name, "--sample", "300")
    assert scan.returncode == 0, output(scan)
    assert production_snapshot(pipeline.prod_client) == before  # read only
    raw = {d["userEmail"] for d in documents} | {d["customer"]["phone"] for d in documents} \
        | {d["payment"]["cardNumber"] for d in documents}
    assert not leaks([output(scan)], raw)
    table, _, block = scan.stdout.partition("# stagesync pii scan")
    for path in ("payment.cardNumber", "customer.phone", "notes", "plan", "lines.sku"):
        assert path in table, table
    assert "aaaa" in table  # shapes

    # Pasted as printed under the collection's entry, in strict mode: `check` passes.
    block = "# stagesync pii scan" + block
    config = pipeline.config()
    entries = config.pop("collections")
    pasted = (yaml.safe_dump(config, sort_keys=False)
              + yaml.safe_dump({"collections": entries}, sort_keys=False)
              + textwrap.indent(block.replace("# pii_mode: strict", "pii_mode: strict"), "  "))
    path = pipeline.workdir / "pasted.yaml"
    path.write_text(pasted)
    check = run_cli(pipeline, "check", "--config", str(path))
    assert check.returncode == 0, output(check) + pasted
    assert "unclassified" not in output(check)
    loaded = yaml.safe_load(pasted)["collections"][0]
    assert loaded["pii_mode"] == "strict"
    assert loaded["pii"] == PERSONAL


def test_check_names_unclassified_paths_without_personal_field_names(
    pipeline_factory: Any,
) -> None:
    tag = token()
    pipeline: Pipeline = pipeline_factory(
        [collection_config("orders", pii_mode="strict", allow=["plan"])])
    pipeline.prod().insert_one({"userEmail": "u@corp.test", "accountId": 1, "plan": "gold",
                                "visitsByEmail": {f"ann.{tag}@corp.io": 3}})
    check = run_cli(pipeline, "check")
    flat = " ".join(output(check).split())
    assert check.returncode == 1, output(check)
    assert "visitsByEmail.*" in flat, flat
    assert tag not in flat


# --------------------------------------------------------------------------------------------
# `check`: many-to-one rules on fields a unique staging index covers
# --------------------------------------------------------------------------------------------


def test_check_warns_about_many_to_one_rules_under_unique_indexes(pipeline_factory: Any) -> None:
    rules = {"userEmail": "hash", "customer.email": "redact", "customer.phone": "fake:phone"}
    pipeline: Pipeline = pipeline_factory([collection_config("orders", pii=rules)])
    pipeline.prod().insert_one({"userEmail": "u@corp.test", "accountId": 1,
                                "customer": {"email": "c@corp.test", "phone": "+1 202 555 0142"}})
    staging = pipeline.staging()
    staging.create_index([("customer.email", 1)], unique=True, name="uniq_customer_email")
    staging.create_index([("customer.phone", 1)], unique=True, name="uniq_customer_phone")
    check = run_cli(pipeline, "check")
    flat = " ".join(output(check).split())
    assert check.returncode == 0, output(check)
    assert "pii rule 'customer.email: redact'" in flat and "uniq_customer_email" in flat, flat
    assert "uniq_customer_phone" not in flat  # fake is one-to-one enough: no warning
