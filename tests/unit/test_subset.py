"""Subset configuration and the keyed sample (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from stagesync.rules.identity import encode_id
from stagesync.rules.subset import in_sample
from stagesync.settings.model import Settings


def test_the_sample_takes_about_its_share_deterministically() -> None:
    pids = [encode_id(i) for i in range(20_000)]
    taken = [pid for pid in pids if in_sample(pid, 10, b"k")]
    assert 1_800 < len(taken) < 2_200
    assert taken == [pid for pid in pids if in_sample(pid, 10, b"k")]


@settings(database=None, max_examples=200)
@given(st.integers(), st.floats(1, 99), st.floats(1, 99))
def test_a_larger_sample_contains_a_smaller_one(value: int, low: float, high: float) -> None:
    low, high = sorted((low, high))
    pid = encode_id(value)
    assert not in_sample(pid, low, b"k") or in_sample(pid, high, b"k")


def test_the_key_decides_the_sample() -> None:
    pids = [encode_id(i) for i in range(2_000)]
    first = {p for p in pids if in_sample(p, 50, b"a")}
    assert first != {p for p in pids if in_sample(p, 50, b"b")}


def config(*collections: dict[str, Any], secret: str = "s") -> dict[str, Any]:
    return {"prod": {"uri": "mongodb://p/"}, "staging": {"uri": "mongodb://s/"},
            "pii_secret": secret, "collections": list(collections)}


def collection(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "source": f"p.{name}", "target": f"s.{name}", "business_key": ["k"],
            **extra}


def test_follow_must_be_a_declared_reference() -> None:
    with pytest.raises(ValidationError, match=r"subset\.follow: 'userId' is not a declared"):
        Settings(**config(collection("users"), collection("orders", subset={"follow": "userId"})))


def test_exactly_one_kind_of_subset() -> None:
    with pytest.raises(ValidationError, match="exactly one of percent or follow"):
        Settings(**config(collection("users", subset={"percent": 5, "follow": "x"})))
    with pytest.raises(ValidationError, match="percent"):
        Settings(**config(collection("users", subset={"percent": 0})))


def test_a_sample_needs_the_secret() -> None:
    with pytest.raises(ValidationError, match=r"subset\.percent: .* needs a non-empty pii_secret"):
        Settings(**config(collection("users", subset={"percent": 5}), secret=""))


def test_subsets_following_each_other_in_a_cycle_are_refused() -> None:
    a = collection("a", references={"b_id": "b"}, subset={"follow": "b_id"})
    b = collection("b", references={"a_id": "a"}, subset={"follow": "a_id"})
    with pytest.raises(ValidationError, match=r"subsets follow each other in a cycle"):
        Settings(**config(a, b))
