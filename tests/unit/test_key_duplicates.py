"""`surplus_copies`: of the copies a bulk load left holding one business key, exactly one
keeps it (a live one before a deleted one, then the earliest version, then the smallest `_id`),
whatever order they are read in, so that two workers building at once remove the same ones."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from stagesync.rules.identity import encode_id
from stagesync.rules.key_duplicates import surplus_copies

copies = st.lists(
    st.tuples(st.integers(0, 10**6), st.integers(1, 20), st.booleans()),
    min_size=1, max_size=8, unique_by=lambda copy: copy[0],
).map(lambda rows: [_copy(*row) for row in rows])


def _copy(ident: int, version: int, deleted: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {"pid": f"p{ident}", "key": "k", "v": version}
    if deleted:
        meta["deletedAt"] = datetime(2026, 1, 1, tzinfo=UTC)
    return {"_id": ident, "_sync": meta}


def _kept(group: list[dict[str, Any]]) -> dict[str, Any]:
    surplus = surplus_copies(group)
    assert len(surplus) == len(group) - 1
    removed = {id(copy) for copy in surplus}
    (kept,) = [copy for copy in group if id(copy) not in removed]
    return kept


@given(copies, st.randoms())
def test_one_copy_keeps_the_key_whatever_the_order(group: list[dict[str, Any]],
                                                   rng: Any) -> None:
    kept = _kept(group)
    shuffled = list(group)
    rng.shuffle(shuffled)
    assert _kept(shuffled)["_id"] == kept["_id"]


@given(copies)
def test_the_live_copy_written_first_keeps_it(group: list[dict[str, Any]]) -> None:
    kept = _kept(group)
    live = [copy for copy in group if "deletedAt" not in copy["_sync"]]
    candidates = live or group
    first = min(copy["_sync"]["v"] for copy in candidates)
    assert kept in candidates and kept["_sync"]["v"] == first
    assert encode_id(kept["_id"]) == min(
        encode_id(copy["_id"]) for copy in candidates if copy["_sync"]["v"] == first)


def test_a_single_copy_keeps_its_key() -> None:
    assert surplus_copies([_copy(1, 3, False)]) == []
