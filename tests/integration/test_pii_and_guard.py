"""PII masking end to end, the same-deployment guard, `check` warnings and secret hygiene.

Real watcher and worker processes, real Redis, two MongoDB deployments (see tests/conftest.py).
Raw PII values carry a random token per test, so a leak is found by looking for the values
(and the token alone) in everything the pipeline leaves behind: every document on the staging
server, every key and value in the test Redis DB (Celery message bodies decoded), the
captured process logs and the output of the CLI.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from bson import ObjectId, json_util
from bson.json_util import CANONICAL_JSON_OPTIONS
from pymongo import MongoClient
from stagesync.cli.local_servers import free_port
from stagesync.rules.identity import encode_id, key_digest
from stagesync.rules.pii import Masker
from stagesync.settings.pii_rules import parse_pii_rule

from tests.support.pipeline import VENV_BIN, Pipeline, Proc, collection_config, wait_for
from tests.support.snapshots import production_snapshot

TIMEOUT = 60
SECRET = b"test-secret"  # what tests/support/pipeline.py configures as pii_secret
RESERVED_EMAIL = re.compile(r"@(?:[a-z0-9-]+\.)*(?:example\.(?:com|org|net)|[a-z0-9-]+\.test)$")
# rules/pii.py: Ofcom's drama range, +44 7700 900000 to +44 7700 900999.
RESERVED_PHONE = re.compile(r"^\+44 7700 900\d{3}$")
PII_RULES = {
    "userEmail": "hash",
    "customer.name": "fake:name",
    "customer.phone": "fake:phone",
    "customer.address": "fake:address",
    "contacts.email": "fake:email",
    "contacts.phone": "drop",
}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def token() -> str:
    """Random and recognisable; `zq` keeps it from ever looking like a hex digest."""
    return f"zq{uuid.uuid4().hex[:12]}"


def run_cli(pipeline: Pipeline, *args: str, env: Mapping[str, str] | None = None,
            drop_env: Iterable[str] = (), timeout: float = 90.0
            ) -> subprocess.CompletedProcess[str]:
    """`stagesync ...` with a wide terminal, so rich never wraps a value across lines."""
    environment = {**pipeline.env(), "COLUMNS": "400", **(env or {})}
    for name in drop_env:
        environment.pop(name, None)
    return subprocess.run([str(VENV_BIN / "stagesync"), *args], env=environment,
                          cwd=pipeline.workdir, capture_output=True, text=True, timeout=timeout)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"{result.stdout}\n{result.stderr}"


def squash(text: str) -> str:
    return "".join(text.lower().split())


def leaks(texts: Iterable[str], needles: Iterable[str]) -> set[str]:
    """Needles found in any text, case-insensitively, also across whitespace and line wraps."""
    wanted = [n for n in needles if n]
    found: set[str] = set()
    for text in texts:
        lowered, squashed = text.lower(), squash(text)
        for needle in wanted:
            if needle.lower() in lowered or squash(needle) in squashed:
                found.add(needle)
    return found


def staging_server_dump(client: MongoClient[Any]) -> dict[str, str]:
    """Every document of every collection of every database on the staging server."""
    dump: dict[str, str] = {}
    for database in client.list_database_names():
        for name in client[database].list_collection_names():
            documents = client[database][name].find({})
            dump[f"{database}.{name}"] = "\n".join(
                json_util.dumps(d, json_options=CANONICAL_JSON_OPTIONS) for d in documents
            )
    return dump


_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s]{16,}$")


def _expand(value: bytes | str | None) -> Iterator[str]:
    """A Redis value as text, plus every JSON string and base64 body found inside it."""
    if value is None:
        return
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    yield text
    try:
        parsed = json.loads(text)
    except ValueError:
        return
    yield from _walk(parsed)


def _walk(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, item in node.items():
            yield str(key)
            yield from _walk(item)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)
    elif isinstance(node, str):
        yield node
        if _BASE64.match(node):  # Celery message bodies (body_encoding: base64), and any other
            try:
                decoded = base64.b64decode(node, validate=False).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return
            yield from _expand(decoded)


def redis_dump(url: str) -> list[str]:
    """Every key of the test Redis DB and its content by type, Celery bodies decoded."""
    client = redis.Redis.from_url(url)
    texts: list[str] = []
    try:
        for key in client.scan_iter(count=1000):
            texts.append(key.decode("utf-8", "replace"))
            kind = client.type(key).decode()
            values: list[Any] = []
            if kind == "string":
                values = [client.get(key)]
            elif kind == "list":
                values = list(client.lrange(key, 0, -1))
            elif kind == "hash":
                values = [part for pair in client.hgetall(key).items() for part in pair]
            elif kind == "set":
                values = list(client.smembers(key))
            elif kind == "zset":
                values = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
            elif kind == "stream":
                values = [json.dumps({k.decode(): v.decode("utf-8", "replace")
                                      for k, v in fields.items()})
                          for _, fields in client.xrange(key)]
            for value in values:
                texts.extend(_expand(value))
    finally:
        client.close()
    return texts


def log_text(proc: Proc) -> str:
    return proc.log_path.read_text(errors="replace") if proc.log_path.exists() else ""


def expected_pseudonym(value: str) -> str:
    """The documented `hash` output, computed here independently of the product."""
    canonical = json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS).encode()
    return "h:" + hmac.new(SECRET, canonical, hashlib.sha256).hexdigest()


def staging_by_pid(pipeline: Pipeline, production_id: Any) -> dict[str, Any] | None:
    return pipeline.staging().find_one({"_sync.pid": {"$eq": encode_id(production_id)}})


def wait_staging(pipeline: Pipeline, production_id: Any, check: Any, what: str
                 ) -> dict[str, Any]:
    return wait_for(
        lambda: (d := staging_by_pid(pipeline, production_id)) is not None and check(d) and d,
        TIMEOUT, what, pipeline,
    )


def wait_exit(proc: Proc, timeout: float) -> int | None:
    try:
        return proc.process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


# --------------------------------------------------------------------------------------------
# 1. PII end to end
# --------------------------------------------------------------------------------------------


def person(tag: str, label: str, email: str, account: int | None) -> dict[str, Any]:
    """A production document whose every personal value is unique and carries the token."""
    document: dict[str, Any] = {
        "_id": ObjectId(),
        "userEmail": email,
        "customer": {
            "name": f"{label.title()} {tag} Whitfield",
            "phone": f"+1 202 555 {label}{tag}",
            "address": {"street": f"{tag} {label} Lane 12", "city": f"Town{label}{tag}",
                        "zip": f"Z{label}{tag}"},
        },
        "contacts": [
            {"email": f"{label}.first.{tag}@corpmail.io", "phone": f"+1 303 {label}{tag} 1"},
            {"email": f"{label}.second.{tag}@corpmail.io", "phone": f"+1 303 {label}{tag} 2"},
        ],
    }
    if account is not None:
        document["accountId"] = account
    return document


def raw_values(document: Mapping[str, Any]) -> set[str]:
    """The personal values of a `person` document."""
    customer = document["customer"]
    values = {document["userEmail"], customer["name"], customer["phone"],
              *customer["address"].values()}
    for contact in document["contacts"]:
        values |= {contact["email"], contact["phone"]}
    return values


def test_pii_never_leaves_production_readers_and_hashed_keys_keep_matching(
    pipeline_factory: Any,
) -> None:
    tag = token()
    plain = token()  # a non-PII marker: proves the dumps below really hold the documents
    pipeline: Pipeline = pipeline_factory([collection_config("people", pii=PII_RULES)])
    name = pipeline.collections[0]["name"]
    prod = pipeline.prod()
    masker = Masker({p: parse_pii_rule(p, r) for p, r in PII_RULES.items()}, SECRET)
    shared_email = f"Ann.Shared.{tag}@corpmail.io"
    shared_contact = f"shared.contact.{tag}@corpmail.io"
    needles: set[str] = {tag}

    def remember(document: Mapping[str, Any]) -> None:
        needles.update(raw_values(document))
        if document.get("accountId") is not None:
            # An unkeyed digest of a raw key is as good as the raw key to a dictionary attack.
            needles.add(key_digest([document["userEmail"], document["accountId"]]))

    # Before the watcher: copied by the bootstrap's full resync.
    ann = person(tag, "ann", shared_email, 1)
    ann["contacts"].append({"email": shared_contact, "phone": f"+1 404 {tag} 9"})
    ann["plan"] = f"gold-{plain}"
    prod.insert_one(ann)
    remember(ann)

    pipeline.start_watcher()
    pipeline.wait_streaming()
    # Streamed: the same email under another account, a keyless one, one to delete.
    bob = person(tag, "bob", shared_email, 2)
    bob["contacts"].append({"email": shared_contact, "phone": f"+1 404 {tag} 8"})
    keyless = person(tag, "cyd", f"Cyd.{tag}@corpmail.io", None)
    dee = person(tag, "dee", f"Dee.{tag}@corpmail.io", 4)
    for document in (bob, keyless, dee):
        prod.insert_one(document)
        remember(document)

    # No worker yet: the changes wait in Redis as Celery messages. They carry production
    # `_id`s (ObjectIds, not personal data) and never a document body.
    def queued_snapshot() -> list[str] | None:
        texts = redis_dump(pipeline.redis_url)
        assert not leaks(texts, needles), f"raw PII in Redis: {leaks(texts, needles)}"
        joined = "\n".join(texts)
        # `"chord"` is only in a decoded message body (`[args, kwargs, embed]`).
        decoded = str(bob["_id"]) in joined and '"chord"' in joined
        return texts if decoded and "apply_batch" in joined else None

    wait_for(queued_snapshot, TIMEOUT, "queued messages naming bob's _id in Redis", pipeline)

    pipeline.start_worker()
    ann_doc = wait_staging(pipeline, ann["_id"], lambda d: "customer" in d, "ann synced")
    bob_doc = wait_staging(pipeline, bob["_id"], lambda d: "customer" in d, "bob synced")
    dee_doc = wait_staging(pipeline, dee["_id"], lambda d: "customer" in d, "dee synced")
    wait_for(lambda: pipeline.state()["dead_letters"].find_one(
        {"pid": {"$eq": encode_id(keyless["_id"])}}), TIMEOUT, "keyless dead-lettered", pipeline)
    assert staging_by_pid(pipeline, keyless["_id"]) is None

    # Masked exactly as the rules say, the moment production was read.
    for source, doc in ((ann, ann_doc), (bob, bob_doc), (dee, dee_doc)):
        masked = masker.mask(source)
        assert doc["userEmail"] == expected_pseudonym(source["userEmail"])
        assert doc["customer"] == masked["customer"]
        assert doc["contacts"] == masked["contacts"]
        assert doc["_sync"]["key"] == key_digest([doc["userEmail"], source["accountId"]])
        customer = doc["customer"]
        assert RESERVED_PHONE.match(customer["phone"]), customer["phone"]
        assert re.fullmatch(r"[A-Z][A-Za-z'.-]+( [A-Z][A-Za-z'.-]+)+", customer["name"]), \
            customer["name"]
        assert set(customer["address"]) == {"street", "city", "zip"}
        for key, value in customer["address"].items():
            assert isinstance(value, str) and value and value != source["customer"]["address"][key]
        for contact in doc["contacts"]:
            assert "phone" not in contact  # drop
            assert RESERVED_EMAIL.search(contact["email"]), contact["email"]
    # Deterministic: the same raw value gives the same pseudonym / fake in two documents.
    assert ann_doc["userEmail"] == bob_doc["userEmail"]
    assert ann_doc["_sync"]["key"] != bob_doc["_sync"]["key"]  # accountId differs
    assert ann_doc["contacts"][2]["email"] == bob_doc["contacts"][2]["email"]
    assert ann_doc["plan"] == f"gold-{plain}"
    ann_staging_id, ann_key = ann_doc["_id"], ann_doc["_sync"]["key"]

    # An update that leaves userEmail alone: same staging document, same hashed key.
    new_phone = f"+1 202 555 0199 {tag}"
    needles.add(new_phone)
    prod.update_one({"_id": ann["_id"]}, {"$set": {"customer.phone": new_phone,
                                                   "plan": f"platinum-{plain}"}})
    doc = wait_staging(pipeline, ann["_id"], lambda d: d.get("plan") == f"platinum-{plain}",
                       "ann's phone update")
    assert doc["_id"] == ann_staging_id and doc["_sync"]["key"] == ann_key
    assert doc["userEmail"] == expected_pseudonym(shared_email)
    assert doc["customer"]["phone"] == masker.mask({"customer": {"phone": new_phone}}
                                                   )["customer"]["phone"]
    assert RESERVED_PHONE.match(doc["customer"]["phone"])

    # Changing the email's case changes the business key: the staging document moves along.
    upper_email = shared_email.upper()
    needles.add(upper_email)
    needles.add(key_digest([upper_email, 1]))
    prod.update_one({"_id": ann["_id"]}, {"$set": {"userEmail": upper_email}})
    doc = wait_staging(pipeline, ann["_id"],
                       lambda d: d["userEmail"] == expected_pseudonym(upper_email),
                       "ann's email case change")
    assert doc["_id"] == ann_staging_id
    assert doc["_sync"]["key"] == key_digest([expected_pseudonym(upper_email), 1])
    assert pipeline.staging().count_documents({"_sync.key": {"$eq": ann_key}}) == 0

    # A dropped field changes in production: nothing of it reaches staging.
    new_contact_phone = f"+1 303 0142 {tag}"
    needles.add(new_contact_phone)
    prod.update_one({"_id": bob["_id"]}, {"$set": {"contacts.0.phone": new_contact_phone,
                                                   "plan": f"silver-{plain}"}})
    doc = wait_staging(pipeline, bob["_id"], lambda d: d.get("plan") == f"silver-{plain}",
                       "bob's contact update")
    assert doc["_id"] == bob_doc["_id"] and doc["contacts"] == bob_doc["contacts"]

    # Delete, then re-insert the same (email, account) under a new production _id: the
    # staging document is found again by its hashed business key, not by production _id.
    prod.delete_one({"_id": dee["_id"]})
    wait_staging(pipeline, dee["_id"], lambda d: d.get("deleted") is True, "dee soft-deleted")
    dee_again = person(tag, "dee", dee["userEmail"], 4)
    dee_again["customer"]["name"] = f"Dee {tag} Renamed"
    prod.insert_one(dee_again)
    remember(dee_again)
    doc = wait_staging(pipeline, dee_again["_id"], lambda d: d.get("deleted") is False,
                       "dee revived under a new production _id")
    assert doc["_id"] == dee_doc["_id"] and doc["_sync"]["key"] == dee_doc["_sync"]["key"]
    assert doc["userEmail"] == dee_doc["userEmail"]
    assert doc["customer"]["name"] == masker.mask(dee_again)["customer"]["name"]

    # And a delete that stays: the soft-deleted document keeps only masked values.
    prod.delete_one({"_id": bob["_id"]})
    doc = wait_staging(pipeline, bob["_id"], lambda d: d.get("deleted") is True,
                       "bob soft-deleted")
    assert doc["userEmail"] == expected_pseudonym(shared_email)

    # (a) staging: every database on the server, the state database included.
    dump = staging_server_dump(pipeline.staging_client)
    state = "\n".join(text for ns, text in dump.items() if ns.startswith(f"{pipeline.state_db}."))
    assert str(keyless["_id"]) in state and "missing_business_key" in state  # dead letter
    assert f"{pipeline.state_db}.watchers" in dump  # checkpoints
    assert f"platinum-{plain}" in "\n".join(dump.values())
    found = leaks(dump.values(), needles)
    assert not found, f"raw PII in staging: {found}"

    # (c) CLI output: status, the dead-letter store, verify (which reads production).
    status = run_cli(pipeline, "status", "--json")
    assert name in status.stdout, output(status)
    dlq = run_cli(pipeline, "dlq", "list", "--json")
    assert dlq.returncode == 0 and str(keyless["_id"]) in dlq.stdout, output(dlq)
    shown = run_cli(pipeline, "dlq", "show", encode_id(keyless["_id"]), "--collection", name)
    verify = run_cli(pipeline, "verify", name, "--settle", "3")
    assert verify.returncode == 1, output(verify)  # the keyless document is dead-lettered
    assert "dead-lettered" in verify.stdout, output(verify)
    verify_json = run_cli(pipeline, "verify", name, "--settle", "3", "--json")
    report = json.loads(verify_json.stdout)
    assert report["different_fields"] == {}, report  # staging equals masked production
    assert list(report["dead_lettered"]) == [encode_id(keyless["_id"])], report
    cli_texts = [output(r) for r in (status, dlq, shown, verify, verify_json)]
    found = leaks(cli_texts, needles)
    assert not found, f"raw PII in CLI output: {found}"

    # (b) Redis, after the run.
    texts = redis_dump(pipeline.redis_url)
    found = leaks(texts, needles)
    assert not found, f"raw PII in Redis: {found}"

    # (c) the watcher's and the worker's captured logs.
    for proc in pipeline.procs:
        proc.terminate()
    logs = {proc.log_path.name: log_text(proc) for proc in pipeline.procs}
    assert any("applied" in text for text in logs.values()), logs.keys()
    found = leaks(logs.values(), needles)
    assert not found, f"raw PII in process logs: {found}"


# --------------------------------------------------------------------------------------------
# 2. Same-deployment guard
# --------------------------------------------------------------------------------------------


def _same_deployment_pipeline(pipeline_factory: Any, mongo_pair: Any, alias: str) -> Pipeline:
    prod_uri: str = mongo_pair.prod_uri
    if alias == "same-uri":
        staging_uri = prod_uri
    else:
        if "127.0.0.1" not in prod_uri:
            pytest.skip("production is not addressed as 127.0.0.1 here")
        staging_uri = prod_uri.replace("127.0.0.1", "localhost")
    pipeline: Pipeline = pipeline_factory([collection_config("orders")],
                                          staging={"uri": staging_uri})
    return pipeline


REFUSAL = re.compile(r"staging\s+URI\s+reaches\s+the\s+production\s+deployment", re.IGNORECASE)


def _refuse_everywhere(pipeline: Pipeline) -> None:
    check = run_cli(pipeline, "check")
    assert check.returncode != 0, output(check)
    assert REFUSAL.search(output(check)), output(check)
    assert "check passed" not in output(check)

    watcher = pipeline.start_watcher()
    code = wait_exit(watcher, 30)
    assert code == 3, f"watch exit code {code}\n{log_text(watcher)}"
    assert REFUSAL.search(log_text(watcher)), log_text(watcher)

    worker = pipeline.start_worker(concurrency=1)
    code = wait_exit(worker, 30)
    assert code is not None and code != 0, f"worker exit code {code}\n{log_text(worker)}"
    assert REFUSAL.search(log_text(worker)), log_text(worker)
    # Refused before consuming: neither stagesync's "worker ready" nor Celery's "... ready."
    assert "worker ready" not in log_text(worker) and " ready." not in log_text(worker)


@pytest.mark.parametrize("alias", ["same-uri", "localhost"])
def test_staging_that_reaches_production_is_refused(
    pipeline_factory: Any, mongo_pair: Any, alias: str
) -> None:
    pipeline = _same_deployment_pipeline(pipeline_factory, mongo_pair, alias)
    source = pipeline.prod()
    source.insert_one({"userEmail": "guard@corp.test", "accountId": 1, "total": 1})
    before = production_snapshot(pipeline.prod_client)

    _refuse_everywhere(pipeline)

    after = production_snapshot(pipeline.prod_client)
    # The namespaces production had are untouched: same documents, same indexes, and nothing
    # stagesync would create in staging (state, indexes, synced documents) landed there.
    assert {ns: after[ns] for ns in before} == before
    target_db = pipeline.collections[0]["target"].split(".")[0]
    assert not [ns for ns in after if ns.startswith(f"{target_db}.")]
    state = [ns for ns in after if ns.startswith(f"{pipeline.state_db}.")]
    assert not state, state  # the guard decides with reads only


@pytest.mark.parametrize("alias", ["same-uri", "localhost"])
def test_refused_attempts_create_nothing_in_production(
    pipeline_factory: Any, mongo_pair: Any, alias: str
) -> None:
    pipeline = _same_deployment_pipeline(pipeline_factory, mongo_pair, alias)
    pipeline.prod().insert_one({"userEmail": "guard@corp.test", "accountId": 1})
    before = production_snapshot(pipeline.prod_client)
    check = run_cli(pipeline, "check")
    assert check.returncode != 0 and REFUSAL.search(output(check)), output(check)
    assert production_snapshot(pipeline.prod_client) == before


# --------------------------------------------------------------------------------------------
# 3. `stagesync check` warnings, validation, and passwords
# --------------------------------------------------------------------------------------------


def test_check_warns_about_unmatched_pii_rules_and_production_soft_delete_field(
    pipeline_factory: Any,
) -> None:
    rules = {"userEmail": "hash", "customer.phone": "fake:phone",
             "customer.middleName": "redact", "contacts.fax": "drop"}
    pipeline: Pipeline = pipeline_factory([collection_config("orders", pii=rules)])
    name = pipeline.collections[0]["name"]
    pipeline.prod().insert_many([
        {"userEmail": f"w{i}@corp.test", "accountId": i, "deleted": False,
         "customer": {"name": "W", "phone": "+1 555 0100"}, "contacts": [{"email": "x"}]}
        for i in range(3)
    ])
    result = run_cli(pipeline, "check")
    text = " ".join(output(result).split())
    assert result.returncode == 0, output(result)
    assert "production and staging are distinct" in text and "check passed" in text
    for path in ("customer.middleName", "contacts.fax"):
        assert f"pii rule '{path}' matches nothing" in text, text
    for path in ("userEmail", "customer.phone"):
        assert f"pii rule '{path}'" not in text, text
    assert f"{name}: production documents already have a 'deleted' field" in text, text


def test_keyed_rule_without_a_secret_fails_validation_naming_the_key(
    pipeline_factory: Any,
) -> None:
    pipeline: Pipeline = pipeline_factory(
        [collection_config("orders", pii={"userEmail": "hash", "customer.name": "redact"})])
    name = pipeline.collections[0]["name"]
    config = pipeline.config()
    del config["pii_secret"]
    path = pipeline.workdir / "no-secret.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_cli(pipeline, "check", "--config", str(path),
                     drop_env=["STAGESYNC_PII_SECRET"])
    text = " ".join(output(result).split())
    assert result.returncode == 2, output(result)
    assert f"collections[0] ({name}).pii.userEmail" in text, text
    assert "STAGESYNC_PII_SECRET" in text, text
    assert "customer.name" not in text, text  # `redact` needs no secret
    assert "Traceback" not in text, text

    # The secret from the environment makes the same file valid.
    result = run_cli(pipeline, "check", "--config", str(path),
                     env={"STAGESYNC_PII_SECRET": "from-env"})
    assert result.returncode == 0, output(result)


def _with_credentials(uri: str, password: str) -> str:
    scheme, _, rest = uri.partition("://")
    return f"{scheme}://stageuser:{password}@{rest}"


def _password_never_shown(pipeline: Pipeline, config_path: Path, secret: str,
                          expect: str) -> None:
    env = {"STAGESYNC_CONFIG": str(config_path)}
    check = run_cli(pipeline, "check", env=env)
    assert check.returncode != 0, output(check)
    assert expect in output(check), output(check)
    watcher = pipeline.start("watcher", [str(VENV_BIN / "stagesync"), "watch",
                                         "--config", str(config_path)])
    # Its first error report carries the driver's message, the likeliest place for a leak.
    wait_for(lambda: watcher.process.poll() is not None or '"level": "ERROR"' in log_text(watcher),
             20, "the watcher's first error report", pipeline)
    watcher.kill()
    status = run_cli(pipeline, "status", "--json", env=env)
    texts = [output(check), log_text(watcher), output(status), *redis_dump(pipeline.redis_url)]
    assert texts[1].strip(), "the watcher wrote nothing"
    found = leaks(texts, [secret])
    assert not found, f"password shown:\n{output(check)}\n{log_text(watcher)}\n{output(status)}"


def test_uri_passwords_never_appear_in_output_or_logs(
    pipeline_factory: Any, mongo_pair: Any
) -> None:
    secret = f"S3cr{token()}"
    password = f"{secret}%21x"  # percent-encoded in the URI; `secret` is in both spellings
    pipeline: Pipeline = pipeline_factory([collection_config("orders")])
    if "@" in mongo_pair.prod_uri:
        pytest.skip("production URI already carries credentials")
    started = time.monotonic()

    # Nothing listens on this port: connecting fails after the selection timeout.
    down = f"mongodb://stageuser:{password}@127.0.0.1:{free_port()}/?directConnection=true" \
           "&serverSelectionTimeoutMS=1500"
    config = pipeline.config()
    config["prod"] = {"uri": down}
    path = pipeline.workdir / "down.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    _password_never_shown(pipeline, path, secret, "production unreachable")

    # The real production server, with credentials it does not expect (a deployment without
    # these users rejects them): whatever fails, no password.
    config["prod"] = {"uri": _with_credentials(mongo_pair.prod_uri, password)}
    path = pipeline.workdir / "auth.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    _password_never_shown(pipeline, path, secret, "configuration: ok")

    # A Redis URL with a password the machine's Redis does not expect.
    config["prod"] = {"uri": mongo_pair.prod_uri}
    redis_base, _, database = pipeline.redis_url.rpartition("/")
    config["redis_url"] = _with_credentials(f"{redis_base}/{database}", password)
    path = pipeline.workdir / "redis.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    _password_never_shown(pipeline, path, secret, "redis unreachable")
    assert time.monotonic() - started < 90
