"""`pii_mode` and `allow` in the configuration: defaults, and errors that name the key."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from stagesync.settings import ConfigError, load_settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.upper().startswith("STAGESYNC_"):
            monkeypatch.delenv(name)
    yield


def config(**collection: Any) -> dict[str, Any]:
    entry = {"name": "orders", "source": "production.orders", "target": "staging.orders",
             "business_key": ["userEmail", "accountId"],
             "pii": {"userEmail": "hash", "customer.phone": "drop"}}
    entry.update(collection)
    return {"prod": {"uri": "mongodb://prod-host:27017/"},
            "staging": {"uri": "mongodb://staging-host:27017/"},
            "pii_secret": "unit-secret", "collections": [entry]}


def load(tmp_path: Path, data: dict[str, Any]) -> Any:
    path = tmp_path / "stagesync.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return load_settings(path)


def error_of(tmp_path: Path, data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, data)
    return str(caught.value)


def test_open_is_the_default_and_allow_is_empty(tmp_path: Path) -> None:
    collection = load(tmp_path, config()).collections[0]
    assert collection.pii_mode == "open" and collection.allow == []


def test_strict_with_allow(tmp_path: Path) -> None:
    collection = load(tmp_path, config(pii_mode="strict",
                                       allow=["plan", "address.city", "lines.sku"])
                      ).collections[0]
    assert collection.pii_mode == "strict"
    assert collection.allow == ["plan", "address.city", "lines.sku"]


def test_an_unknown_mode_names_the_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, config(pii_mode="closed"))
    assert "collections[0] (orders).pii_mode" in message
    assert "'open' or 'strict'" in message


@pytest.mark.parametrize(("allow", "problem"), [
    (["plan", "plan"], "lists a path twice"),
    (["customer..city"], "is not a field path"),
    (["$where"], "is not a field path"),
    (["_sync.v"], "stagesync's own metadata"),
    (["userEmail"], "has a pii rule too"),
    (["customer.phone.ext"], "lies under pii rule 'customer.phone'"),
    ("plan", "valid list"),
])
def test_bad_allow_entries_name_the_key(tmp_path: Path, allow: Any, problem: str) -> None:
    message = error_of(tmp_path, config(pii_mode="strict", allow=allow))
    assert "collections[0] (orders).allow" in message, message
    assert problem in message, message


def test_allowing_a_parent_of_a_rule_is_fine(tmp_path: Path) -> None:
    collection = load(tmp_path, config(allow=["customer"])).collections[0]
    assert collection.allow == ["customer"]


def test_allow_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = config(pii_mode="strict")["collections"]
    entry[0]["allow"] = ["plan"]
    monkeypatch.setenv("STAGESYNC_COLLECTIONS", json.dumps(entry))
    collection = load(tmp_path, config()).collections[0]
    assert collection.pii_mode == "strict" and collection.allow == ["plan"]
