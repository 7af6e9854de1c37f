"""`stagesync pii scan` without I/O (`cli.pii_proposal`): on generated production data it
proposes a rule for every personal field and `allow` for every harmless one, and its YAML,
pasted into a configuration, is valid and leaves nothing unclassified."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from stagesync.cli.pii_proposal import scan_documents
from stagesync.rules.pii import Masker
from stagesync.settings import load_settings
from stagesync.settings.collection import CollectionSettings

from tests.support.pii_data import HARMLESS, PERSONAL, generated_orders


def orders_collection(**overrides: Any) -> CollectionSettings:
    config: dict[str, Any] = {"name": "orders", "source": "production.orders",
                              "target": "staging.orders",
                              "business_key": ["userEmail", "accountId"]}
    config.update(overrides)
    return CollectionSettings(**config)


def test_a_rule_for_every_personal_field_and_allow_for_every_harmless_one() -> None:
    result = scan_documents(generated_orders(), orders_collection())
    assert result.pii == PERSONAL
    assert result.allow == sorted(HARMLESS)
    by_path = {finding.path: finding for finding in result.findings}
    assert by_path["accountId"].decision == "key"  # classified already: neither list
    assert by_path["_id"].decision == "id"
    notes = by_path["notes"]
    assert notes.kind == "free_text" and notes.inside == ("email",)
    assert 0 < (notes.share or 0) < 0.3


def test_findings_hold_shapes_never_values() -> None:
    documents = generated_orders(50)
    result = scan_documents(documents, orders_collection())
    shown = repr(result.findings) + result.proposal_yaml()
    for document in documents:
        for value in (document["userEmail"], document["customer"]["phone"],
                      document["payment"]["cardNumber"], document["customer"]["lastName"]):
            assert value not in shown
    email = next(f for f in result.findings if f.path == "contactEmail")
    assert email.example is not None and set(email.example) <= set("aA9@.-_+")


def pasted_config(tmp_path: Path, block: str, strict: bool) -> Path:
    """The proposal pasted, as printed, under the collection's entry of a configuration."""
    header = textwrap.dedent("""\
        prod: {uri: "mongodb://prod-host:27017/"}
        staging: {uri: "mongodb://staging-host:27017/"}
        pii_secret: unit-secret
        collections:
          - name: orders
            source: production.orders
            target: staging.orders
            business_key: [userEmail, accountId]
        """)
    if strict:
        block = block.replace("# pii_mode: strict", "pii_mode: strict")
    path = tmp_path / "stagesync.yaml"
    path.write_text(header + textwrap.indent(block, "    "), encoding="utf-8")
    return path


@pytest.mark.parametrize("strict", [False, True])
def test_the_proposed_yaml_pasted_into_a_config_is_valid_and_leaves_nothing_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strict: bool
) -> None:
    for name in [n for n in os.environ if n.startswith("STAGESYNC_")]:
        monkeypatch.delenv(name)
    documents = generated_orders()
    block = scan_documents(documents, orders_collection()).proposal_yaml()
    settings = load_settings(pasted_config(tmp_path, block, strict))
    collection = settings.collections[0]
    assert {path: str(rule) for path, rule in collection.pii.items()} == PERSONAL
    assert collection.pii_mode == ("strict" if strict else "open")
    strict_masker = Masker.from_settings(collection.model_copy(update={"pii_mode": "strict"}),
                                         settings.secret_bytes())
    for document in documents:
        assert strict_masker.mask_reporting(document)[1] == set()


def test_configured_rules_are_kept_and_an_allow_hiding_personal_data_is_split() -> None:
    documents = generated_orders(100)
    collection = orders_collection(pii={"customer.phone": "drop", "userEmail": "hash"},
                                   allow=["lines", "customer"], pii_mode="strict")
    result = scan_documents(documents, collection)
    assert result.pii["customer.phone"] == "drop"  # configured: kept as written
    assert result.pii["customer.firstName"] == "fake:name"
    assert "customer" not in result.allow  # it hid names and a date of birth
    assert "lines" in result.allow and "lines.sku" not in result.allow  # still harmless
    first = next(f for f in result.findings if f.path == "customer.firstName")
    assert first.note == "listed in allow, but looks personal"


def test_fields_without_values_are_proposed_for_review_unless_their_name_says_personal(
) -> None:
    documents = [{"_id": i, "userEmail": f"u{i}@corp.io", "accountId": i, "coupon": None,
                  "tags": [], "ssn": None, "spouseName": None} for i in range(5)]
    result = scan_documents(documents, orders_collection())
    assert "coupon" in result.allow and "tags" in result.allow
    assert result.review == {"coupon", "tags"}
    assert result.pii["ssn"] == "hash"  # by name
    assert "spouseName" not in result.allow
    assert "# no values in the sample: review" in result.proposal_yaml()


def test_personal_data_in_id_is_reported_but_never_proposed() -> None:
    documents = [{"_id": f"user{i}@corp.io", "userEmail": "x", "accountId": i}
                 for i in range(5)]
    result = scan_documents(documents, orders_collection())
    assert "_id" not in result.pii and "_id" not in result.allow
    assert any("_id looks like email" in warning for warning in result.warnings)


def test_odd_field_names_are_quoted_so_the_yaml_reads_back_the_same() -> None:
    names = ["yes", "a b", "#hash", "key: value", "on", "-dash", "null", "12"]
    documents = [{"_id": i, "userEmail": "x", "accountId": i,
                  **{name: "plain" for name in names}, "mail: x": "ann@corp.io"}
                 for i in range(3)]
    block = scan_documents(documents, orders_collection()).proposal_yaml()
    parsed = yaml.safe_load(block)
    assert sorted(parsed["allow"]) == sorted(names)
    assert parsed["pii"] == {"mail: x": "fake:email", "userEmail": "hash"}


def test_field_names_that_are_personal_data_are_reported_as_their_map() -> None:
    documents = [{"_id": i, "userEmail": "x", "accountId": i,
                  "byEmail": {f"ann{i}.lee@corp.io": {"visits": i}, "total": {"visits": 1}},
                  f"+44 20 7946 09{i:02d}": "top"} for i in range(4)]
    result = scan_documents(documents, orders_collection())
    assert result.pii["byEmail"] == "redact"
    assert "byEmail.total.visits" not in result.allow  # under the rule: masked with the map
    shown = repr(result.findings) + result.proposal_yaml() + repr(result.warnings)
    assert "lee@corp.io" not in shown and "7946" not in shown
    assert any("top-level field names" in warning for warning in result.warnings)
    assert "*" not in result.pii and "*" not in result.allow
