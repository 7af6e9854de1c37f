"""Merge rules (`rules.paths`, `rules.identity`, `rules.merge`): invariant 3.

Production owns exactly the leaf paths it sent last; everything else in a staging document
survives a merge. Pure functions, no I/O.
"""

from __future__ import annotations

import copy
import hashlib
import re
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import bson
import pytest
from bson import Binary, Int64, ObjectId, json_util
from bson.json_util import CANONICAL_JSON_OPTIONS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stagesync.rules.identity import (
    business_key,
    decode_id,
    encode_id,
    key_digest,
    key_paths,
)
from stagesync.rules.merge import (
    FieldRules,
    content_of,
    merge_fields,
    owned_paths,
    production_content,
    production_view,
    shared_last,
    shared_parents,
)
from stagesync.rules.paths import (
    Path,
    get_path,
    has_path,
    is_prefix,
    join_dotted,
    leaf_paths,
    overlaps,
    set_path,
    split_dotted,
    unset_path,
)

FAST = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROPERTY = settings(FAST, max_examples=200)

RULES = FieldRules(staging_fields=(("qaNotes",), ("qa", "flags")), soft_delete_field=("deleted",))
OID = ObjectId("65a1b2c3d4e5f60718293a4b")


# --- paths -----------------------------------------------------------------------------------


def test_leaf_paths_stop_at_scalars_arrays_and_empty_documents() -> None:
    document = {
        "a": 1,
        "b": {"c": [1, {"d": 2}], "e": {}},
        "f": {"g": {"h": None}},
        "i": [],
    }
    assert dict(leaf_paths(document)) == {
        ("a",): 1,
        ("b", "c"): [1, {"d": 2}],
        ("b", "e"): {},
        ("f", "g", "h"): None,
        ("i",): [],
    }


def test_leaf_paths_of_an_empty_document() -> None:
    assert list(leaf_paths({})) == []


def test_leaf_paths_with_prefix() -> None:
    assert list(leaf_paths({"x": 1}, ("root",))) == [(("root", "x"), 1)]


def test_get_and_has_path() -> None:
    document = {"a": {"b": None, "c": [{"d": 1}]}, "s": "text"}
    assert get_path(document, ("a", "b"), "default") is None
    assert has_path(document, ("a", "b"))  # present, even though null
    assert get_path(document, ("a",)) == {"b": None, "c": [{"d": 1}]}
    assert get_path(document, ("a", "x"), "default") == "default"
    assert not has_path(document, ("a", "x"))
    # Never descends into arrays or scalars.
    assert not has_path(document, ("a", "c", "d"))
    assert not has_path(document, ("a", "c", "0"))
    assert not has_path(document, ("s", "x"))
    assert get_path(document, ()) is document


def test_set_path_creates_and_replaces_on_the_way() -> None:
    document: dict[str, Any] = {"a": 1, "k": {"keep": True}}
    set_path(document, ("x", "y", "z"), 3)
    set_path(document, ("a", "b"), 2)  # a scalar on the way is replaced by a sub-document
    set_path(document, ("k", "new"), 4)
    assert document == {"a": {"b": 2}, "k": {"keep": True, "new": 4}, "x": {"y": {"z": 3}}}


def test_set_path_replaces_an_array_on_the_way() -> None:
    document: dict[str, Any] = {"a": [1, 2]}
    set_path(document, ("a", "b"), 1)
    assert document == {"a": {"b": 1}}


def test_unset_path_prunes_parents_left_empty() -> None:
    document: dict[str, Any] = {"a": {"b": {"c": 1}}, "x": 1}
    unset_path(document, ("a", "b", "c"))
    assert document == {"x": 1}


def test_unset_path_keeps_parents_with_other_content() -> None:
    document: dict[str, Any] = {"a": {"b": {"c": 1}, "k": 2}}
    unset_path(document, ("a", "b", "c"))
    assert document == {"a": {"k": 2}}


def test_unset_path_of_a_sub_document_removes_it_whole() -> None:
    document: dict[str, Any] = {"a": {"b": {"c": 1}}, "z": 0}
    unset_path(document, ("a", "b"))
    assert document == {"z": 0}


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"a": {"b": 1}}, ("a", "x")),
        ({"a": {"b": 1}}, ("x", "b")),
        ({"a": 5}, ("a", "b")),
        ({"a": [{"b": 1}]}, ("a", "b")),
        ({"a": {"b": {}}}, ("a", "b", "c")),  # already-empty parents are not this unset's doing
        ({}, ("a",)),
    ],
)
def test_unset_path_of_a_missing_path_changes_nothing(
    document: dict[str, Any], path: Path
) -> None:
    before = copy.deepcopy(document)
    unset_path(document, path)
    assert document == before


def test_prefix_and_overlap() -> None:
    assert is_prefix(("a",), ("a", "b"))
    assert is_prefix(("a", "b"), ("a", "b"))
    assert not is_prefix(("a", "b"), ("a",))
    assert not is_prefix(("a",), ("ab",))
    assert overlaps(("a",), ("a", "b")) and overlaps(("a", "b"), ("a",))
    assert not overlaps(("a", "b"), ("a", "c"))


@pytest.mark.parametrize(
    ("path", "dotted"),
    [
        (("customer", "name"), "customer.name"),
        (("a.b", "c"), "a\\.b.c"),
        (("back\\slash",), "back\\\\slash"),
        (("end\\", "x"), "end\\\\.x"),
        (("",), ""),
        (("", ""), "."),
        (("a", "", "b"), "a..b"),
    ],
)
def test_dotted_escape(path: Path, dotted: str) -> None:
    assert join_dotted(path) == dotted
    assert split_dotted(dotted) == path


def test_split_dotted_plain() -> None:
    assert split_dotted("customer.address.city") == ("customer", "address", "city")
    assert split_dotted("single") == ("single",)


field_names = st.text(alphabet=st.sampled_from(["a", "b", ".", "\\", "$", " ", "é"]), max_size=5)


@FAST
@given(st.lists(st.one_of(field_names, st.text(max_size=8)), min_size=1, max_size=6).map(tuple))
def test_dotted_round_trip(path: Path) -> None:
    assert split_dotted(join_dotted(path)) == path


@FAST
@given(
    st.lists(st.lists(field_names, min_size=1, max_size=4).map(tuple), min_size=2, max_size=2)
)
def test_distinct_paths_have_distinct_dotted_forms(paths: list[Path]) -> None:
    first, second = paths
    assert (join_dotted(first) == join_dotted(second)) == (first == second)


# --- identity --------------------------------------------------------------------------------


def test_encode_id_is_canonical_extended_json() -> None:
    assert encode_id(OID) == '{"$oid": "65a1b2c3d4e5f60718293a4b"}'
    assert encode_id(7) == '{"$numberInt": "7"}'
    assert encode_id("abc") == '"abc"'


@pytest.mark.parametrize(
    "value",
    [
        OID,
        str(OID),
        1,
        1.0,
        Int64(1),
        "1",
        True,
        None,
        {"a": 1, "b": OID},
        {"b": OID, "a": 1},
        [1, 2],
        datetime(2024, 1, 2, 3, 4, 5, 678000),
    ],
)
def test_decode_id_preserves_the_type(value: Any) -> None:
    decoded = decode_id(encode_id(value))
    assert decoded == value
    assert type(decoded) is type(value)
    assert encode_id(decoded) == encode_id(value)


def test_encoding_keeps_look_alike_ids_apart() -> None:
    look_alikes = [OID, str(OID), 1, 1.0, "1", Int64(1), True, {"a": 1, "b": 2}, {"b": 2, "a": 1}]
    encoded = [encode_id(value) for value in look_alikes]
    assert len(set(encoded)) == len(look_alikes)


def test_decoded_nested_document_keeps_field_types_and_order() -> None:
    value = {"tenant": "t1", "oid": OID, "n": 2.5, "inner": {"x": [1, "1"]}}
    decoded = decode_id(encode_id(value))
    assert list(decoded) == ["tenant", "oid", "n", "inner"]
    assert type(decoded["oid"]) is ObjectId
    assert type(decoded["n"]) is float
    assert [type(v) for v in decoded["inner"]["x"]] == [int, str]


id_scalars = st.one_of(
    st.builds(ObjectId),
    st.text(max_size=12),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(Int64),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
)
id_values = st.recursive(
    id_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(
            st.text(alphabet="abcxyz", min_size=1, max_size=3), children, max_size=3
        ),
    ),
    max_leaves=8,
)


@FAST
@given(id_values)
def test_encode_decode_round_trip(value: Any) -> None:
    encoded = encode_id(value)
    decoded = decode_id(encoded)
    assert decoded == value
    assert encode_id(decoded) == encoded  # types survive, not just values


@FAST
@given(id_values, id_values)
def test_encoding_is_injective(first: Any, second: Any) -> None:
    if encode_id(first) == encode_id(second):
        assert decode_id(encode_id(first)) == decode_id(encode_id(second))
        assert encode_id(decode_id(encode_id(first))) == encode_id(second)


def test_encode_id_accepts_a_native_uuid() -> None:
    native = uuid.UUID("1f3e5d7c-9b8a-4c6d-8e0f-a1b2c3d4e5f6")
    encoded = encode_id(native)
    assert encoded == encode_id(Binary.from_uuid(native))
    assert decode_id(encoded) in (native, Binary.from_uuid(native))


def test_key_paths_split_dotted_fields() -> None:
    assert key_paths(["userEmail", "customer.id", "odd\\.name"]) == [
        ("userEmail",),
        ("customer", "id"),
        ("odd.name",),
    ]


def test_business_key_values() -> None:
    paths = key_paths(["userEmail", "account.id"])
    document = {"userEmail": "a@example.com", "account": {"id": 42}}
    assert business_key(document, paths) == ["a@example.com", 42]


@pytest.mark.parametrize(
    "document",
    [
        {"account": {"id": 42}},
        {"userEmail": None, "account": {"id": 42}},
        {"userEmail": "a@example.com"},
        {"userEmail": "a@example.com", "account": {"id": None}},
        {"userEmail": "a@example.com", "account": 42},
        {"userEmail": "a@example.com", "account": [{"id": 42}]},
    ],
)
def test_business_key_missing_or_null_is_none(document: dict[str, Any]) -> None:
    assert business_key(document, key_paths(["userEmail", "account.id"])) is None


@pytest.mark.parametrize("falsy", [0, "", False, [], {}])
def test_business_key_falsy_values_are_still_keys(falsy: Any) -> None:
    assert business_key({"k": falsy}, key_paths(["k"])) == [falsy]


def test_key_digest_is_stable_and_short() -> None:
    """The SHA-256 of the canonical Extended JSON of the key's values, as 64 hex digits: the
    same in every process (no Python `hash`), and distinct for distinct keys."""
    digest = key_digest(["a@example.com", 42])
    assert digest == key_digest(["a@example.com", 42])
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    canonical = json_util.dumps(["a@example.com", 42], json_options=CANONICAL_JSON_OPTIONS)
    assert digest == hashlib.sha256(canonical.encode()).hexdigest()
    assert digest != key_digest(["a@example.com", 43])


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ([1], [1.0]),
        ([1], ["1"]),
        ([1], [True]),
        ([OID], [str(OID)]),
        (["a", "b"], ["b", "a"]),
        (["ab"], ["a", "b"]),
        ([{"x": 1, "y": 2}], [{"y": 2, "x": 1}]),
        ([None], ["null"]),
    ],
)
def test_key_digest_is_type_sensitive(first: list[Any], second: list[Any]) -> None:
    assert key_digest(first) != key_digest(second)


# --- merge: examples -------------------------------------------------------------------------


def merge(
    current: Mapping[str, Any] | None,
    production: Mapping[str, Any],
    owned_before: set[Path] | None = None,
    rules: FieldRules = RULES,
) -> tuple[dict[str, Any], set[Path]]:
    body, owned = merge_fields(current, production, owned_before or set(), rules)
    return body, set(owned)


def test_first_merge_copies_production_without_id_and_sync() -> None:
    production = {"_id": OID, "userEmail": "a@example.com", "customer": {"name": "A", "tags": [1]}}
    body, owned = merge(None, production)
    assert body == {"userEmail": "a@example.com", "customer": {"name": "A", "tags": [1]}}
    assert owned == {("userEmail",), ("customer", "name"), ("customer", "tags")}


def test_id_and_sync_are_never_copied_from_production() -> None:
    current = {"_id": "staging-id", "_sync": {"version": 3}, "x": 0}
    production = {"_id": OID, "_sync": {"version": 99, "owned": ["x"]}, "x": 1}
    body, owned = merge(current, production, {("x",)})
    assert body == {"x": 1}
    assert "_id" not in body and "_sync" not in body
    assert owned == {("x",)}


def test_staging_only_top_level_fields_survive() -> None:
    current = {"_id": "s1", "qaNote": "keep me", "status": "new"}
    body, _ = merge(current, {"_id": OID, "status": "shipped"}, {("status",)})
    assert body == {"qaNote": "keep me", "status": "shipped"}


def test_staging_only_nested_field_survives_an_update_of_its_parent() -> None:
    current = {"customer": {"name": "A", "phone": "1", "qaTag": "vip-test"}}
    production = {"customer": {"name": "B", "email": "b@example.com"}}
    body, owned = merge(current, production, {("customer", "name"), ("customer", "phone")})
    assert body == {"customer": {"name": "B", "email": "b@example.com", "qaTag": "vip-test"}}
    assert owned == {("customer", "name"), ("customer", "email")}


def test_field_production_removed_is_removed_from_staging() -> None:
    current = {"a": 1, "coupon": "X10", "b": {"c": 1, "qa": 2}, "gone": {"deep": {"x": 1}}}
    owned_before = {("a",), ("coupon",), ("b", "c"), ("gone", "deep", "x")}
    body, owned = merge(current, {"a": 2}, owned_before)
    assert body == {"a": 2, "b": {"qa": 2}}
    assert owned == {("a",)}


def test_field_absent_from_a_replacement_is_removed_but_never_owned_ones_stay() -> None:
    current = {"name": "A", "legacy": True, "qaFixture": True}
    body, _ = merge(current, {"name": "A"}, {("name",), ("legacy",)})
    assert body == {"name": "A", "qaFixture": True}


def test_staging_fields_are_never_overwritten() -> None:
    current = {"qaNotes": "mine", "qa": {"flags": ["beta"], "other": 1}}
    production = {"qaNotes": "prod", "qa": {"flags": ["prod"], "other": 2}, "x": 1}
    body, owned = merge(current, production, {("qa", "other")})
    assert body == {"qaNotes": "mine", "qa": {"flags": ["beta"], "other": 2}, "x": 1}
    assert ("qaNotes",) not in owned and ("qa", "flags") not in owned


def test_staging_fields_are_not_created_from_production() -> None:
    body, owned = merge({}, {"qaNotes": "prod", "x": 1})
    assert body == {"x": 1}
    assert owned == {("x",)}


def test_parent_of_a_staging_field_is_not_overwritten_by_a_scalar() -> None:
    current = {"qa": {"flags": ["beta"]}}
    body, owned = merge(current, {"qa": "scalar"})
    assert body == {"qa": {"flags": ["beta"]}}
    assert owned == set()


def test_previously_owned_path_now_protected_is_left_to_staging() -> None:
    """A path the configuration started protecting is staging's from then on."""
    current = {"qaNotes": "written by production long ago", "x": 1}
    body, _ = merge(current, {"x": 1}, {("qaNotes",), ("x",)})
    assert body == current


def test_soft_delete_field_is_never_written_by_the_merge() -> None:
    body, owned = merge({"deleted": True, "x": 0}, {"deleted": False, "x": 1}, {("x",)})
    assert body == {"deleted": True, "x": 1}
    assert ("deleted",) not in owned
    body, owned = merge({"x": 0}, {"deleted": {"at": 1}, "x": 1}, {("x",)})
    assert body == {"x": 1}
    assert owned == {("x",)}


def test_soft_delete_field_is_never_removed_by_the_merge() -> None:
    body, _ = merge({"deleted": True, "x": 1}, {"x": 1}, {("x",), ("deleted",)})
    assert body == {"deleted": True, "x": 1}


def test_nested_soft_delete_field() -> None:
    rules = FieldRules(staging_fields=(), soft_delete_field=("meta", "deleted"))
    current = {"meta": {"deleted": True, "source": "a"}}
    body, owned = merge(current, {"meta": {"deleted": False, "source": "b"}}, rules=rules)
    assert body == {"meta": {"deleted": True, "source": "b"}}
    assert owned == {("meta", "source")}


def test_arrays_are_replaced_whole() -> None:
    current = {"tags": ["a", "b", "c"], "items": [{"sku": 1, "qa": "x"}, {"sku": 2}]}
    production = {"tags": ["z"], "items": [{"sku": 3}]}
    body, owned = merge(current, production, {("tags",), ("items",)})
    assert body == {"tags": ["z"], "items": [{"sku": 3}]}
    assert owned == {("tags",), ("items",)}


def test_scalar_becoming_a_document_and_back() -> None:
    body, owned = merge({"addr": "x"}, {"addr": {"city": "Y"}}, {("addr",)})
    assert body == {"addr": {"city": "Y"}}
    body, owned = merge(body, {"addr": "z"}, owned)
    assert body == {"addr": "z"}
    assert owned == {("addr",)}


def test_empty_sub_document_from_production_keeps_staging_content() -> None:
    current = {"meta": {"qa": 1}}
    body, owned = merge(current, {"meta": {}})
    assert body == {"meta": {"qa": 1}}
    assert owned == {("meta",)}
    # ...and when production drops it later, staging's content inside still survives.
    body, owned = merge(body, {}, owned)
    assert body == {"meta": {"qa": 1}}
    assert owned == set()


def test_empty_sub_document_is_created_and_removed() -> None:
    body, owned = merge({}, {"meta": {}})
    assert body == {"meta": {}}
    body, owned = merge(body, {"other": 1}, owned)
    assert body == {"other": 1}


def test_null_values_are_copied_and_owned() -> None:
    body, owned = merge({"x": 1}, {"x": None}, {("x",)})
    assert body == {"x": None}
    assert owned == {("x",)}


def test_merge_does_not_mutate_its_inputs_or_share_values() -> None:
    current = {"_id": 1, "qa": {"keep": [1]}, "a": {"b": 1}}
    production = {"_id": OID, "a": {"b": 2, "list": [1, 2]}}
    current_copy, production_copy = copy.deepcopy(current), copy.deepcopy(production)
    owned_before = {("a", "b")}
    body, _ = merge(current, production, owned_before)
    assert current == current_copy and production == production_copy
    assert owned_before == {("a", "b")}
    body["a"]["list"].append(3)
    body["qa"]["keep"].append(2)
    assert production["a"]["list"] == [1, 2]
    assert current["qa"]["keep"] == [1]


def test_owned_paths_exclude_reserved_and_protected() -> None:
    production = {"_id": 1, "_sync": {"x": 1}, "deleted": True, "qaNotes": "n",
                  "qa": {"flags": 1, "ok": 2}, "a": {"b": 1}}
    assert owned_paths(production, RULES) == [("qa", "ok"), ("a", "b")]


def test_production_view() -> None:
    document = {"a": {"b": 1, "qa": 2}, "c": [1], "qaNotes": "x"}
    assert production_view(document, {("a", "b"), ("c",), ("missing",)}) == {
        "a": {"b": 1},
        "c": [1],
    }


def test_shared_parents_hold_fields_of_both() -> None:
    document = {"a": {"b": 1, "qa": 2}, "c": {"d": 1}, "e": {"x": 1}, "qaNotes": "x",
                "f": {"g": {"h": 1, "note": 1}}}
    owned = [("a", "b"), ("c", "d"), ("e",), ("f", "g", "h")]
    # `e` was an empty sub-document in production, and staging put a field in it since.
    assert shared_parents(document, owned) == {("a",), ("e",), ("f",), ("f", "g")}
    assert shared_parents({"c": {"d": 1}}, [("c", "d")]) == set()


def test_shared_last_moves_only_shared_sub_documents() -> None:
    view = {"z": {"b": 1}, "c": 1, "a": {"y": {}, "x": 2}, "d": 3}
    settled = shared_last(view, {("z",), ("a",), ("a", "y")})
    assert list(settled) == ["c", "d", "a", "z"]
    assert list(settled["a"]) == ["x", "y"]
    assert shared_last(view, set()) == view and list(shared_last(view, set())) == list(view)


# --- merge: properties -----------------------------------------------------------------------

PROD_NAMES = ["a", "b", "c", "deleted", "qaNotes", "qa", "flags"]
STAGING_NAMES = ["qa1", "qa2"]

scalars = st.one_of(
    st.integers(-3, 3), st.sampled_from(["x", "y", ""]), st.none(), st.booleans()
)
leaves = st.one_of(scalars, st.lists(scalars, max_size=3), st.just({}))
documents = st.recursive(
    leaves,
    lambda children: st.dictionaries(st.sampled_from(PROD_NAMES), children, min_size=1,
                                     max_size=4),
    max_leaves=10,
).filter(lambda value: isinstance(value, dict))
prefixes = st.lists(st.sampled_from(PROD_NAMES), max_size=3).map(tuple)
staging_entries = st.lists(
    st.tuples(prefixes, st.sampled_from(STAGING_NAMES), scalars), max_size=4
)


def staging_only_fields(
    entries: list[tuple[Path, str, Any]], *productions: Mapping[str, Any]
) -> dict[Path, Any]:
    """Staging-only paths that no production document uses, plus the soft-delete flag and a
    configured staging field, which production may well send but never owns."""
    used = set().union(*(owned_paths(p, RULES) for p in productions))
    chosen: dict[Path, Any] = {("deleted",): True, ("qaNotes",): "qa wrote this"}
    for prefix, name, value in entries:
        path = (*prefix, name)
        if any(overlaps(path, taken) for taken in used):
            continue
        if any(overlaps(path, protected) for protected in (("deleted",), ("qaNotes",),
                                                           ("qa", "flags"))):
            continue
        chosen[path] = value
    return chosen


def with_fields(document: Mapping[str, Any], fields: Mapping[Path, Any]) -> dict[str, Any]:
    result = copy.deepcopy(dict(document))
    for path, value in fields.items():
        set_path(result, path, copy.deepcopy(value))
    return result


def sorted_keys(document: Mapping[str, Any]) -> dict[str, Any]:
    return {k: sorted_keys(v) if isinstance(v, Mapping) else v
            for k, v in sorted(document.items())}


@PROPERTY
@given(documents)
def test_syncable_content_is_the_leaves_and_the_content_they_make(
    production: dict[str, Any],
) -> None:
    """The planner's one walk gives what the leaves and `content_of` give, field order and
    BSON types included (a sub-document whose every leaf is staging's is left out)."""
    leaves, content = RULES.syncable_content(production)
    assert leaves == RULES.syncable_leaves(production)
    assert bson.encode(content) == bson.encode(content_of(leaves))


def test_syncable_content_leaves_out_what_staging_owns() -> None:
    production = {"a": 1, "qa": {"flags": [1]}, "qaNotes": "x", "deleted": True, "_id": 7,
                  "b": {"c": {}, "d": {"e": 2}}}
    leaves, content = RULES.syncable_content(production)
    assert content == {"a": 1, "b": {"c": {}, "d": {"e": 2}}}
    assert [path for path, _ in leaves] == [("a",), ("b", "c"), ("b", "d", "e")]


@PROPERTY
@given(documents, documents, staging_entries, st.booleans())
def test_merging_a_then_b_equals_b_and_keeps_staging_fields(
    first: dict[str, Any],
    second: dict[str, Any],
    entries: list[tuple[Path, str, Any]],
    qa_edits_after_first: bool,
) -> None:
    staging_fields = staging_only_fields(entries, first, second)
    start = {"_id": "staging-id"} if qa_edits_after_first else with_fields(
        {"_id": "staging-id"}, staging_fields
    )

    body, owned = merge_fields(start, first, set(), RULES)
    if qa_edits_after_first:
        body = with_fields(body, staging_fields)
    body, owned = merge_fields(body, second, owned, RULES)

    owned_second = owned_paths(second, RULES)
    assert owned == owned_second
    # Production-owned paths hold exactly what production sent last (BSON types included), in
    # production's order, except that a sub-document holding staging's own fields keeps its
    # place among its siblings.
    view, content = production_view(body, owned), production_content(second, RULES)
    if any(len(path) > 1 for path in staging_fields):
        view, content = sorted_keys(view), sorted_keys(content)
    assert bson.encode(view) == bson.encode(content)
    # Every staging-only field is intact.
    for path, value in staging_fields.items():
        assert get_path(body, path, "<missing>") == value, path
    # Nothing of `first` lingers: every leaf is production's (now) or staging's.
    leaves_now = {path for path, _ in leaf_paths(body)}
    assert leaves_now == set(owned_second) | set(staging_fields)


@PROPERTY
@given(documents, staging_entries)
def test_shared_parents_are_the_sub_documents_holding_fields_of_both(
    production: dict[str, Any], entries: list[tuple[Path, str, Any]]
) -> None:
    """The walk finds what the definition says, asked of every owned path and every
    sub-document on the way: an owned leaf holding a non-empty sub-document, or a sub-document
    on the way holding a field that is neither (and every sub-document around those)."""
    body, owned = merge_fields(with_fields({}, staging_only_fields(entries, production)),
                               production, set(), RULES)
    wanted = set(owned)
    on_the_way = {path[:i] for path in wanted for i in range(1, len(path))}
    defined: set[Path] = set()
    for path in wanted | on_the_way:
        node = get_path(body, path)
        if isinstance(node, Mapping) and node and (path in wanted or any(
                (*path, name) not in wanted | on_the_way for name in node)):
            defined |= {path[:i] for i in range(1, len(path) + 1)}
    assert shared_parents(body, owned) == defined


@PROPERTY
@given(documents, documents, staging_entries)
def test_merge_result_does_not_depend_on_history(
    first: dict[str, Any], second: dict[str, Any], entries: list[tuple[Path, str, Any]]
) -> None:
    staging_fields = staging_only_fields(entries, first, second)
    start = with_fields({}, staging_fields)
    via_first, _ = merge_fields(start, first, set(), RULES)
    via_first, owned_a = merge_fields(via_first, second, owned_paths(first, RULES), RULES)
    direct, owned_b = merge_fields(start, second, set(), RULES)
    assert via_first == direct
    assert owned_a == owned_b


@PROPERTY
@given(documents, documents, staging_entries)
def test_merge_is_idempotent(
    first: dict[str, Any], second: dict[str, Any], entries: list[tuple[Path, str, Any]]
) -> None:
    staging_fields = staging_only_fields(entries, first, second)
    body, owned = merge_fields(with_fields({}, staging_fields), first, set(), RULES)
    once, owned_once = merge_fields(body, second, owned, RULES)
    twice, owned_twice = merge_fields(once, second, owned_once, RULES)
    assert twice == once
    assert owned_twice == owned_once


@FAST
@given(documents)
def test_owned_paths_are_leaf_paths_of_production(document: dict[str, Any]) -> None:
    owned = owned_paths(document, RULES)
    assert set(owned) <= {path for path, _ in leaf_paths(document)}
    for path in owned:
        assert RULES.syncable(path)
        assert split_dotted(join_dotted(path)) == path
