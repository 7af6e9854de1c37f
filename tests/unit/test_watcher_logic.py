"""The watcher's pure logic: micro-batching, the in-flight window behind the checkpoint
(invariant 5), and the meaning of a change event."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from typing import Any

import pytest
from bson import Int64, ObjectId, Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stagesync.protocol.parts import BatchPart
from stagesync.protocol.routing import partition_of, queue_for
from stagesync.rules.identity import decode_id, encode_id
from stagesync.settings.collection import CollectionSettings
from stagesync.watcher.batcher import MicroBatcher
from stagesync.watcher.events import (
    Change,
    HistoryEnded,
    IndexChanged,
    Malformed,
    classify,
    event_time,
)
from stagesync.watcher.inflight import InflightWindow

FAST = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROPERTY = settings(FAST, max_examples=300)


def change(pid: str, op: str = "update") -> Change:
    return Change(pid, op, None)


def one_queue(_: str) -> str:
    return "stagesync.orders"


# --- MicroBatcher ----------------------------------------------------------------------------


def test_quiet_time_flushes_a_lone_change_on_the_next_empty_read() -> None:
    batcher = MicroBatcher(one_queue, max_size=500, max_wait=10.0)
    assert not batcher.due(0.0, stream_idle=True)  # nothing buffered
    batcher.add(change("p1", "insert"), now=0.0)
    assert batcher.size == 1
    assert not batcher.due(0.0, stream_idle=False)
    assert batcher.due(0.0, stream_idle=True)
    drained, seen, *_ = batcher.drain()
    assert drained == {"stagesync.orders": [("p1", "insert")]}
    assert seen == 1
    assert batcher.size == 0
    assert not batcher.due(100.0, stream_idle=True)


def test_size_trigger() -> None:
    batcher = MicroBatcher(one_queue, max_size=3, max_wait=10.0)
    batcher.add(change("p1"), 0.0)
    batcher.add(change("p2"), 0.0)
    assert not batcher.due(0.0, stream_idle=False)
    batcher.add(change("p3"), 0.0)
    assert batcher.due(0.0, stream_idle=False)
    drained, seen, *_ = batcher.drain()
    assert [pid for pid, _ in drained["stagesync.orders"]] == ["p1", "p2", "p3"]
    assert seen == 3


def test_wait_trigger_counts_from_the_first_buffered_change() -> None:
    batcher = MicroBatcher(one_queue, max_size=500, max_wait=0.05)
    batcher.add(change("p1"), now=10.0)
    batcher.add(change("p2"), now=10.04)
    assert not batcher.due(10.0, stream_idle=False)
    assert not batcher.due(10.049, stream_idle=False)
    assert batcher.due(10.05, stream_idle=False)
    assert batcher.due(11.0, stream_idle=False)


def test_wait_clock_restarts_after_a_drain() -> None:
    batcher = MicroBatcher(one_queue, max_size=500, max_wait=1.0)
    batcher.add(change("p1"), now=0.0)
    batcher.drain()
    batcher.add(change("p2"), now=5.0)
    assert not batcher.due(5.5, stream_idle=False)
    assert batcher.due(6.0, stream_idle=False)


def test_zero_wait_flushes_immediately() -> None:
    batcher = MicroBatcher(one_queue, max_size=500, max_wait=0.0)
    batcher.add(change("p1"), now=3.0)
    assert batcher.due(3.0, stream_idle=False)


def test_changes_to_one_document_coalesce_keeping_the_latest_operation() -> None:
    batcher = MicroBatcher(one_queue, max_size=3, max_wait=10.0)
    batcher.add(change("p1", "insert"), 0.0)
    batcher.add(change("p2", "insert"), 0.0)
    batcher.add(change("p1", "update"), 0.0)
    batcher.add(change("p1", "delete"), 0.0)
    batcher.add(change("p2", "update"), 0.0)
    assert batcher.size == 2
    assert not batcher.due(0.0, stream_idle=False)  # 2 distinct documents < max_size 3
    drained, seen, *_ = batcher.drain()
    entries = drained["stagesync.orders"]
    assert len(entries) == 2
    assert dict(entries) == {"p1": "delete", "p2": "update"}
    assert seen == 5


def test_delete_then_reinsert_coalesces_to_the_reinsert() -> None:
    batcher = MicroBatcher(one_queue, max_size=10, max_wait=1.0)
    batcher.add(change("p1", "delete"), 0.0)
    batcher.add(change("p1", "insert"), 0.0)
    drained, _, *_ = batcher.drain()
    assert drained == {"stagesync.orders": [("p1", "insert")]}


def test_per_queue_buffers() -> None:
    queues = {"p1": "q.0", "p2": "q.1", "p3": "q.0", "p4": "q.1"}
    batcher = MicroBatcher(queues.__getitem__, max_size=2, max_wait=10.0)
    batcher.add(change("p1", "insert"), 0.0)
    batcher.add(change("p2", "insert"), 0.0)
    assert batcher.size == 2
    assert not batcher.due(0.0, stream_idle=False)  # no single buffer is full
    batcher.add(change("p3", "delete"), 0.0)
    assert batcher.due(0.0, stream_idle=False)  # q.0 is full
    batcher.add(change("p4", "update"), 0.0)
    drained, seen, *_ = batcher.drain()
    assert drained == {
        "q.0": [("p1", "insert"), ("p3", "delete")],
        "q.1": [("p2", "insert"), ("p4", "update")],
    }
    assert seen == 4


def test_same_document_always_lands_in_one_queue() -> None:
    routed: list[str] = []

    def queue_for(pid: str) -> str:
        routed.append(pid)
        return f"q.{len(pid) % 2}"

    batcher = MicroBatcher(queue_for, max_size=10, max_wait=1.0)
    for op in ("insert", "update", "delete"):
        batcher.add(change("abc", op), 0.0)
    drained, seen, *_ = batcher.drain()
    assert drained == {"q.1": [("abc", "delete")]}
    assert seen == 3


# --- routing: protocol.routing.partition_of and queue_for, the watcher's only router ---------
ROUTED_IDS = [encode_id(ObjectId()) for _ in range(4000)] + [encode_id(n) for n in range(1000)]


def test_partition_of_is_the_same_in_every_process() -> None:
    """Not Python's `hash` (salted per process): another interpreter, another hash seed, gives
    every id the partition this one gives."""
    sample = ROUTED_IDS[::50]
    script = ("import json, sys\n"
              "from stagesync.protocol.routing import partition_of\n"
              "ids = json.load(sys.stdin)\n"
              "print(json.dumps([partition_of(pid, 7) for pid in ids]))\n")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", script], input=json.dumps(sample),
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed})
        assert json.loads(out.stdout) == [partition_of(pid, 7) for pid in sample]


@pytest.mark.parametrize("partitions", [2, 4, 7])
def test_partition_of_spreads_ids_over_every_partition(partitions: int) -> None:
    counts = Counter(partition_of(pid, partitions) for pid in ROUTED_IDS)
    assert set(counts) == set(range(partitions))
    expected = len(ROUTED_IDS) / partitions
    assert all(0.85 * expected < count < 1.15 * expected for count in counts.values()), counts


def test_one_partition_is_partition_zero() -> None:
    assert {partition_of(pid, 1) for pid in ROUTED_IDS[:200]} == {0}


def test_queue_for_routes_by_partition_of_and_the_batcher_uses_it() -> None:
    orders = CollectionSettings(name="orders", source="p.orders", target="s.orders",
                                business_key=["email"], partitions=3)
    for pid in ROUTED_IDS[:300]:
        assert queue_for(orders, pid) == f"stagesync.orders.{partition_of(pid, 3)}"
    single = CollectionSettings(name="users", source="p.users", target="s.users",
                                business_key=["email"])
    assert {queue_for(single, pid) for pid in ROUTED_IDS[:50]} == {"stagesync.users"}
    batcher = MicroBatcher(partial(queue_for, orders), max_size=10_000, max_wait=1.0)
    for pid in ROUTED_IDS[:300]:
        batcher.add(change(pid), 0.0)
    for queue, entries in batcher.drain().per_queue.items():
        assert all(queue_for(orders, pid) == queue for pid, _ in entries)


def test_drain_empties_everything() -> None:
    batcher = MicroBatcher(one_queue, max_size=10, max_wait=1.0)
    assert batcher.drain()[:2] == ({}, 0)
    batcher.add(change("p1"), 0.0)
    batcher.drain()
    assert batcher.drain()[:2] == ({}, 0)
    assert batcher.changes_seen == 0


@FAST
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d", "e"]),
                          st.sampled_from(["insert", "update", "replace", "delete"])),
                min_size=1, max_size=40))
def test_coalescing_keeps_each_documents_last_operation(events: list[tuple[str, str]]) -> None:
    batcher = MicroBatcher(lambda pid: f"q.{ord(pid) % 2}", max_size=1000, max_wait=1.0)
    for pid, op in events:
        batcher.add(change(pid, op), 0.0)
    drained, seen, *_ = batcher.drain()
    assert seen == len(events)
    entries = [entry for queue in drained.values() for entry in queue]
    assert dict(entries) == dict(events)  # dict() keeps the last op per pid
    assert len(entries) == len({pid for pid, _ in events})
    for queue, queue_entries in drained.items():
        assert all(f"q.{ord(pid) % 2}" == queue for pid, _ in queue_entries)


# --- InflightWindow --------------------------------------------------------------------------


def token(n: int) -> dict[str, str]:
    return {"_data": f"82{n:08X}"}


def changes(count: int) -> list[tuple[str, str]]:
    return [(f"pid{n}", "update") for n in range(count)]


def test_checkpoint_moves_only_past_complete_groups_in_order() -> None:
    window = InflightWindow()
    window.open_group(token(1), {"b1": ("q", changes(1))}, 0.0, None)
    window.open_group(token(2), {"b2": ("q", changes(1))}, 0.0, None)
    window.open_group(token(3), {"b3": ("q", changes(1))}, 0.0, None)
    assert window.advance() is None

    assert window.part_done("b2", BatchPart(""))  # out of order: group 2 completes first
    assert window.advance() is None  # group 1 is still open
    assert window.groups == 3

    assert window.part_done("b1", BatchPart(""))
    assert window.advance() == token(2)  # past groups 1 and 2 at once
    assert window.groups == 1
    assert window.advance() is None  # nothing new

    assert window.part_done("b3", BatchPart(""))
    assert window.advance() == token(3)
    assert window.empty


def test_group_with_several_batches_needs_all_of_them() -> None:
    window = InflightWindow()
    window.open_group(token(1), {"a": ("q.0", changes(2)), "b": ("q.1", changes(3))}, 0.0, None)
    window.part_done("a", BatchPart(""))
    assert window.advance() is None
    window.part_done("b", BatchPart(""))
    assert window.advance() == token(1)


@pytest.mark.parametrize(
    ("parts", "complete"),
    [
        ([""], True),
        (["0"], False),
        (["1"], False),
        (["0", "1"], True),
        (["1", "0"], True),
        (["0", "10", "11"], True),
        (["00", "01", "1"], True),
        (["00", "1"], False),
        (["00", "01"], False),
        (["000", "001", "01", "10", "11"], True),
        (["000", "01", "1"], False),
        (["0", "0", "0"], False),
        (["01", "1", "0"], True),
        (["0", "11"], False),
    ],
)
def test_split_parts_coverage(parts: list[str], complete: bool) -> None:
    window = InflightWindow()
    window.open_group(token(1), {"b": ("q", changes(4))}, 0.0, None)
    for part in parts:
        window.part_done("b", BatchPart(part))
    assert (window.advance() == token(1)) is complete
    assert (window.unapplied == 0) is complete


def test_part_done_reports_completion_once() -> None:
    window = InflightWindow()
    window.open_group(token(1), {"b": ("q", changes(2))}, 0.0, None)
    assert window.part_done("b", BatchPart("0")) is False
    assert window.part_done("b", BatchPart("0")) is False  # duplicate, harmless
    assert window.part_done("b", BatchPart("1")) is True
    assert window.part_done("b", BatchPart("1")) is False
    assert window.part_done("b", BatchPart("")) is False
    assert window.unapplied == 0


def test_duplicate_reports_do_not_double_count() -> None:
    window = InflightWindow()
    window.open_group(token(1), {"b1": ("q", changes(3))}, 0.0, None)
    window.open_group(token(2), {"b2": ("q", changes(4))}, 0.0, None)
    assert window.unapplied == 7
    for _ in range(3):
        window.part_done("b1", BatchPart(""))
    assert window.unapplied == 4
    assert window.advance() == token(1)
    window.part_done("b1", BatchPart(""))  # its group is gone: a late duplicate
    assert window.unapplied == 4
    assert window.advance() is None


def test_unknown_batch_ids_are_ignored() -> None:
    window = InflightWindow()
    window.open_group(token(1), {"b1": ("q", changes(1))}, 0.0, None)
    assert window.part_done("from-an-earlier-run", BatchPart("")) is False
    assert window.part_done("b1-", BatchPart("")) is False
    assert window.advance() is None
    assert window.unapplied == 1
    assert window.groups == 1


def test_unapplied_accounting() -> None:
    window = InflightWindow()
    assert window.unapplied == 0
    window.open_group(token(1), {"a": ("q.0", changes(5)), "b": ("q.1", changes(2))}, 0.0, None)
    window.open_group(token(2), {"c": ("q.0", changes(1))}, 0.0, None)
    assert window.unapplied == 8
    window.part_done("a", BatchPart("0"))  # a part alone does not count
    assert window.unapplied == 8
    window.part_done("a", BatchPart("1"))
    assert window.unapplied == 3
    window.part_done("c", BatchPart(""))
    assert window.unapplied == 2
    window.part_done("b", BatchPart(""))
    assert window.unapplied == 0
    assert window.advance() == token(2)
    assert window.unapplied == 0


def test_empty_group_advances_at_once() -> None:
    """An idle flush with no batches still moves the checkpoint (a quiet stream never falls off
    the oplog)."""
    window = InflightWindow()
    window.open_group(token(1), {}, 0.0, None)
    assert window.advance() == token(1)
    assert window.empty


def test_empty_group_behind_an_incomplete_one_waits() -> None:
    window = InflightWindow()
    window.open_group(token(1), {"b1": ("q", changes(1))}, 0.0, None)
    window.open_group(token(2), {}, 0.0, None)
    assert window.advance() is None
    window.part_done("b1", BatchPart(""))
    assert window.advance() == token(2)


def test_batch_with_no_changes() -> None:
    window = InflightWindow()
    window.open_group(token(1), {"b": ("q", [])}, 0.0, None)
    assert window.unapplied == 0
    assert window.advance() is None  # still needs its done report
    assert window.part_done("b", BatchPart(""))
    assert window.advance() == token(1)


def test_expired_returns_stale_incomplete_batches_and_restarts_their_clock() -> None:
    window = InflightWindow()
    window.open_group(token(1), {"old": ("q", changes(1)), "done": ("q", changes(1))}, 0.0, None)
    window.open_group(token(2), {"new": ("q", changes(1))}, 50.0, None)
    window.part_done("done", BatchPart(""))

    assert window.expired(now=60.0, timeout=60.0) == []  # exactly the timeout: not yet
    stale = window.expired(now=61.0, timeout=60.0)
    assert [batch.batch_id for batch in stale] == ["old"]
    assert stale[0].queue == "q"
    assert list(stale[0].changes) == changes(1)
    assert window.expired(now=62.0, timeout=60.0) == []  # clock restarted at 61
    assert {b.batch_id for b in window.expired(now=200.0, timeout=60.0)} == {"old", "new"}


def test_incomplete_lists_pending_batches() -> None:
    window = InflightWindow()
    window.open_group(token(1), {"a": ("q", changes(1)), "b": ("q", changes(1))}, 0.0, None)
    window.part_done("a", BatchPart(""))
    assert [batch.batch_id for batch in window.incomplete()] == ["b"]


def test_oldest_pending_change() -> None:
    t1 = datetime(2024, 1, 1, tzinfo=UTC)
    t2 = t1 + timedelta(seconds=5)
    window = InflightWindow()
    assert window.oldest_pending_change() is None
    window.open_group(token(1), {"a": ("q", changes(1))}, 0.0, t1)
    window.open_group(token(2), {"b": ("q", changes(1))}, 0.0, t2)
    assert window.oldest_pending_change() == t1
    window.part_done("a", BatchPart(""))
    assert window.oldest_pending_change() == t2  # even before advance()
    window.part_done("b", BatchPart(""))
    assert window.oldest_pending_change() is None


def test_group_sequence_numbers_increase() -> None:
    window = InflightWindow()
    first = window.open_group(token(1), {}, 0.0, None)
    second = window.open_group(token(2), {}, 0.0, None)
    assert second > first


# Property: random groups and batches, each batch split into a random tree of parts whose leaves
# report done, delivered in a random order with duplicates and reports for unknown batches.

split_trees: st.SearchStrategy[Any] = st.recursive(
    st.just("leaf"), lambda children: st.tuples(children, children), max_leaves=4
)


def leaf_parts(tree: Any, prefix: str = "") -> list[str]:
    if tree == "leaf":
        return [prefix]
    return leaf_parts(tree[0], prefix + "0") + leaf_parts(tree[1], prefix + "1")


@st.composite
def histories(draw: Callable[..., Any]) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    group_count = draw(st.integers(1, 6))
    groups: list[dict[str, Any]] = []
    reports: list[tuple[str, str]] = []
    for g in range(group_count):
        batches: dict[str, Any] = {}
        for b in range(draw(st.integers(0, 3))):
            batch_id = f"g{g}b{b}"
            parts = leaf_parts(draw(split_trees))
            batches[batch_id] = {"size": draw(st.integers(0, 3)), "parts": parts}
            reports.extend((batch_id, part) for part in parts)
        groups.append(batches)
    duplicates = draw(st.lists(st.sampled_from(reports), max_size=5)) if reports else []
    unknown = draw(st.lists(st.tuples(st.just("elsewhere"), st.sampled_from(["", "0", "1"])),
                            max_size=2))
    order = draw(st.permutations(reports + duplicates + unknown))
    return groups, order


@PROPERTY
@given(histories())
def test_checkpoint_never_passes_an_incomplete_batch(
    history: tuple[list[dict[str, Any]], list[tuple[str, str]]],
) -> None:
    groups, order = history
    window = InflightWindow()
    for index, batches in enumerate(groups):
        window.open_group(
            token(index),
            {bid: (f"q.{bid[-1]}", changes(b["size"])) for bid, b in batches.items()},
            0.0,
            None,
        )
    total = sum(b["size"] for batches in groups for b in batches.values())
    assert window.unapplied == total

    reported: set[tuple[str, str]] = set()

    def batch_done(batch_id: str, batch: dict[str, Any]) -> bool:
        return all((batch_id, part) in reported for part in batch["parts"])

    checkpoint = -1
    for report in order:
        reported.add(report)
        window.part_done(report[0], BatchPart(report[1]))
        moved = window.advance()
        if moved is not None:
            reached = int(moved["_data"][2:], 16)
            assert reached > checkpoint  # never backwards, never the same token twice
            checkpoint = reached
        # Every group up to the checkpoint is fully done...
        for index in range(checkpoint + 1):
            assert all(batch_done(bid, b) for bid, b in groups[index].items())
        # ...and the checkpoint is as far as it may go.
        frontier = -1
        while frontier + 1 < len(groups) and all(
            batch_done(bid, b) for bid, b in groups[frontier + 1].items()
        ):
            frontier += 1
        assert checkpoint == frontier
        remaining = sum(
            b["size"] for batches in groups for bid, b in batches.items()
            if not batch_done(bid, b)
        )
        assert window.unapplied == remaining

    if not order:  # only empty groups: they pass on the first advance
        moved = window.advance()
        checkpoint = int(moved["_data"][2:], 16) if moved else checkpoint
    assert checkpoint == len(groups) - 1
    assert window.empty
    assert window.unapplied == 0


# --- events ----------------------------------------------------------------------------------

OID = ObjectId("65a1b2c3d4e5f60718293a4b")
WALL = datetime(2024, 3, 1, 12, 30, 15, 250000)


def event(operation: str, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "_id": {"_data": "8265E1C9A7000000012B022C0100296E5A1004"},
        "operationType": operation,
        "clusterTime": Timestamp(1709296215, 1),
        "wallTime": WALL,
        "ns": {"db": "production", "coll": "orders"},
    }
    base.update(extra)
    return base


@pytest.mark.parametrize("operation", ["insert", "update", "replace", "delete"])
def test_classify_document_changes(operation: str) -> None:
    action = classify(event(operation, documentKey={"_id": OID}))
    assert action == Change(encode_id(OID), operation, WALL.replace(tzinfo=UTC))
    assert isinstance(action, Change)
    assert action.pid == '{"$oid": "65a1b2c3d4e5f60718293a4b"}'
    assert decode_id(action.pid) == OID


@pytest.mark.parametrize(
    "document_id",
    [OID, str(OID), 42, Int64(42), 42.0, "42", {"tenant": "t", "n": 1}, True, None],
)
def test_pid_is_the_canonical_extended_json_of_the_id(document_id: Any) -> None:
    action = classify(event("update", documentKey={"_id": document_id}))
    assert isinstance(action, Change)
    assert action.pid == encode_id(document_id)
    decoded = decode_id(action.pid)
    assert decoded == document_id and type(decoded) is type(document_id)


def test_pids_of_look_alike_ids_differ() -> None:
    pids = {
        classify(event("update", documentKey={"_id": value})).pid  # type: ignore[union-attr]
        for value in (OID, str(OID), 1, 1.0, "1")
    }
    assert len(pids) == 5


@pytest.mark.parametrize("operation", ["drop", "rename", "dropDatabase", "invalidate"])
def test_history_ending_events(operation: str) -> None:
    action = classify(event(operation))
    assert isinstance(action, HistoryEnded)
    assert operation in action.reason


def test_history_ended_names_the_namespace() -> None:
    action = classify(event("drop"))
    assert isinstance(action, HistoryEnded)
    assert "production.orders" in action.reason
    action = classify({"operationType": "invalidate"})
    assert isinstance(action, HistoryEnded)


@pytest.mark.parametrize(
    "operation", ["create", "shardCollection", "somethingNew"],
)
def test_events_with_nothing_to_copy(operation: str) -> None:
    assert classify(event(operation)) is None


@pytest.mark.parametrize("operation", ["createIndexes", "dropIndexes", "modify"])
def test_index_ddl_events_wake_the_index_mirror_and_copy_nothing(operation: str) -> None:
    assert classify(event(operation)) == IndexChanged(operation)


def test_event_without_operation_type() -> None:
    assert classify({"documentKey": {"_id": 1}}) is None


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"documentKey": None},
        {"documentKey": {}},
        {"documentKey": {"region": "eu"}},
        {"documentKey": "not a document"},
        {"documentKey": [OID]},
    ],
)
@pytest.mark.parametrize("operation", ["insert", "update", "replace", "delete"])
def test_document_change_without_document_key_is_malformed(
    operation: str, extra: dict[str, Any]
) -> None:
    action = classify(event(operation, **extra))
    assert isinstance(action, Malformed)
    assert operation in action.reason


def test_event_time_from_wall_time() -> None:
    aware = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
    assert event_time({"wallTime": aware}) == aware
    assert event_time({"wallTime": WALL}) == WALL.replace(tzinfo=UTC)  # naive means UTC
    other_zone = datetime(2024, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert event_time({"wallTime": other_zone}) == aware


def test_wall_time_wins_over_cluster_time() -> None:
    result = event_time({"wallTime": WALL, "clusterTime": Timestamp(1, 1)})
    assert result == WALL.replace(tzinfo=UTC)


def test_event_time_from_cluster_time_timestamp() -> None:
    result = event_time({"clusterTime": Timestamp(1709296215, 7)})
    assert result == datetime(2024, 3, 1, 12, 30, 15, tzinfo=UTC)
    assert result is not None and result.tzinfo is not None


def test_event_time_from_cluster_time_datetime() -> None:
    naive = datetime(2024, 3, 1, 12, 30)
    assert event_time({"clusterTime": naive}) == naive.replace(tzinfo=UTC)


@pytest.mark.parametrize("extra", [{}, {"clusterTime": 17}, {"wallTime": "2024-03-01"}])
def test_event_time_unknown(extra: dict[str, Any]) -> None:
    assert event_time(extra) is None


def test_change_carries_cluster_time_when_wall_time_is_absent() -> None:
    raw = event("insert", documentKey={"_id": 1})
    del raw["wallTime"]
    action = classify(raw)
    assert isinstance(action, Change)
    assert action.happened_at == datetime.fromtimestamp(1709296215, UTC)


# --- holding back changes of documents in flight ----------------------------------------------


def test_a_held_change_stays_buffered_and_the_flush_checkpoints_only_up_to_it() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    batcher = MicroBatcher(one_queue, max_size=10, max_wait=1.0)
    batcher.add(Change("p1", "update", at), 0.0, before=token(1))
    batcher.add(Change("p2", "update", at + timedelta(seconds=1)), 0.0, before=token(2))
    batcher.add(Change("p3", "update", at + timedelta(seconds=2)), 0.0, before=token(3))
    drained = batcher.drain(token(4), held={"p2"}.__contains__, now=5.0)
    assert drained.per_queue == {"stagesync.orders": [("p1", "update"), ("p3", "update")]}
    assert drained.token == token(2)  # a restart from it reads p2's change again
    assert drained.oldest == at
    assert drained.seen == 3
    assert batcher.size == 1
    assert not batcher.due(5.5, stream_idle=False)  # the held change's clock restarted
    assert batcher.due(6.0, stream_idle=False)
    batcher.add(Change("p2", "delete", at + timedelta(seconds=3)), 6.0, before=token(5))
    released = batcher.drain(token(6), held=lambda pid: False, now=6.0)
    assert released.per_queue == {"stagesync.orders": [("p2", "delete")]}
    assert released.token == token(6)
    assert released.oldest == at + timedelta(seconds=1)  # its first change's time
    assert released.seen == 1


def test_the_window_knows_which_documents_are_in_flight_until_their_batch_completes() -> None:
    window = InflightWindow()
    window.open_group(token(1), {"b1": ("q", [("p1", "update"), ("p2", "update")])}, 0.0, None)
    window.open_group(token(2), {"b2": ("q", [("p2", "update")])}, 0.0, None)
    assert window.holds("p1") and window.holds("p2") and not window.holds("p3")
    window.part_done("b1", BatchPart("0"))
    assert window.holds("p1")  # half of b1 reported: still in flight
    window.part_done("b1", BatchPart("1"))
    assert not window.holds("p1") and window.holds("p2")  # b2 holds p2 too
    window.part_done("b2", BatchPart(""))
    window.part_done("b2", BatchPart(""))  # a duplicate report changes nothing
    assert not window.holds("p2")


@PROPERTY
@given(st.lists(st.one_of(
    st.tuples(st.just("event"), st.sampled_from(["a", "b", "c", "d"])),
    st.tuples(st.just("flush"), st.frozensets(st.sampled_from(["a", "b", "c", "d"]))),
), max_size=60))
def test_a_flush_never_checkpoints_past_a_change_it_holds(
    steps: list[tuple[str, Any]],
) -> None:
    """Events are numbered as read; token(n) resumes after event n. After every flush, each
    change still buffered was read after the flush's token, and the tokens never go back."""
    batcher = MicroBatcher(one_queue, max_size=1000, max_wait=1.0)
    read = 0
    first_unpublished: dict[str, int] = {}
    last_token = 0
    for kind, value in steps:
        if kind == "event":
            batcher.add(change(value), 0.0, before=token(read))
            read += 1
            first_unpublished.setdefault(value, read)
            continue
        drained = batcher.drain(token(read), held=value.__contains__)
        for pid, _ in drained.per_queue.get("stagesync.orders", []):
            del first_unpublished[pid]
        assert drained.token is not None
        position = int(drained.token["_data"][2:], 16)
        assert all(event > position for event in first_unpublished.values())
        assert set(first_unpublished) <= set(value)
        if drained.per_queue:
            assert position >= last_token
            last_token = position
