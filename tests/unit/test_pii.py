"""PII masking (`rules.pii`): invariant 6, no raw PII beyond production's readers."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from bson import Int64, json_util
from bson.json_util import CANONICAL_JSON_OPTIONS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stagesync.rules.pii import (
    REDACTED,
    Masker,
    PiiError,
    paths_matched,
)
from stagesync.rules.pii_digests import pseudonym, rules_fingerprint
from stagesync.rules.pii_fakes import FAKE_EMAIL_DOMAINS
from stagesync.settings.collection import CollectionSettings
from stagesync.settings.pii_rules import PiiRule, parse_pii_rule

SECRET = b"unit-test-secret"
OTHER_SECRET = b"another-secret"
ROOT = Path(__file__).resolve().parents[2]
PSEUDONYM = re.compile(r"^h:[0-9a-f]{64}$")
FAKE_EMAIL = re.compile(r"^[a-z]+\.[a-z]+\.[0-9a-f]{6}@example\.(com|org|net)$")
FAKE_PHONE = re.compile(r"^\+44 7700 900\d{3}$")
# No files in the tree from these tests (other suites share the checkout).
FAST = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROPERTY = settings(FAST, max_examples=150)


def masker(rules: Mapping[str, str], secret: bytes = SECRET) -> Masker:
    return Masker({path: parse_pii_rule(path, rule) for path, rule in rules.items()}, secret)


def mask(rules: Mapping[str, str], document: Mapping[str, Any], secret: bytes = SECRET) -> Any:
    return masker(rules, secret).mask(document)


# --- each rule -------------------------------------------------------------------------------


def test_drop_redact_null() -> None:
    document = {"a": "x", "b": "y", "c": "z", "keep": 1}
    masked = mask({"a": "drop", "b": "redact", "c": "null"}, document)
    assert masked == {"b": REDACTED, "c": None, "keep": 1}


def test_hash_is_keyed_hmac_of_canonical_extended_json() -> None:
    masked = mask({"email": "hash"}, {"email": "jane@corp.com"})
    canonical = json_util.dumps("jane@corp.com", json_options=CANONICAL_JSON_OPTIONS).encode()
    expected = "h:" + hmac.new(SECRET, canonical, hashlib.sha256).hexdigest()
    assert masked["email"] == expected == pseudonym("jane@corp.com", SECRET)
    assert PSEUDONYM.match(expected)


def test_hash_preserves_types_and_nulls() -> None:
    values = [1, "1", 1.0, Int64(1), True, [1], {"v": 1}]
    pseudonyms = {pseudonym(value, SECRET) for value in values}
    assert len(pseudonyms) == len(values)
    assert mask({"k": "hash"}, {"k": None}) == {"k": None}
    assert pseudonym(None, SECRET) is None


def test_hash_matches_across_collections_and_paths() -> None:
    orders = masker({"userEmail": "hash"}).mask({"userEmail": "jane@corp.com"})
    users = masker({"contact.email": "hash"}).mask({"contact": {"email": "jane@corp.com"}})
    assert orders["userEmail"] == users["contact"]["email"]


def test_hash_of_a_sub_document_is_one_value() -> None:
    masked = mask({"customer": "hash"}, {"customer": {"name": "Jane", "age": 40}})
    assert masked["customer"] == pseudonym({"name": "Jane", "age": 40}, SECRET)


def test_fake_kinds_look_real_and_are_reserved() -> None:
    masked = mask(
        {"email": "fake", "name": "fake", "phone": "fake", "address": "fake"},
        {
            "email": "jane@corp.com",
            "name": "Jane Roe",
            "phone": "+1 415 555 1234",
            "address": "1 Real Street, Springfield",
        },
    )
    assert FAKE_EMAIL.match(masked["email"])
    assert re.match(r"^[A-Z][A-Za-z'\-]+ [A-Z][A-Za-z'\-]+$", masked["name"])
    assert FAKE_PHONE.match(masked["phone"])
    assert re.match(r"^\d+ .+, .+, [A-Z]{2} \d{5}$", masked["address"])
    assert masked["name"] != "Jane Roe"


def test_fake_address_sub_document_keeps_its_keys() -> None:
    original = {
        "street": "1 Real Street",
        "city": "Springfield",
        "zip": 12345,
        "postal_code": "AB1 2CD",
        "country": "Narnia",
        "state": "CA",
        "geo": {"lat": 51.5, "lng": -0.1},
        "unit": "4B",
        "notes": None,
    }
    faked = mask({"home": "fake:address"}, {"home": original})["home"]
    assert list(faked) == list(original)
    assert isinstance(faked["zip"], int) and faked["zip"] != 12345
    assert isinstance(faked["postal_code"], str) and re.match(r"^\d{5}$", faked["postal_code"])
    assert re.match(r"^[A-Z]{2}$", faked["state"])
    assert faked["street"] != original["street"] and faked["city"] != original["city"]
    assert faked["unit"] == pseudonym("4B", SECRET)  # unknown key: hashed
    assert faked["geo"] == {"lat": pseudonym(51.5, SECRET), "lng": pseudonym(-0.1, SECRET)}
    assert faked["notes"] is None


def test_fake_non_strings_and_nulls() -> None:
    masked = mask({"phone": "fake", "name": "fake:name"}, {"phone": 4155551234, "name": None})
    assert FAKE_PHONE.match(masked["phone"])
    assert masked["name"] is None


def test_fake_is_deterministic_and_depends_on_the_value() -> None:
    first = mask({"email": "fake"}, {"email": "jane@corp.com"})
    again = mask({"email": "fake"}, {"email": "jane@corp.com"})
    other = mask({"email": "fake"}, {"email": "john@corp.com"})
    assert first == again
    assert first != other


def test_fake_is_thread_safe() -> None:
    m = masker({"name": "fake", "address": "fake"})
    documents = [{"name": f"person {i}", "address": f"{i} Real Street"} for i in range(200)]
    sequential = [m.mask(document) for document in documents]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(m.mask, documents)) == sequential


# --- paths -----------------------------------------------------------------------------------


def test_nested_paths() -> None:
    document = {"customer": {"phone": "555", "name": "Jane", "tier": "gold"}, "total": 3}
    masked = mask({"customer.phone": "drop", "customer.name": "hash"}, document)
    assert masked == {
        "customer": {"name": pseudonym("Jane", SECRET), "tier": "gold"},
        "total": 3,
    }


def test_paths_through_arrays_of_documents_and_nested_arrays() -> None:
    document = {
        "addresses": [
            {"street": "1 A St", "kind": "home"},
            [{"street": "2 B St"}, [{"street": "3 C St"}]],
            "a scalar has no fields",
            {"kind": "no street"},
        ]
    }
    masked = mask({"addresses.street": "hash"}, document)
    assert masked == {
        "addresses": [
            {"street": pseudonym("1 A St", SECRET), "kind": "home"},
            [{"street": pseudonym("2 B St", SECRET)}, [{"street": pseudonym("3 C St", SECRET)}]],
            "a scalar has no fields",
            {"kind": "no street"},
        ]
    }


def test_rules_on_arrays() -> None:
    document = {"a": ["x", "y"], "b": ["x"], "c": ["x"], "d": ["x", ["y", None]], "e": ["x@y.z"]}
    masked = mask(
        {"a": "drop", "b": "redact", "c": "null", "d": "hash", "e": "fake:email"}, document
    )
    assert "a" not in masked
    assert masked["b"] == REDACTED
    assert masked["c"] is None
    assert masked["d"] == [pseudonym("x", SECRET), [pseudonym("y", SECRET), None]]
    assert len(masked["e"]) == 1 and FAKE_EMAIL.match(masked["e"][0])


def test_positions_in_arrays() -> None:
    document = {"phones": ["111", "222", "333"], "people": [{"name": "A"}, {"name": "B"}]}
    masked = mask(
        {"phones.0": "drop", "phones.1": "hash", "people.1.name": "redact", "phones.9": "redact"},
        document,
    )
    # drop on an element sets None so that `phones.1` still means the second phone.
    assert masked["phones"] == [None, pseudonym("222", SECRET), "333"]
    assert masked["people"] == [{"name": "A"}, {"name": REDACTED}]


def test_missing_paths_are_skipped() -> None:
    document = {"customer": "a string, not a document", "items": [1, 2], "x": None}
    rules = {
        "customer.name": "redact",
        "items.sku": "hash",
        "absent": "drop",
        "x.y": "null",
        "deep.er.path": "fake:email",
    }
    assert mask(rules, document) == document


def test_overlapping_rules_transform_the_raw_value_once() -> None:
    masked = mask({"customer": "hash", "customer.name": "redact"}, {"customer": {"name": "Jane"}})
    assert masked == {"customer": pseudonym({"name": "Jane"}, SECRET)}


def test_input_is_never_mutated_and_unchanged_parts_are_shared() -> None:
    document = {
        "customer": {"name": "Jane", "x": [1]},
        "items": [{"sku": "s", "who": "Jane"}],
        "other": {"deep": [1, 2]},
    }
    before = copy.deepcopy(document)
    masked = mask({"customer.name": "drop", "items.who": "hash", "customer.x": "redact"}, document)
    assert document == before
    assert masked["other"] is document["other"]  # copy-on-write: untouched subtrees shared
    assert masked["customer"] is not document["customer"]
    assert masked["items"] is not document["items"]


def test_no_rules_is_a_cheap_shallow_copy() -> None:
    m = Masker({}, b"")
    document = {"a": {"b": 1}}
    masked = m.mask(document)
    assert not m.active
    assert masked == document and masked is not document
    assert masked["a"] is document["a"]
    assert masker({"a": "drop"}).active


def test_from_settings() -> None:
    collection = CollectionSettings(
        name="orders",
        source="prod.orders",
        target="staging.orders",
        business_key=["userEmail"],
        pii={"userEmail": "hash", "customer.phone": "fake"},
    )
    m = Masker.from_settings(collection, SECRET)
    masked = m.mask({"userEmail": "jane@corp.com", "customer": {"phone": "555"}})
    assert masked["userEmail"] == pseudonym("jane@corp.com", SECRET)
    assert FAKE_PHONE.match(masked["customer"]["phone"])
    assert m.fingerprint == rules_fingerprint(collection.pii, SECRET)


def test_keyed_rules_refuse_an_empty_secret() -> None:
    with pytest.raises(ValueError, match="pii_secret"):
        masker({"email": "hash"}, b"")
    masker({"email": "redact"}, b"")  # unkeyed rules need no secret


def test_errors_and_repr_never_show_values_or_secret() -> None:
    class Unencodable:
        def __repr__(self) -> str:
            return "jane@corp.com"

    m = masker({"customer.email": "hash"})
    with pytest.raises(PiiError) as caught:
        m.mask({"customer": {"email": Unencodable()}})
    assert "jane" not in str(caught.value)
    assert "customer.email" in str(caught.value)
    assert SECRET.decode() not in repr(m)


def test_paths_matched() -> None:
    document = {"customer": {"name": None}, "items": [{"sku": 1}, [{"who": "x"}]], "tags": ["a"]}
    rules = {
        "customer.name": "drop",
        "items.sku": "hash",
        "items.who": "hash",
        "items.price": "hash",
        "tags.0": "hash",
        "tags.3": "hash",
        "customer.phne": "drop",
    }
    assert paths_matched(document, rules) == {"customer.name", "items.sku", "items.who", "tags.0"}


# --- secrets, determinism, fingerprint -------------------------------------------------------

CROSS_PROCESS_RULES = {
    "userEmail": "hash",
    "email": "fake",
    "name": "fake",
    "phone": "fake",
    "home": "fake:address",
    "street": "fake:address",
    "ids": "hash",
}
CROSS_PROCESS_DOCUMENT = {
    "userEmail": "jane@corp.com",
    "email": "jane@corp.com",
    "name": "Jane Roe",
    "phone": 4155551234,
    "home": {"street": "1 Real St", "city": "Springfield", "zip": "12345", "floor": 3},
    "street": "9 Other St",
    "ids": [1, "1", 1.5],
}
_SUBPROCESS = """
import json, sys
from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS
from stagesync.settings.pii_rules import parse_pii_rule
from stagesync.rules.pii import Masker
rules, document, secret = json.loads(sys.argv[1]), json_util.loads(sys.argv[2]), sys.argv[3]
masker = Masker({p: parse_pii_rule(p, r) for p, r in rules.items()}, secret.encode())
print(json_util.dumps(masker.mask(document), json_options=CANONICAL_JSON_OPTIONS))
"""


def test_same_output_in_other_processes_whatever_their_hash_seed() -> None:
    expected = json_util.dumps(
        mask(CROSS_PROCESS_RULES, CROSS_PROCESS_DOCUMENT), json_options=CANONICAL_JSON_OPTIONS
    )
    arguments = [
        sys.executable,
        "-c",
        _SUBPROCESS,
        json.dumps(CROSS_PROCESS_RULES),
        json_util.dumps(CROSS_PROCESS_DOCUMENT),
        SECRET.decode(),
    ]
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    children = [
        subprocess.Popen(
            arguments,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": python_path, "PYTHONHASHSEED": seed},
        )
        for seed in ("0", "4242")
    ]
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        assert out.strip() == expected


def test_other_secret_other_hashes_and_fakes() -> None:
    rules = {"k": "hash", "email": "fake", "name": "fake", "address": "fake"}
    document = {"k": "v", "email": "jane@corp.com", "name": "Jane", "address": "1 Real St"}
    ours, theirs = mask(rules, document, SECRET), mask(rules, document, OTHER_SECRET)
    for field in rules:
        assert ours[field] != theirs[field], field


def _rules(spec: Mapping[str, str]) -> dict[str, PiiRule]:
    return {path: parse_pii_rule(path, rule) for path, rule in spec.items()}


def test_fingerprint() -> None:
    rules = _rules({"userEmail": "hash", "customer.phone": "drop", "email": "fake"})
    fingerprint = rules_fingerprint(rules, SECRET)
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint)
    assert rules_fingerprint(dict(reversed(list(rules.items()))), SECRET) == fingerprint
    assert rules_fingerprint(rules, OTHER_SECRET) != fingerprint
    assert rules_fingerprint({**rules, "customer.phone": PiiRule("redact")}, SECRET) != fingerprint
    assert rules_fingerprint({**rules, "x": PiiRule("null")}, SECRET) != fingerprint
    assert rules_fingerprint(_rules({"email": "fake:name"}), SECRET) != rules_fingerprint(
        _rules({"email": "fake:email"}), SECRET
    )
    for secret_form in (SECRET.decode(), SECRET.hex(), hashlib.sha256(SECRET).hexdigest()[:16]):
        assert secret_form not in fingerprint
    # Without keyed rules the secret changes no output, so it does not change the fingerprint.
    unkeyed = _rules({"a": "drop", "b": "redact"})
    assert rules_fingerprint(unkeyed, SECRET) == rules_fingerprint(unkeyed, OTHER_SECRET)


# --- properties ------------------------------------------------------------------------------


@FAST
@given(st.one_of(st.text(), st.integers(), st.floats(allow_nan=False), st.binary()))
def test_fake_emails_and_phones_stay_reserved(value: Any) -> None:
    masked = mask({"email": "fake:email", "phone": "fake:phone"}, {"email": value, "phone": value})
    assert FAKE_EMAIL.match(masked["email"])
    assert masked["email"].rsplit("@", 1)[1] in FAKE_EMAIL_DOMAINS
    assert FAKE_PHONE.match(masked["phone"])
    assert 900000 <= int(masked["phone"].rsplit(" ", 1)[1]) <= 900999


KEYS = ["a", "b", "email", "street", "city", "zip", "0", "1"]
KINDS = ["drop", "redact", "null", "hash", "fake:email", "fake:name", "fake:phone", "fake:address"]
LEAVES = st.sampled_from(["str", "int", "float", "none", "bool"])
SHAPES = st.recursive(
    LEAVES,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS), children, max_size=4)
    ),
    max_leaves=24,
)
DOCUMENTS = st.dictionaries(st.sampled_from(KEYS), SHAPES, min_size=1, max_size=5)
RANDOM_PATHS = st.lists(st.sampled_from(KEYS), min_size=1, max_size=3).map(".".join)
Location = tuple[str | int, ...]


def _fill(shape: Any, counter: Iterator[int]) -> Any:
    """Give every leaf a value found nowhere else, so it can be traced into the output."""
    if isinstance(shape, dict):
        return {key: _fill(value, counter) for key, value in shape.items()}
    if isinstance(shape, list):
        return [_fill(value, counter) for value in shape]
    n = next(counter)
    return {
        "str": f"RAW-{n:04d}-",
        "int": 7_000_000_000 + n,
        "float": n + 0.25,
        "none": None,
        "bool": n % 2 == 0,
    }[shape]


def _leaves(node: Any, location: Location = ()) -> Iterator[tuple[Location, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*location, key))
    elif isinstance(node, list):
        for position, value in enumerate(node):
            yield from _leaves(value, (*location, position))
    else:
        yield location, node


def _reached(node: Any, path: list[str], location: Location = ()) -> Iterator[Location]:
    """Reference matcher: where a dotted path lands (through arrays; digits index arrays)."""
    if not path:
        yield location
        return
    name, rest = path[0], path[1:]
    if isinstance(node, dict):
        if name in node:
            yield from _reached(node[name], rest, (*location, name))
    elif isinstance(node, list):
        if name.isdigit():
            if int(name) < len(node):
                yield from _reached(node[int(name)], rest, (*location, int(name)))
        else:
            for position, element in enumerate(node):
                yield from _reached(element, path, (*location, position))


def _paths_in(node: Any, prefix: tuple[str, ...] = ()) -> Iterator[str]:
    """Dotted paths that reach something, so random rule sets mostly hit the document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield ".".join((*prefix, key))
            yield from _paths_in(value, (*prefix, key))
    elif isinstance(node, list):
        for position, value in enumerate(node):
            if prefix:
                yield ".".join((*prefix, str(position)))
            yield from _paths_in(value, prefix)  # through the array, as field paths do
            yield from _paths_in(value, (*prefix, str(position)))


def _traceable(value: Any) -> bool:
    return value is not None and not isinstance(value, bool)


@PROPERTY
@given(DOCUMENTS, st.data())
def test_no_raw_value_under_a_rule_survives_and_nothing_else_changes(
    shape: dict[str, Any], data: st.DataObject
) -> None:
    document = _fill(shape, iter(range(10**6)))
    paths = st.one_of(st.sampled_from(sorted(set(_paths_in(document)))), RANDOM_PATHS)
    spec = data.draw(
        st.dictionaries(paths, st.sampled_from(KINDS), min_size=1, max_size=4), label="rules"
    )
    before = copy.deepcopy(document)
    masked = masker(spec).mask(document)
    assert document == before

    covered = [location for path in spec for location in _reached(document, path.split("."))]
    leaves = dict(_leaves(document))
    output = list(_leaves(masked))
    output_strings = [value for _, value in output if isinstance(value, str)]
    output_at = dict(output)
    for location, raw in leaves.items():
        if any(location[: len(prefix)] == prefix for prefix in covered):
            if not _traceable(raw):
                continue
            assert not any(type(value) is type(raw) and value == raw for _, value in output)
            if isinstance(raw, str):
                assert not any(raw in text for text in output_strings)
        else:
            assert location in output_at
            assert type(output_at[location]) is type(raw) and output_at[location] == raw
