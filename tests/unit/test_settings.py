"""Configuration (`settings/`): the YAML file, `STAGESYNC_*` overrides, and errors that name keys.

Every test writes its YAML into `tmp_path` and goes through `settings.load_settings`, the
same entry point the CLI and the Celery app use.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from stagesync.protocol.routing import queues_of
from stagesync.settings import (
    CONFIG_ENV,
    CollectionSettings,
    ConfigError,
    Settings,
    config_path,
    load_settings,
    parse_rate_limit,
)
from stagesync.settings.durations import parse_duration
from stagesync.settings.pii_rules import PiiRule, parse_pii_rule

PASSWORD = "pa55word"
PROD_URI = f"mongodb://user:{PASSWORD}@prod-host:27017/?replicaSet=rs0"

Config = dict[str, Any]
Mutation = Callable[[Config], None]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No STAGESYNC_* variable from the machine may leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("STAGESYNC_"):
            monkeypatch.delenv(name)
    yield


def minimal() -> Config:
    return {
        "prod": {"uri": PROD_URI},
        "staging": {"uri": "mongodb://staging-host:27017/"},
        "pii_secret": "unit-secret",
        "collections": [
            {
                "name": "orders",
                "source": "production.orders",
                "target": "staging.orders",
                "business_key": ["userEmail", "accountId"],
                "pii": {"userEmail": "hash", "customer.phone": "drop"},
            }
        ],
    }


def full() -> Config:
    """Every key of the interface contract, plus every optional section."""
    return {
        "prod": {"uri": PROD_URI, "read_concern": "local"},
        "staging": {
            "uri": "mongodb://staging-host:27017/",
            "write_concern": 1,
            "state_db": "stagesync_state",
        },
        "redis_url": "redis://127.0.0.1:6379/3",
        "pii_secret": "file-secret",
        "allow_unsafe_concerns": True,  # read_concern local and write_concern 1 above
        "collections": [
            {
                "name": "orders",
                "source": "production.orders",
                "target": "staging.orders",
                "business_key": ["userEmail", "accountId"],
                "soft_delete_field": "deleted",
                "staging_fields": ["qaNotes", "qa.flags"],
                "pii": {
                    "customer.phone": "drop",
                    "customer.name": "redact",
                    "userEmail": "hash",
                    "customer.fax": "null",
                    "customer.email": "fake",
                    "billing.address": "fake:address",
                },
                "rate_limit": "2000/s",
                "partitions": 4,
                "filter": {"tenant": {"$in": ["a", "b"]}},
                "schema_version_field": "schemaVersion",
                "accepted_schema_versions": [2, 3, "3b"],
                "purge_deleted_after": "30d",
                "resync_chunk_size": 500,
            },
            {
                "name": "users",
                "source": "production.users",
                "target": "staging.users",
                "business_key": ["email"],
            },
        ],
        "watcher": {
            "batch_max_size": 200,
            "batch_max_wait_ms": 50,
            "max_unapplied": 5000,
            "inflight_timeout_seconds": 120,
            "checkpoint_interval_seconds": 2,
            "lease_seconds": 10,
            "idle_sleep_ms": 5,
        },
        "worker": {
            "visibility_timeout_seconds": 600,
            "task_time_limit_seconds": 300,
            "max_deliveries": 5,
            "max_retries": 4,
            "retry_backoff_max_seconds": 30,
        },
        "status": {"lag_threshold_seconds": 30, "stalled_after_seconds": 90},
        "metrics": {"watcher_port": 9100, "worker_port_base": 9200},
    }


def write(tmp_path: Path, data: Any, name: str = "stagesync.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def load(tmp_path: Path, data: Any) -> Settings:
    return load_settings(write(tmp_path, data))


def config_error(tmp_path: Path, data: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, data)
    return str(caught.value)


def assert_names(message: str, *fragments: str) -> None:
    """Every fragment appears, on one line of the message (one problem per line)."""
    lines = message.splitlines()
    assert any(all(fragment in line for fragment in fragments) for line in lines), (
        f"no line of the error names {fragments!r}:\n{message}"
    )


def collection(data: Config, index: int = 0) -> Config:
    entry: Config = data["collections"][index]
    return entry


# --- a valid configuration -------------------------------------------------------------------


def test_full_configuration_loads_every_contract_key(tmp_path: Path) -> None:
    loaded = load(tmp_path, full())

    assert loaded.prod.uri == PROD_URI
    assert loaded.prod.read_concern == "local"
    assert loaded.staging.uri == "mongodb://staging-host:27017/"
    assert loaded.staging.write_concern == 1
    assert loaded.staging.state_db == "stagesync_state"
    assert loaded.redis_url == "redis://127.0.0.1:6379/3"
    assert loaded.secret_bytes() == b"file-secret"

    orders = loaded.collection("orders")
    assert orders.name == "orders"
    assert orders.source == "production.orders"
    assert (orders.target_db, orders.target_collection) == ("staging", "orders")
    assert orders.business_key == ["userEmail", "accountId"]
    assert orders.soft_delete_field == "deleted"
    assert orders.staging_fields == ["qaNotes", "qa.flags"]
    assert orders.pii == {
        "customer.phone": PiiRule("drop"),
        "customer.name": PiiRule("redact"),
        "userEmail": PiiRule("hash"),
        "customer.fax": PiiRule("null"),
        "customer.email": PiiRule("fake", "email"),
        "billing.address": PiiRule("fake", "address"),
    }
    assert orders.rate_limit == "2000/s"
    item = parse_rate_limit(orders.rate_limit)
    assert (item.amount, item.get_expiry()) == (2000, 1)
    assert orders.partitions == 4
    assert queues_of(orders) == [f"stagesync.orders.{n}" for n in range(4)]
    assert orders.filter == {"tenant": {"$in": ["a", "b"]}}
    assert orders.schema_version_field == "schemaVersion"
    assert orders.accepted_schema_versions == [2, 3, "3b"]
    assert orders.purge_deleted_after == "30d"
    assert orders.purge_after() == timedelta(days=30)
    assert orders.resync_chunk_size == 500

    users = loaded.collection("users")
    assert users.soft_delete_field == "deleted"
    assert users.staging_fields == []
    assert users.pii == {}
    assert users.rate_limit is None
    assert users.purge_after() is None
    assert queues_of(users) == ["stagesync.users"]

    assert loaded.watcher.batch_max_size == 200
    assert loaded.watcher.batch_max_wait_ms == 50
    assert loaded.watcher.max_unapplied == 5000
    assert loaded.watcher.inflight_timeout_seconds == 120
    assert loaded.watcher.checkpoint_interval_seconds == 2
    assert loaded.watcher.lease_seconds == 10
    assert loaded.watcher.idle_sleep_ms == 5
    assert loaded.worker.visibility_timeout_seconds == 600
    assert loaded.worker.task_time_limit_seconds == 300
    assert loaded.worker.max_deliveries == 5
    assert loaded.worker.max_retries == 4
    assert loaded.worker.retry_backoff_max_seconds == 30
    assert loaded.status.lag_threshold_seconds == 30
    assert loaded.metrics.watcher_port == 9100


def test_contract_example_from_design_loads(tmp_path: Path) -> None:
    """The YAML of DESIGN.md's interface contract, verbatim apart from the secret."""
    text = """
prod:    {uri: "mongodb://prod-host:27017/?replicaSet=rs0"}
staging: {uri: "mongodb://staging-host:27017/"}
redis_url: "redis://127.0.0.1:6379/0"
pii_secret: "..."
collections:
  - name: orders
    source: production.orders
    target: staging.orders
    business_key: [userEmail, accountId]
    soft_delete_field: deleted
    staging_fields: [qaNotes]
    pii: {customer.phone: drop, customer.name: redact, userEmail: hash}
    rate_limit: "2000/s"
"""
    path = tmp_path / "contract.yaml"
    path.write_text(text, encoding="utf-8")
    loaded = load_settings(path)
    orders = loaded.collections[0]
    assert queues_of(orders) == ["stagesync.orders"]
    assert orders.pii["userEmail"].kind == "hash"
    assert orders.staging_fields == ["qaNotes"]


def test_defaults(tmp_path: Path) -> None:
    loaded = load(tmp_path, minimal())
    assert loaded.prod.read_concern == "majority"
    assert loaded.staging.write_concern == "majority"
    assert loaded.staging.state_db == "stagesync"
    assert loaded.redis_url == "redis://127.0.0.1:6379/0"
    orders = loaded.collections[0]
    assert orders.soft_delete_field == "deleted"
    assert orders.partitions == 1
    assert orders.filter is None
    assert orders.accepted_schema_versions is None
    assert (orders.indexes, orders.mirror_ttl) == ("mirror", False)
    assert (loaded.watcher.index_follow, loaded.watcher.index_poll_seconds) == ("auto", 45)
    assert loaded.watcher.max_inflight_groups == 64
    # The worker defaults respect their own rule: backoff and time limit below visibility.
    assert loaded.worker.retry_backoff_max_seconds < loaded.worker.visibility_timeout_seconds
    assert loaded.worker.task_time_limit_seconds < loaded.worker.visibility_timeout_seconds


def test_settings_are_frozen(tmp_path: Path) -> None:
    loaded = load(tmp_path, minimal())
    with pytest.raises(ValueError):
        loaded.collections[0].name = "other"  # type: ignore[misc]


def test_collection_lookup_names_the_known_collections(tmp_path: Path) -> None:
    loaded = load(tmp_path, full())
    with pytest.raises(KeyError) as caught:
        loaded.collection("invoices")
    assert "invoices" in str(caught.value)
    assert "orders" in str(caught.value) and "users" in str(caught.value)


def test_pii_secret_is_not_shown_in_repr(tmp_path: Path) -> None:
    loaded = load(tmp_path, minimal())
    assert "unit-secret" not in repr(loaded)
    assert "unit-secret" not in str(loaded.pii_secret)


# --- queues ----------------------------------------------------------------------------------


def make_collection(**overrides: Any) -> CollectionSettings:
    fields: Config = {
        "name": "orders",
        "source": "production.orders",
        "target": "staging.orders",
        "business_key": ["userEmail"],
    }
    fields.update(overrides)
    return CollectionSettings(**fields)


def test_queue_names_without_partitions() -> None:
    assert queues_of(make_collection()) == ["stagesync.orders"]
    assert queues_of(make_collection(partitions=1)) == ["stagesync.orders"]


@pytest.mark.parametrize("partitions", [2, 3, 16, 64])
def test_queue_names_with_partitions(partitions: int) -> None:
    queues = queues_of(make_collection(name="order_items-v2", partitions=partitions))
    assert queues == [f"stagesync.order_items-v2.{n}" for n in range(partitions)]
    assert len(set(queues)) == partitions


def test_queue_names_of_different_collections_never_collide() -> None:
    """`stagesync.<name>.<n>` stays unambiguous because names carry no dot."""
    a = queues_of(make_collection(name="orders", partitions=2))
    b = queues_of(make_collection(name="orders_0", partitions=2))
    assert not set(a) & set(b)


# --- environment overrides -------------------------------------------------------------------


def test_env_prod_uri_wins_over_file_and_keeps_sibling_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAGESYNC_PROD__URI", "mongodb://env-host:27017/?replicaSet=rs9")
    loaded = load(tmp_path, full())
    assert loaded.prod.uri == "mongodb://env-host:27017/?replicaSet=rs9"
    assert loaded.prod.read_concern == "local"  # from the file, not reset by the override


def test_env_nested_integer_wins_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGESYNC_WATCHER__MAX_UNAPPLIED", "777")
    loaded = load(tmp_path, full())
    assert loaded.watcher.max_unapplied == 777
    assert loaded.watcher.batch_max_size == 200  # the file's other watcher keys survive


def test_env_collections_as_json_replace_the_files_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replacement = [
        {
            "name": "invoices",
            "source": "production.invoices",
            "target": "staging.invoices",
            "business_key": ["number"],
            "partitions": 2,
        }
    ]
    monkeypatch.setenv("STAGESYNC_COLLECTIONS", json.dumps(replacement))
    loaded = load(tmp_path, full())
    assert [c.name for c in loaded.collections] == ["invoices"]
    assert queues_of(loaded.collections[0]) == ["stagesync.invoices.0", "stagesync.invoices.1"]


def test_env_pii_secret_supplies_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = minimal()
    del data["pii_secret"]
    monkeypatch.setenv("STAGESYNC_PII_SECRET", "from-the-environment")
    loaded = load(tmp_path, data)
    assert loaded.secret_bytes() == b"from-the-environment"


def test_env_pii_secret_wins_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGESYNC_PII_SECRET", "from-the-environment")
    assert load(tmp_path, full()).secret_bytes() == b"from-the-environment"


def test_env_override_is_validated_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAGESYNC_WATCHER__MAX_UNAPPLIED", "lots")
    message = config_error(tmp_path, full())
    assert_names(message, "watcher.max_unapplied")


def test_errors_in_env_collections_are_labelled_with_env_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replacement = [
        {
            "name": "invoices",
            "source": "production.invoices",
            "target": "staging.invoices",
            "business_key": [],
        }
    ]
    monkeypatch.setenv("STAGESYNC_COLLECTIONS", json.dumps(replacement))
    message = config_error(tmp_path, full())
    assert_names(message, "collections[0] (invoices).business_key")


def test_env_collections_with_invalid_json_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAGESYNC_COLLECTIONS", "[{not json")
    message = config_error(tmp_path, full())
    assert "collections" in message


def test_empty_pii_secret_is_rejected_for_keyed_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAGESYNC_PII_SECRET", "")
    message = config_error(tmp_path, minimal())
    assert "pii_secret" in message


def test_config_path_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_path("given.yaml") == Path("given.yaml")
    assert config_path() == Path("stagesync.yaml")
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "from-env.yaml"))
    assert config_path() == tmp_path / "from-env.yaml"
    assert config_path("given.yaml") == Path("given.yaml")  # --config wins


def test_config_file_from_env_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, minimal(), "elsewhere.yaml")
    monkeypatch.setenv(CONFIG_ENV, str(path))
    assert load_settings().collections[0].name == "orders"


def test_environment_alone_without_any_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./stagesync.yaml here
    monkeypatch.setenv("STAGESYNC_PROD__URI", "mongodb://p:27017/")
    monkeypatch.setenv("STAGESYNC_STAGING__URI", "mongodb://s:27017/")
    monkeypatch.setenv(
        "STAGESYNC_COLLECTIONS",
        json.dumps(
            [{"name": "orders", "source": "p.orders", "target": "s.orders",
              "business_key": ["number"]}]
        ),
    )
    loaded = load_settings()
    assert loaded.prod.uri == "mongodb://p:27017/"
    assert queues_of(loaded.collections[0]) == ["stagesync.orders"]


# --- errors name the key ---------------------------------------------------------------------


def _set(*path: str | int, value: Any) -> Mutation:
    def mutate(data: Config) -> None:
        node: Any = data
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    return mutate


def _delete(*path: str | int) -> Mutation:
    def mutate(data: Config) -> None:
        node: Any = data
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]

    return mutate


def _add_pii(path: str, rule: Any) -> Mutation:
    def mutate(data: Config) -> None:
        collection(data)["pii"][path] = rule

    return mutate


def _duplicate(**changes: Any) -> Mutation:
    def mutate(data: Config) -> None:
        data["collections"].append({**copy.deepcopy(collection(data)), **changes})

    return mutate


def _no_secret(data: Config) -> None:
    del data["pii_secret"]


C0 = "collections[0] (orders)"

ERROR_CASES: list[tuple[str, Mutation, tuple[str, ...]]] = [
    ("unknown top-level key", _set("colections", value=[]), ("colections", "unknown key")),
    ("unknown key in prod", _set("prod", "url", value="x"), ("prod.url", "unknown key")),
    ("unknown key in watcher", _set("watcher", value={"max_size": 3}),
     ("watcher.max_size", "unknown key")),
    ("unknown key in a collection", _set("collections", 0, "busines_key", value=["a"]),
     (f"{C0}.busines_key", "unknown key")),
    ("empty business key", _set("collections", 0, "business_key", value=[]),
     (f"{C0}.business_key",)),
    ("business key on _id", _set("collections", 0, "business_key", value=["_id"]),
     (f"{C0}.business_key",)),
    ("business key under _sync", _set("collections", 0, "business_key", value=["_sync.key"]),
     (f"{C0}.business_key",)),
    ("business key listed twice", _set("collections", 0, "business_key", value=["a", "a"]),
     (f"{C0}.business_key",)),
    ("business key with an empty segment",
     _set("collections", 0, "business_key", value=["customer..email"]),
     (f"{C0}.business_key",)),
    ("business key with a $ segment", _set("collections", 0, "business_key", value=["$where"]),
     (f"{C0}.business_key",)),
    ("source equals target", _set("collections", 0, "target", value="production.orders"),
     (C0, "target")),
    ("name with a dot", _set("collections", 0, "name", value="or.ders"),
     ("collections[0] (or.ders).name",)),
    ("name with a space", _set("collections", 0, "name", value="my orders"),
     ("collections[0] (my orders).name",)),
    ("name starting with a digit", _set("collections", 0, "name", value="1orders"),
     ("collections[0] (1orders).name",)),
    ("empty name", _set("collections", 0, "name", value=""), ("collections[0] ().name",)),
    ("source without a dot", _set("collections", 0, "source", value="productionorders"),
     (f"{C0}.source",)),
    ("source with an empty collection", _set("collections", 0, "source", value="production."),
     (f"{C0}.source",)),
    ("source with an empty database", _set("collections", 0, "source", value=".orders"),
     (f"{C0}.source",)),
    ("$ in the collection name", _set("collections", 0, "source", value="production.or$ders"),
     (f"{C0}.source",)),
    ("$ in the database name", _set("collections", 0, "target", value="sta$ging.orders"),
     (f"{C0}.target",)),
    ("system. collection", _set("collections", 0, "target", value="staging.system.users"),
     (f"{C0}.target",)),
    ("target without a dot", _set("collections", 0, "target", value="staging"),
     (f"{C0}.target",)),
    ("duplicate collection names", _duplicate(target="staging.orders2"),
     ("collections", "1", "name", "configured twice")),
    ("duplicate targets", _duplicate(name="orders2"),
     ("collections", "1", "target", "configured twice")),
    ("no collections", _set("collections", value=[]), ("collections",)),
    ("bad rate limit", _set("collections", 0, "rate_limit", value="fast"),
     (f"{C0}.rate_limit",)),
    ("zero rate limit", _set("collections", 0, "rate_limit", value="0/s"),
     (f"{C0}.rate_limit",)),
    ("unknown rate unit", _set("collections", 0, "rate_limit", value="10/fortnight"),
     (f"{C0}.rate_limit",)),
    ("partitions 0", _set("collections", 0, "partitions", value=0), (f"{C0}.partitions",)),
    ("partitions above 64", _set("collections", 0, "partitions", value=65),
     (f"{C0}.partitions",)),
    ("business key redacted", _add_pii("accountId", "redact"), (C0, "pii.accountId")),
    ("business key dropped", _add_pii("accountId", "drop"), (C0, "pii.accountId")),
    ("business key nulled", _add_pii("accountId", "null"), (C0, "pii.accountId")),
    ("business key faked", _add_pii("accountId", "fake:name"), (C0, "pii.accountId")),
    ("hash without pii_secret", _no_secret, ("pii_secret", "userEmail")),
    ("pii rule on _id", _add_pii("_id", "hash"), (f"{C0}.pii", "_id")),
    ("pii rule under _id", _add_pii("_id.email", "redact"), (f"{C0}.pii", "_id")),
    ("unknown pii rule", _add_pii("contact", "scramble"), (f"{C0}.pii", "contact")),
    ("kind on a rule other than fake", _add_pii("contact", "hash:email"),
     (f"{C0}.pii", "contact")),
    ("unknown fake kind", _add_pii("contact", "fake:ssn"), (f"{C0}.pii", "contact")),
    ("pii rule that is not a string", _add_pii("contact", 3), (f"{C0}.pii", "contact")),
    ("bare fake that cannot be inferred", _add_pii("customer.contact", "fake"),
     (f"{C0}.pii", "customer.contact")),
    ("pii rule on a bad path", _add_pii("customer..x", "drop"), (f"{C0}.pii",)),
    ("bad duration", _set("collections", 0, "purge_deleted_after", value="30 days"),
     (f"{C0}.purge_deleted_after",)),
    ("zero duration", _set("collections", 0, "purge_deleted_after", value="0d"),
     (f"{C0}.purge_deleted_after",)),
    ("retry backoff equal to visibility timeout",
     _set("worker", value={"visibility_timeout_seconds": 60, "task_time_limit_seconds": 30,
                           "retry_backoff_max_seconds": 60}),
     ("worker", "retry_backoff_max_seconds")),
    ("retry backoff above visibility timeout",
     _set("worker", value={"retry_backoff_max_seconds": 301}),
     ("worker", "retry_backoff_max_seconds")),
    ("task time limit above visibility timeout",
     _set("worker", value={"visibility_timeout_seconds": 60, "task_time_limit_seconds": 60,
                           "retry_backoff_max_seconds": 10}),
     ("worker", "task_time_limit_seconds")),
    ("missing prod", _delete("prod"), ("prod", "missing")),
    ("missing prod.uri", _set("prod", value={}), ("prod.uri", "missing")),
    ("missing staging", _delete("staging"), ("staging", "missing")),
    ("missing collections", _delete("collections"), ("collections", "missing")),
    ("missing business_key", _delete("collections", 0, "business_key"),
     (f"{C0}.business_key", "missing")),
    ("missing source", _delete("collections", 0, "source"), (f"{C0}.source", "missing")),
    ("missing target", _delete("collections", 0, "target"), (f"{C0}.target", "missing")),
    ("missing name", _delete("collections", 0, "name"), ("collections[0].name", "missing")),
    ("prod uri not mongodb", _set("prod", "uri", value="postgres://host/"), ("prod.uri",)),
    ("redis url not redis", _set("redis_url", value="http://127.0.0.1:6379"), ("redis_url",)),
    ("bad read concern", _set("prod", "read_concern", value="linearizable"),
     ("prod.read_concern",)),
    ("bad state db", _set("staging", "state_db", value="stage.sync"), ("staging.state_db",)),
    ("staging field is in the business key",
     _set("collections", 0, "staging_fields", value=["accountId"]),
     (C0, "staging_fields", "accountId")),
    ("staging field is the soft-delete field",
     _set("collections", 0, "staging_fields", value=["deleted"]),
     (C0, "staging_fields", "deleted")),
    ("staging field under _sync", _set("collections", 0, "staging_fields", value=["_sync.x"]),
     (f"{C0}.staging_fields",)),
    ("soft-delete field _id", _set("collections", 0, "soft_delete_field", value="_id"),
     (f"{C0}.soft_delete_field",)),
    ("accepted versions without a field",
     _set("collections", 0, "accepted_schema_versions", value=[1]),
     (C0, "accepted_schema_versions")),
    ("resync chunk too small", _set("collections", 0, "resync_chunk_size", value=1),
     (f"{C0}.resync_chunk_size",)),
    ("batch size zero", _set("watcher", value={"batch_max_size": 0}),
     ("watcher.batch_max_size",)),
    ("max_unapplied below 10", _set("watcher", value={"max_unapplied": 5}),
     ("watcher.max_unapplied",)),
    ("no group in flight", _set("watcher", value={"max_inflight_groups": 0}),
     ("watcher.max_inflight_groups",)),
    ("groups in flight not a number", _set("watcher", value={"max_inflight_groups": "many"}),
     ("watcher.max_inflight_groups",)),
    ("collection that is not a mapping", _set("collections", 0, value="orders"),
     ("collections[0]",)),
    ("unknown indexes mode", _set("collections", 0, "indexes", value="copy"),
     (f"{C0}.indexes",)),
    ("mirror_ttl that is not a boolean", _set("collections", 0, "mirror_ttl", value="often"),
     (f"{C0}.mirror_ttl",)),
    ("mirror_ttl without mirroring",
     _set("collections", 0, value={"name": "orders", "source": "production.orders",
                                   "target": "staging.orders", "business_key": ["accountId"],
                                   "indexes": "none", "mirror_ttl": True}),
     (C0, "mirror_ttl", "indexes: mirror")),
    ("unknown index_follow", _set("watcher", value={"index_follow": "events"}),
     ("watcher.index_follow",)),
    ("index poll interval zero", _set("watcher", value={"index_poll_seconds": 0}),
     ("watcher.index_poll_seconds",)),
]


@pytest.mark.parametrize(
    ("mutation", "fragments"),
    [pytest.param(m, f, id=label) for label, m, f in ERROR_CASES],
)
def test_error_names_the_key(
    tmp_path: Path, mutation: Mutation, fragments: tuple[str, ...]
) -> None:
    data = minimal()
    mutation(data)
    message = config_error(tmp_path, data)
    assert_names(message, *fragments)
    assert message.startswith("invalid configuration")
    assert PASSWORD not in message


@pytest.mark.parametrize(
    ("mutation", "fragments"),
    [pytest.param(m, f, id=label) for label, m, f in ERROR_CASES],
)
def test_error_never_shows_the_uri_password(
    tmp_path: Path, mutation: Mutation, fragments: tuple[str, ...]
) -> None:
    data = minimal()
    data["staging"]["uri"] = f"mongodb://qa:{PASSWORD}@staging-host:27017/"
    data["redis_url"] = f"redis://:{PASSWORD}@127.0.0.1:6379/0"
    mutation(data)
    message = config_error(tmp_path, data)
    assert PASSWORD not in message


@pytest.mark.parametrize(
    "bad_uri",
    [
        f"mysql://user:{PASSWORD}@prod-host/",
        f"user:{PASSWORD}@prod-host",
        f"http://user:{PASSWORD}@prod-host:27017/",
    ],
)
def test_a_bad_uri_is_named_without_echoing_it(tmp_path: Path, bad_uri: str) -> None:
    data = minimal()
    data["prod"]["uri"] = bad_uri
    message = config_error(tmp_path, data)
    assert_names(message, "prod.uri")
    assert PASSWORD not in message


def test_bad_uri_from_env_is_named_without_echoing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAGESYNC_STAGING__URI", f"http://user:{PASSWORD}@host/")
    message = config_error(tmp_path, minimal())
    assert_names(message, "staging.uri")
    assert PASSWORD not in message


def test_every_problem_is_reported(tmp_path: Path) -> None:
    data = minimal()
    collection(data)["partitions"] = 0
    collection(data)["rate_limit"] = "fast"
    data["bogus"] = 1
    message = config_error(tmp_path, data)
    assert_names(message, f"{C0}.partitions")
    assert_names(message, f"{C0}.rate_limit")
    assert_names(message, "bogus", "unknown key")


def test_second_collection_is_labelled_by_its_own_name(tmp_path: Path) -> None:
    data = full()
    data["collections"][1]["business_key"] = []
    message = config_error(tmp_path, data)
    assert_names(message, "collections[1] (users).business_key")


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        pytest.param(_duplicate(target="staging.orders2"), "collections[1] (orders).name",
                     id="duplicate names"),
        pytest.param(_no_secret, f"{C0}.pii.userEmail", id="missing pii_secret"),
    ],
)
def test_cross_collection_errors_use_the_documented_key_form(
    tmp_path: Path, mutation: Mutation, expected: str
) -> None:
    data = minimal()
    mutation(data)
    assert_names(config_error(tmp_path, data), expected)


def test_collection_name_with_trailing_newline_is_rejected(tmp_path: Path) -> None:
    data = minimal()
    collection(data)["name"] = "orders\n"
    message = config_error(tmp_path, data)
    assert "name" in message


def test_pii_rule_on_a_parent_of_a_business_key_field_is_rejected(tmp_path: Path) -> None:
    data = minimal()
    collection(data)["business_key"] = ["customer.email"]
    collection(data)["pii"] = {"customer": "redact"}
    message = config_error(tmp_path, data)
    assert_names(message, C0, "customer")


@pytest.mark.parametrize("name", ["orders", "Orders_v2", "a", "order-items", "x" * 63])
def test_valid_collection_names(tmp_path: Path, name: str) -> None:
    data = minimal()
    collection(data)["name"] = name
    assert queues_of(load(tmp_path, data).collections[0]) == [f"stagesync.{name}"]


def test_name_longer_than_63_characters_is_rejected(tmp_path: Path) -> None:
    data = minimal()
    collection(data)["name"] = "x" * 64
    assert_names(config_error(tmp_path, data), ".name")


def test_bare_fake_is_inferred_from_the_field_name(tmp_path: Path) -> None:
    data = minimal()
    collection(data)["pii"] = {
        "userEmail": "hash",
        "contact.mail": "fake",
        "mobilePhone": "fake",
        "homeAddress": "fake",
        "fullName": "fake",
    }
    pii = load(tmp_path, data).collections[0].pii
    assert pii["contact.mail"] == PiiRule("fake", "email")
    assert pii["mobilePhone"] == PiiRule("fake", "phone")
    assert pii["homeAddress"] == PiiRule("fake", "address")
    assert pii["fullName"] == PiiRule("fake", "name")


def test_hash_on_business_key_field_is_allowed(tmp_path: Path) -> None:
    data = minimal()
    collection(data)["pii"] = {"userEmail": "hash", "accountId": "hash"}
    assert load(tmp_path, data).collections[0].pii["accountId"] == PiiRule("hash")


def test_rules_that_need_no_secret_load_without_one(tmp_path: Path) -> None:
    data = minimal()
    del data["pii_secret"]
    collection(data)["pii"] = {"customer.phone": "drop", "customer.name": "redact", "x": "null"}
    loaded = load(tmp_path, data)
    assert loaded.pii_secret is None
    assert loaded.secret_bytes() == b""


# --- the file itself -------------------------------------------------------------------------


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- prod\n- staging\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "mapping" in str(caught.value)
    assert str(path) in str(caught.value)


def test_scalar_yaml_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "scalar.yaml"
    path.write_text("just a string\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(path)


def test_invalid_yaml_mentions_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(
        'prod: {uri: "mongodb://p/"}\nstaging: {uri: "mongodb://s/"}\ncollections: [\n'
        "  {name: orders\n  - : :\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert "YAML" in message
    assert "line " in message
    assert str(path) in message


def test_invalid_yaml_line_number_is_the_broken_line(tmp_path: Path) -> None:
    path = tmp_path / "colon.yaml"
    path.write_text(
        'prod:\n  uri: "mongodb://p/"\nredis_url: redis://x: 1\nstaging:\n  uri: "mongodb://s/"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "line 3" in str(caught.value)


def test_invalid_yaml_does_not_echo_the_password(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(f'prod: {{uri: "{PROD_URI}"\nstaging: ]\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert PASSWORD not in str(caught.value)


def test_empty_file_reports_the_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    for key in ("prod", "staging", "collections"):
        assert_names(message, key, "missing")


def test_missing_file_given_explicitly(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(path) in str(caught.value)
    assert "does not exist" in str(caught.value)


def test_missing_file_given_by_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "nope.yaml"
    monkeypatch.setenv(CONFIG_ENV, str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings()


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path)
    assert str(tmp_path) in str(caught.value)


# --- rate limits, durations, pii rule vocabulary ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "amount", "seconds"),
    [
        ("2000/s", 2000, 1),
        ("2000/second", 2000, 1),
        (" 2000 / s ", 2000, 1),
        ("120/min", 120, 60),
        ("120/m", 120, 60),
        ("10 per minute", 10, 60),
        ("100/hour", 100, 3600),
        ("100/h", 100, 3600),
        ("5/2h", 5, 7200),
        ("1/d", 1, 86400),
        ("50/SEC", 50, 1),
    ],
)
def test_parse_rate_limit(text: str, amount: int, seconds: int) -> None:
    item = parse_rate_limit(text)
    assert item.amount == amount
    assert item.get_expiry() == seconds


@pytest.mark.parametrize("text", ["", "fast", "2000", "/s", "0/s", "-5/s", "10/fortnight", "s/10"])
def test_parse_rate_limit_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate_limit(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("2w", timedelta(weeks=2)),
        (" 7 d ", timedelta(days=7)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "0d", "1.5d", "30 days", "-1d", "30y", "1d2h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("path", "text", "expected"),
    [
        ("a", "drop", PiiRule("drop")),
        ("a", "redact", PiiRule("redact")),
        ("a", "null", PiiRule("null")),
        ("a", "hash", PiiRule("hash")),
        ("a", " hash ", PiiRule("hash")),
        ("a", "fake:email", PiiRule("fake", "email")),
        ("a", "fake:name", PiiRule("fake", "name")),
        ("a", "fake:phone", PiiRule("fake", "phone")),
        ("a", "fake:address", PiiRule("fake", "address")),
        ("customer.workEmail", "fake", PiiRule("fake", "email")),
        ("customer.telephone", "fake", PiiRule("fake", "phone")),
        ("customer.streetLine", "fake", PiiRule("fake", "address")),
        ("customer.lastName", "fake", PiiRule("fake", "name")),
    ],
)
def test_parse_pii_rule(path: str, text: str, expected: PiiRule) -> None:
    assert parse_pii_rule(path, text) == expected


def test_pii_rule_keyed_and_str() -> None:
    assert PiiRule("hash").keyed and PiiRule("fake", "email").keyed
    assert not any(PiiRule(kind).keyed for kind in ("drop", "redact", "null"))  # type: ignore[arg-type]
    assert str(PiiRule("fake", "phone")) == "fake:phone"
    assert str(PiiRule("redact")) == "redact"
    rule = PiiRule("null")
    assert parse_pii_rule("x", rule) is rule


@pytest.mark.parametrize("text", ["scramble", "hash:email", "fake:ssn", "drop:x", "", "Fake"])
def test_parse_pii_rule_rejects_and_names_the_path(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_pii_rule("customer.contact", text)
    assert "customer.contact" in str(caught.value)


def test_bare_fake_without_hint_names_the_path() -> None:
    with pytest.raises(ValueError) as caught:
        parse_pii_rule("customer.notes", "fake")
    assert "customer.notes" in str(caught.value)
    assert "fake:" in str(caught.value)


def test_in_list_max_defaults_to_mongodbs_value(tmp_path: Path) -> None:
    assert load(tmp_path, minimal()).in_list_max == 1000
    assert load(tmp_path, {**minimal(), "in_list_max": 200}).in_list_max == 200


@pytest.mark.parametrize("value", [0, -5, "many"])
def test_a_bad_in_list_max_is_an_error_naming_the_key(tmp_path: Path, value: Any) -> None:
    assert_names(config_error(tmp_path, {**minimal(), "in_list_max": value}), "in_list_max")
