"""`_sync` metadata: ownership is stored compactly and read back exactly, old format included."""

from __future__ import annotations

import bson
from hypothesis import given, settings
from hypothesis import strategies as st
from stagesync.rules.sync_meta import decode_owned, encode_owned, read_meta

names = st.text(alphabet=st.sampled_from(["a", "b", ".", "\\", "$", " ", "é", "\n"]),
                min_size=0, max_size=5)


@settings(database=None, max_examples=300)
@given(st.lists(st.lists(names, min_size=1, max_size=4).map(tuple), max_size=20, unique=True))
def test_owned_paths_round_trip_in_order(paths: list[tuple[str, ...]]) -> None:
    assert decode_owned(bson.decode(bson.encode({"o": encode_owned(paths)}))["o"]) == tuple(paths)


def test_the_earlier_list_format_is_still_read() -> None:
    meta = read_meta({"_sync": {"pid": "p", "v": 3, "owned": ["a", "b.c", "d\\.e"]}})
    assert meta.owned == (("a",), ("b", "c"), ("d.e",)) and meta.version == 3


def test_ownership_of_many_small_fields_costs_a_fraction_of_the_document() -> None:
    document = {f"metric_{i:04d}": i for i in range(2000)}
    owned = encode_owned((name,) for name in document)
    as_strings = [name for name in document]
    assert len(bson.encode({"owned": owned})) < len(bson.encode(document)) / 5
    assert len(bson.encode({"owned": owned})) < len(bson.encode({"owned": as_strings})) / 5


def test_a_shape_encodes_the_same_each_time_and_large_ones_round_trip() -> None:
    """`encode_owned` remembers shapes of up to a few hundred leaves; larger ones are encoded
    each time, to the same format."""
    shape = [("a",), ("b", "c.d")]
    assert encode_owned(iter(shape)) == encode_owned(list(shape))
    assert decode_owned(encode_owned(shape)) == tuple(shape)
    large = [(f"m{i}", "x") for i in range(1000)]
    assert decode_owned(encode_owned(large)) == tuple(large)
