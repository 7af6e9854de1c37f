"""Lookups by a list of values are split into bounded `$in` lists, losing and adding nothing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stagesync.deployments.in_lists import IN_LIST_MAX, configure, configured, in_lists


@given(st.lists(st.integers()), st.integers(min_value=1, max_value=7))
def test_the_lists_are_the_values_in_order_none_empty_none_too_long(values: list[int],
                                                                     size: int) -> None:
    lists = list(in_lists(iter(values), size))
    assert [value for some in lists for value in some] == values
    assert all(0 < len(some) <= size for some in lists)
    assert all(len(some) == size for some in lists[:-1])


def test_a_stream_batch_of_2000_becomes_two_queries_at_mongodbs_default() -> None:
    assert [len(some) for some in in_lists(range(2000), IN_LIST_MAX)] == [1000, 1000]


def test_the_configured_length_applies_when_none_is_given() -> None:
    before = configured()
    try:
        configure(300)
        assert [len(some) for some in in_lists(range(700))] == [300, 300, 100]
        with pytest.raises(ValueError, match="in_list_max"):
            configure(0)
    finally:
        configure(before)

