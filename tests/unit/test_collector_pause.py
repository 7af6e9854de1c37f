"""`collector_paused`: automatic garbage collection off while any resync turn is inside, and
back as it was once the last one leaves, whatever the order (a thread pool's turns overlap)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stagesync.tasks.full_resync.collector import collector_paused


@pytest.fixture(autouse=True)
def collection_restored() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    (gc.enable if enabled else gc.disable)()


@given(st.lists(st.booleans(), min_size=1, max_size=12))
def test_collection_is_off_while_any_turn_is_inside(steps: list[bool]) -> None:
    """`steps`: True enters one more turn, False leaves the oldest open one."""
    gc.enable()
    open_turns: list[ExitStack] = []
    for enter in steps:
        if enter or not open_turns:
            stack = ExitStack()
            stack.enter_context(collector_paused())
            open_turns.append(stack)
        else:
            open_turns.pop(0).close()
        assert gc.isenabled() == (not open_turns)
    for stack in open_turns:
        stack.close()
    assert gc.isenabled()


def test_collection_turned_off_by_someone_else_stays_off() -> None:
    gc.disable()
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_an_error_inside_still_brings_collection_back() -> None:
    gc.enable()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("a failed turn")
    assert gc.isenabled()
