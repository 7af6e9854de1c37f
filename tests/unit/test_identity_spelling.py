"""`encode_id` / `decode_id` spell the common `_id` types directly: the spelling must stay
exactly `json_util`'s canonical Extended JSON, and must read back to the same type and value,
since staging's `_sync.pid` index and every message already hold `json_util`'s spelling."""

from __future__ import annotations

import uuid
from typing import Any

from bson import Binary, Decimal128, Int64, ObjectId, json_util
from bson.json_util import CANONICAL_JSON_OPTIONS
from hypothesis import given
from hypothesis import strategies as st
from stagesync.rules.identity import (
    FIRST_OBJECT_ID,
    LAST_OBJECT_ID,
    decode_id,
    encode_id,
)

IDS = st.one_of(
    st.builds(ObjectId, st.binary(min_size=12, max_size=12)),
    st.text(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(Int64),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.uuids().map(lambda u: Binary.from_uuid(u)),
    # Bounded: Decimal128 holds 34 digits, and a longer decimal fails in the strategy itself.
    st.decimals(allow_nan=False, allow_infinity=False, places=3,
                min_value=-(10**30), max_value=10**30).map(Decimal128),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 5), max_size=2),
)


def reference(value: Any) -> str:
    return json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS)


@given(IDS)
def test_the_spelling_is_json_utils_and_reads_back_exactly(value: Any) -> None:
    encoded = encode_id(value)
    assert encoded == reference(value)
    decoded = decode_id(encoded)
    expected = json_util.loads(encoded, json_options=CANONICAL_JSON_OPTIONS)
    assert type(decoded) is type(expected)
    assert reference(decoded) == encoded


def test_a_uuid_is_spelt_as_its_binary() -> None:
    value = uuid.uuid4()
    assert encode_id(value) == reference(Binary.from_uuid(value))


def test_an_int_beyond_int64_is_left_to_json_util() -> None:
    big = 2**63
    assert encode_id(big) == reference(big)


KEY_VALUES = st.lists(st.one_of(
    st.builds(ObjectId, st.binary(min_size=12, max_size=12)), st.text(),
    st.integers(min_value=-(2**70), max_value=2**70).filter(lambda n: -(2**63) <= n < 2**63),
    st.floats(allow_nan=False), st.booleans(), st.none(),
), min_size=1, max_size=4)


@given(KEY_VALUES)
def test_a_key_digest_is_the_digest_of_json_utils_spelling(values: list[Any]) -> None:
    import hashlib

    from stagesync.rules.identity import key_digest

    expected = hashlib.sha256(reference(values).encode()).hexdigest()
    assert key_digest(values) == expected



OBJECT_IDS = st.builds(ObjectId, st.binary(min_size=12, max_size=12))


@given(st.lists(OBJECT_IDS, min_size=1, max_size=30))
def test_object_id_spellings_sort_as_the_object_ids(ids: list[ObjectId]) -> None:
    """What a resync's range reads of `_sync.pid` rely on: the copies of a run of ObjectIds
    lie between the spellings of its first and last."""
    spelt = [encode_id(value) for value in sorted(ids)]
    assert sorted(spelt) == spelt
    assert all(FIRST_OBJECT_ID <= pid <= LAST_OBJECT_ID for pid in spelt)


@given(IDS)
def test_only_object_ids_are_spelt_between_the_first_and_the_last(value: Any) -> None:
    spelt = encode_id(value)
    assert (FIRST_OBJECT_ID <= spelt <= LAST_OBJECT_ID) == (type(value) is ObjectId)


def test_the_bounds_are_object_id_spellings() -> None:
    assert encode_id(ObjectId("0" * 24)) == FIRST_OBJECT_ID
    assert encode_id(ObjectId("f" * 24)) == LAST_OBJECT_ID
    assert encode_id(1) < encode_id(10) < encode_id(9)  # ints: no range of their spellings
