"""Strict PII mode (`pii_mode: strict`): the masker leaves out every path the configuration
does not classify, reports the paths (never values), and counts them for the workers."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from stagesync.rules.pii import MAX_PENDING_PATHS, REDACTED, Masker
from stagesync.rules.pii_digests import pseudonym, rules_fingerprint
from stagesync.rules.pii_strict import Classification, classified_paths
from stagesync.settings.collection import CollectionSettings
from stagesync.settings.pii_rules import parse_pii_rule

SECRET = b"unit-secret"


def collection(**overrides: Any) -> CollectionSettings:
    config: dict[str, Any] = {
        "name": "orders", "source": "p.orders", "target": "s.orders",
        "business_key": ["userEmail", "accountId"],
        "pii": {"userEmail": "hash", "customer.name": "redact", "contacts.phone": "drop"},
        "pii_mode": "strict",
        "allow": ["plan", "customer.tier", "lines.sku", "address"],
    }
    config.update(overrides)
    return CollectionSettings(**config)


def masker(**overrides: Any) -> Masker:
    return Masker.from_settings(collection(**overrides), SECRET)


def production_document() -> dict[str, Any]:
    return {
        "_id": 7,
        "userEmail": "ann@corp.io",
        "accountId": 3,
        "plan": "gold",
        "ssn": "078-05-1120",  # new top-level field
        "customer": {"name": "Ann Lee", "tier": 2, "dateOfBirth": "1980-02-01"},  # new nested
        "contacts": [{"phone": "+1 202 555 0142", "email": "a@corp.io"}],
        "lines": [{"sku": "A-1", "serial": "SN-1"}, {"sku": "B-2"}],
        "address": {"city": "Leeds", "street": "12 Baker Street"},
    }


def test_strict_keeps_classified_paths_and_leaves_out_the_rest() -> None:
    document = production_document()
    original = copy.deepcopy(document)
    masked, dropped = masker().mask_reporting(document)
    assert masked == {
        "_id": 7,
        "userEmail": pseudonym("ann@corp.io", SECRET),  # a pii rule: masked
        "accountId": 3,  # a business-key field
        "plan": "gold",  # allowed
        "customer": {"name": REDACTED, "tier": 2},  # rule and allow; dateOfBirth left out
        "contacts": [{}],  # phone dropped by its rule, email unclassified
        "lines": [{"sku": "A-1"}, {"sku": "B-2"}],  # through the array
        "address": {"city": "Leeds", "street": "12 Baker Street"},  # an allowed parent
    }
    assert dropped == {"ssn", "customer.dateOfBirth", "contacts.email", "lines.serial"}
    assert document == original  # the input is never changed


def test_open_mode_copies_everything_and_reports_nothing() -> None:
    open_masker = masker(pii_mode="open")
    masked, dropped = open_masker.mask_reporting(production_document())
    assert dropped == set()
    assert masked["ssn"] == "078-05-1120" and masked["customer"]["dateOfBirth"] == "1980-02-01"
    open_masker.mask(production_document())
    assert open_masker.take_unclassified() == {}
    assert not open_masker.strict
    assert Masker.from_settings(collection(pii={}, allow=[]), SECRET).active  # strict: works
    assert not Masker.from_settings(collection(pii={}, pii_mode="open"), SECRET).active


def test_dropped_paths_name_paths_never_values() -> None:
    _, dropped = masker().mask_reporting(production_document())
    for value in ("078-05-1120", "1980-02-01", "a@corp.io", "SN-1"):
        assert not any(value in path for path in dropped)


def test_a_subtree_nobody_classified_is_reported_by_its_leaf_paths() -> None:
    document = {"_id": 1, "userEmail": "x", "accountId": 1,
                "profile": {"ssn": "1", "tags": [{"label": "a"}, "loose"], "empty": {},
                            "none": None, "list": []}}
    masked, dropped = masker().mask_reporting(document)
    assert "profile" not in masked
    assert dropped == {"profile.ssn", "profile.tags.label", "profile.tags", "profile.empty",
                       "profile.none", "profile.list"}


def test_a_document_emptied_by_the_filter_goes_but_an_empty_classified_one_stays() -> None:
    strict = masker(allow=["customer.tier", "settings.theme"])
    masked, dropped = strict.mask_reporting(
        {"_id": 1, "customer": {"dateOfBirth": "x"}, "settings": {}})
    assert "customer" not in masked  # emptied: removed, not left as {}
    assert masked["settings"] == {}  # empty to begin with: holds no value
    assert dropped == {"customer.dateOfBirth"}


def test_a_scalar_where_only_deeper_paths_are_classified_is_left_out() -> None:
    strict = masker(allow=["address.city"])
    masked, dropped = strict.mask_reporting({"_id": 1, "address": "12 Baker Street, Leeds"})
    assert "address" not in masked and dropped == {"address"}


def test_arrays_keep_their_positions() -> None:
    strict = masker(pii={"phones.0": "hash"}, allow=["items.sku"])
    masked, dropped = strict.mask_reporting({
        "_id": 1,
        "phones": ["+1 202 555 0142", "+1 202 555 0143", None],
        "items": [{"sku": "A", "note": "x"}, "loose", [{"sku": "B", "serial": "S"}]],
    })
    assert masked["phones"] == [pseudonym("+1 202 555 0142", SECRET), None, None]
    assert masked["items"] == [{"sku": "A"}, None, [{"sku": "B"}]]
    assert dropped == {"phones", "items.note", "items", "items.serial"}


def test_business_key_and_schema_version_field_are_always_kept() -> None:
    strict = masker(pii={}, allow=[], business_key=["customer.id"],
                    schema_version_field="schemaVersion")
    masked, dropped = strict.mask_reporting(
        {"_id": 1, "customer": {"id": 5, "email": "e"}, "schemaVersion": 2, "other": 1})
    assert masked == {"_id": 1, "customer": {"id": 5}, "schemaVersion": 2}
    assert dropped == {"customer.email", "other"}


def test_mask_counts_left_out_paths_per_document_until_taken() -> None:
    strict = masker()
    for _ in range(3):
        strict.mask(production_document())
    strict.mask({"_id": 2, "userEmail": "b", "accountId": 1, "newField": 1})
    taken = strict.take_unclassified()
    assert taken == {"ssn": 3, "customer.dateOfBirth": 3, "contacts.email": 3,
                     "lines.serial": 3, "newField": 1}
    assert strict.take_unclassified() == {}  # taken once


def test_pending_paths_are_bounded() -> None:
    strict = masker()
    strict.mask({"_id": 0, "field0": 0})
    strict.mask({"_id": 1, **{f"field{i}": i for i in range(MAX_PENDING_PATHS + 50)}})
    strict.mask({"_id": 2, "field0": 0, "late": 1})
    taken = strict.take_unclassified()
    assert len(taken) == MAX_PENDING_PATHS
    assert taken["field0"] == 3  # known paths keep counting at the bound
    assert "late" not in taken
    strict.mask({"_id": 3, "late": 1})
    assert strict.take_unclassified() == {"late": 1}  # taking frees the places


def test_mask_reporting_counts_nothing() -> None:
    strict = masker()
    strict.mask_reporting(production_document())
    assert strict.take_unclassified() == {}


def test_fingerprint_covers_strict_mode_and_allow() -> None:
    rules = {"userEmail": parse_pii_rule("userEmail", "hash")}
    open_masker = Masker.from_settings(collection(pii_mode="open", pii={"userEmail": "hash"}),
                                       SECRET)
    assert open_masker.fingerprint == rules_fingerprint(rules, SECRET)  # unchanged by strict
    strict = Masker.from_settings(collection(pii={"userEmail": "hash"}), SECRET)
    wider = Masker.from_settings(collection(pii={"userEmail": "hash"},
                                            allow=["plan", "customer.tier", "lines.sku",
                                                   "address", "ssn"]), SECRET)
    assert len({open_masker.fingerprint, strict.fingerprint, wider.fingerprint}) == 3


def test_classified_paths_and_covers() -> None:
    settings_ = collection(schema_version_field="v")
    assert set(classified_paths(settings_)) == {
        "_id", "userEmail", "accountId", "customer.name", "contacts.phone", "plan",
        "customer.tier", "lines.sku", "address", "v"}
    classification = Classification.from_settings(settings_)
    assert classification is not None
    assert classification.covers("address.street.line1")  # under an allowed parent
    assert classification.covers("lines.sku")
    assert not classification.covers("lines")
    assert not classification.covers("customer.dateOfBirth")
    assert Classification.from_settings(collection(pii_mode="open")) is None


# --------------------------------------------------------------------------------------------
# Property: whatever the document and the classified paths, nothing unclassified survives
# --------------------------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "0", "1"])
SCALARS = st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=3))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(KEYS, inner, max_size=3)),
    max_leaves=12,
)
DOCUMENTS = st.dictionaries(KEYS, VALUES, max_size=4)
PATHS = st.lists(st.lists(KEYS, min_size=1, max_size=3).map(".".join), max_size=5)


def leaf_paths(node: Any, path: tuple[str, ...] = ()) -> set[str]:
    """Non-null scalar leaves, through arrays, without positions."""
    if isinstance(node, dict):
        return set().union(*(leaf_paths(v, (*path, k)) for k, v in node.items()))
    if isinstance(node, list):
        return set().union(*(leaf_paths(e, path) for e in node))
    return set() if node is None else {".".join(path)}


@settings(max_examples=300, deadline=None)
@given(DOCUMENTS, PATHS)
def test_every_value_that_survives_is_classified(document: dict[str, Any],
                                                 paths: list[str]) -> None:
    classification = Classification(paths)
    original = copy.deepcopy(document)
    kept, dropped = classification.filter(document)
    assert document == original
    positional = any(part.isdigit() for path in paths for part in path.split("."))
    for leaf in leaf_paths(kept):
        # A positional path (`a.0`) classifies one element: its leaf path reads `a`.
        assert classification.covers(leaf) or positional, (leaf, kept)
    for path in dropped:
        assert not classification.covers(path)
    if not positional:
        assert leaf_paths(document) - leaf_paths(kept) <= dropped
