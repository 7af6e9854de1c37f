"""The environments bench's arithmetic (bench/env_figures.py) and the proxy's per-connection
message framing (bench/delay_proxy.py): a wrong divisor or a lost frame would look like a
plausible figure."""

from __future__ import annotations

import struct
from collections import Counter

import pytest
from bson import ObjectId
from stagesync.rules.identity import encode_id
from stagesync.rules.subset import in_sample

from bench.delay_proxy import WireCounter
from bench.env_figures import (
    Figure,
    environment_databases,
    extra_environment_cost,
    figures_markdown,
    order_in_environment,
    per_change,
    ratio,
    writes_in,
)
from bench.product import PII_SECRET


def test_extra_environment_cost_is_per_environment_and_relative_to_the_main_staging() -> None:
    # 300 µs/change alone, 900 with 10 environments: each adds 60 µs = 0.2 of the main's.
    assert extra_environment_cost(300e-6, 900e-6, 10) == pytest.approx(0.2)
    assert extra_environment_cost(None, 900e-6, 10) is None
    assert extra_environment_cost(300e-6, 900e-6, 0) is None
    assert extra_environment_cost(0.0, 900e-6, 10) is None


def test_ratios_and_per_change_refuse_missing_or_empty_inputs() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(3.0, 0.0) is None and ratio(None, 2.0) is None
    assert per_change(12.0, 12_000) == 0.001
    assert per_change(12.0, 0) is None


def test_a_figure_is_met_at_its_limit_and_unmeasured_without_a_value() -> None:
    assert Figure("a", 10.0, 10, "s").met is True
    assert Figure("a", 10.01, 10, "s").verdict() == "NOT met"
    assert Figure("a", None, 10, "s").verdict() == "not measured"
    table = figures_markdown([Figure("thaw", 998, 1000, "documents", "oplog")])
    assert "| thaw | **998 documents** | ≤ 1,000 documents | met | oplog |" in table


def test_writes_are_counted_in_the_environments_databases_only() -> None:
    databases = environment_databases("staging", "{db}__{env}", ["e1", "e10"])
    assert databases == ["staging__e1", "staging__e10"]
    written = {"staging.orders": Counter(u=5), "staging__e1.orders": Counter(u=3, i=1),
               "staging__e10.users": Counter(i=2), "staging__e100.orders": Counter(u=7),
               "stagesync.versions": Counter(u=9)}
    assert writes_in(written, databases) == 6
    assert writes_in(written, ["staging"]) == 5


def test_an_order_is_in_a_sampled_environment_exactly_when_its_user_is() -> None:
    users = [ObjectId() for _ in range(400)]
    inside = [u for u in users if in_sample(encode_id(u), 5.0, PII_SECRET.encode())]
    assert 0 < len(inside) < 60
    assert all(order_in_environment(u, 5.0) == (u in inside) for u in users)
    assert order_in_environment(None, 5.0) is False
    assert order_in_environment(None, None) is True  # a full environment holds everything


def message(body_len: int) -> bytes:
    return struct.pack("<iiii", 16 + body_len, 1, 0, 2013) + b"\xff" * body_len


def test_interleaved_connections_keep_their_own_framing_and_share_the_totals() -> None:
    total = WireCounter()
    first, second = WireCounter(total), WireCounter(total)
    a, b = message(5000) + message(10), message(300) + message(0)
    # The chunks of the two connections alternate, each cut in the middle of a message.
    for start in range(0, max(len(a), len(b)), 700):
        first.feed(a[start : start + 700])
        second.feed(b[start : start + 700])
    assert (first.messages, second.messages, total.messages) == (2, 2, 4)
    assert total.bytes == len(a) + len(b)
