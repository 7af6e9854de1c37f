"""The benchmark's cost accounting: wire headers, process-tree CPU, per-1k figures, profiles.

Pure logic only (no servers): these are the numbers the closing notes quote, so each is
checked against a hand-computed case, including the awkward ones (a header split over two
reads, a pool child that exits between the two samples, a pid reused by another process).
"""

from __future__ import annotations

import json
import struct
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import bson
import pytest

from bench.costs import (
    Costs,
    ProcCpu,
    apply_rounds,
    is_system_row,
    micros_per_unit,
    per_k,
    process_rows,
    ratio,
    role_of,
    tree_delta,
    wire_delta,
)
from bench.delay_proxy import WireCounter, command_of
from bench.minimal_sync import GATHER_CHANGES, GATHER_SECONDS, gather
from bench.pyspy import frame_name, parse_raw, product_totals


def message(body_len: int, request_id: int = 1) -> bytes:
    """A MongoDB wire message: 16-byte header (messageLength first) + body."""
    total = 16 + body_len
    return struct.pack("<iiii", total, request_id, 0, 2013) + b"x" * body_len


# -- wire headers ---------------------------------------------------------------------------
def test_messages_are_counted_by_their_headers_however_the_stream_is_cut() -> None:
    stream = message(100) + message(0) + message(5000, 2) + message(7)
    for cut in (1, 3, 4, 5, 16, 17, 1000, len(stream)):
        counter = WireCounter()
        for start in range(0, len(stream), cut):
            counter.feed(stream[start : start + cut])
        assert (counter.messages, counter.bytes) == (4, len(stream)), cut


def test_a_header_split_inside_its_length_field_is_one_message() -> None:
    counter = WireCounter()
    first = message(20)
    counter.feed(first[:2])
    counter.feed(first[2:3])
    assert counter.messages == 0
    counter.feed(first[3:] + message(1)[:10])
    assert counter.messages == 2  # the second's length arrived whole in this chunk


def op_msg(body: dict[str, Any]) -> bytes:
    payload = struct.pack("<i", 0) + b"\x00" + bson.encode(body)
    return struct.pack("<iiii", 16 + len(payload), 1, 0, 2013) + payload


def test_messages_up_are_counted_by_command_and_collection_however_the_stream_is_cut() -> None:
    stream = (op_msg({"find": "orders", "filter": {"_id": {"$in": list(range(300))}},
                      "$db": "staging"})
              + op_msg({"getMore": bson.Int64(7), "collection": "orders", "$db": "staging"})
              + op_msg({"hello": 1, "$db": "admin"}) + message(30)
              + op_msg({"update": "watchers", "ordered": True, "$db": "state"}))
    for cut in (1, 7, 21, 23, 300, len(stream)):
        commands: Counter[str] = Counter()
        counter = WireCounter(commands=commands)
        for start in range(0, len(stream), cut):
            counter.feed(stream[start : start + cut])
        assert counter.messages == 5
        assert commands == {"find orders": 1, "getMore orders": 1, "hello": 1, "other": 1,
                            "update watchers": 1}, cut
    assert command_of(b"") == "other"


def test_wire_delta_is_per_proxy_and_per_direction() -> None:
    before = {"staging": {"messages_up": 10, "bytes_up": 1000, "messages_down": 10,
                          "bytes_down": 5000}}
    after = {"staging": {"messages_up": 25, "bytes_up": 4000, "messages_down": 24,
                         "bytes_down": 9000, "connections": 3},
             "prod": {"messages_up": 7, "bytes_up": 70, "messages_down": 7, "bytes_down": 700}}
    assert wire_delta(before, after) == {
        "staging": {"messages_up": 15, "bytes_up": 3000, "messages_down": 14, "bytes_down": 4000},
        "prod": {"messages_up": 7, "bytes_up": 70, "messages_down": 7, "bytes_down": 700},
    }


# -- process-tree CPU -------------------------------------------------------------------------
def test_a_child_that_exits_between_samples_is_counted_once_through_its_parent() -> None:
    parent0, child_a0, child_b0 = ProcCpu(1, 0.0, 1.0, 0.0), ProcCpu(2, 5.0, 3.0, 0.0), \
        ProcCpu(3, 5.0, 2.0, 0.0)
    # Child 2 ran 1.5 s more, then exited (its 4.5 s moved to the parent's children counter);
    # child 3 ran 0.5 s more; child 4 started after the first sample and ran 0.25 s; the
    # parent itself 0.5 s.
    parent1 = ProcCpu(1, 0.0, 1.5, 4.5)
    child_b1, child_c1 = ProcCpu(3, 5.0, 2.5, 0.0), ProcCpu(4, 9.0, 0.25, 0.0)
    delta = tree_delta([parent0, child_a0, child_b0], [parent1, child_b1, child_c1], root_pid=1)
    assert delta.root == pytest.approx(0.5)
    assert delta.members == {3: pytest.approx(0.5), 4: pytest.approx(0.25)}
    assert delta.exited == pytest.approx(1.5)
    assert delta.total == pytest.approx(2.75)


def test_a_reused_pid_is_another_process() -> None:
    before = [ProcCpu(1, 0.0, 1.0, 0.0), ProcCpu(2, 5.0, 10.0, 0.0)]
    # pid 2 exited (10.5 s in all, reaped by 1); a new process got pid 2 and ran 0.3 s.
    after = [ProcCpu(1, 0.0, 1.0, 10.5), ProcCpu(2, 7.0, 0.3, 0.0)]
    delta = tree_delta(before, after, root_pid=1)
    assert delta.members == {2: pytest.approx(0.3)}
    assert delta.exited == pytest.approx(0.5)
    assert delta.total == pytest.approx(0.8)


def test_process_rows_name_each_child_and_the_exited_ones() -> None:
    before = {"worker-1": [ProcCpu(10, 0.0, 1.0, 0.0), ProcCpu(12, 1.0, 2.0, 0.0),
                           ProcCpu(11, 1.0, 1.0, 0.0)],
              "redis": [ProcCpu(20, 0.0, 0.5, 0.0)]}
    after = {"worker-1": [ProcCpu(10, 0.0, 1.1, 1.4), ProcCpu(12, 1.0, 3.0, 0.0)],
             "redis": [ProcCpu(20, 0.0, 0.7, 0.0)]}
    rows = process_rows({"worker-1": 10, "redis": 20}, before, after)
    assert rows == {"worker-1": pytest.approx(0.1), "worker-1 child 1": pytest.approx(1.0),
                    "worker-1 exited children": pytest.approx(0.4),
                    "redis": pytest.approx(0.2)}
    assert [role_of(r) for r in rows] == ["worker-1", "worker-1", "worker-1", "redis"]
    assert [is_system_row(r) for r in rows] == [True, True, True, False]


def test_system_cpu_leaves_out_servers_redis_and_proxies() -> None:
    costs = Costs(cpu={"watcher": 1.0, "worker-1": 0.5, "worker-1 child 1": 2.0,
                       "command": 0.25, "redis": 9.0, "staging-server": 9.0,
                       "prod-server": 9.0, "proxy-staging": 9.0, "proxy-prod": 9.0},
                  seconds=10.0, idle_cpu_per_s=0.1)
    assert costs.system_cpu() == pytest.approx(3.75)
    assert costs.role_cpu("worker-1") == pytest.approx(2.5)


def test_written_documents_split_target_and_state() -> None:
    costs = Costs(written={"staging.orders": Counter({"u": 900, "i": 40, "d": 0}),
                           "stagesync.watchers": Counter({"u": 30}),
                           "stagesync.versions": Counter({"u": 12})})
    assert costs.target_writes("staging.orders") == 940
    assert costs.other_writes("staging.orders") == 42


# -- per-1k arithmetic ------------------------------------------------------------------------
def test_per_thousand_and_micros_per_unit() -> None:
    assert per_k(940, 2000) == pytest.approx(470.0)
    assert micros_per_unit(0.96, 12_000) == pytest.approx(80.0)
    assert per_k(5, 0) is None and micros_per_unit(None, 10) is None
    assert ratio(453.0, 45.3) == pytest.approx(10.0)
    assert ratio(1.0, 0.0) is None and ratio(None, 1.0) is None


# -- re-planning from the workers' logs ------------------------------------------------------
def test_apply_rounds_counts_applies_that_planned_again(tmp_path: Path) -> None:
    def line(rounds: int, changes: int) -> str:
        return json.dumps({"level": "INFO", "message": "applied", "rounds": rounds,
                           "changes": changes})

    (tmp_path / "worker-1.log").write_text("\n".join([
        line(1, 100), line(2, 50), "celery banner, not JSON", line(3, 10),
        json.dumps({"message": "apply failed", "rounds": 4}),
    ]))
    (tmp_path / "worker-2.log").write_text(line(1, 40) + "\n")
    assert apply_rounds(sorted(tmp_path.glob("worker-*.log"))) == {
        "applies": 4, "replanned": 2, "extra_rounds": 3, "changes": 200}


# -- py-spy's raw output ----------------------------------------------------------------------
def test_raw_profiles_give_self_and_total_shares_per_function() -> None:
    raw = "\n".join([
        "<module> (celery:8);apply (tasks/apply/applier.py:190);encode (bson/__init__.py:1000) 30",
        "<module> (celery:8);apply (tasks/apply/applier.py:201);plan (rules/plan.py:50) 60",
        "<module> (celery:8);apply (tasks/apply/applier.py:190) 10",
        "garbage line",
    ])
    profile = parse_raw(raw)
    assert profile.samples == 100
    top = {name: (self_pct, total_pct) for name, self_pct, total_pct in profile.top(5)}
    assert top["plan (rules/plan.py)"] == (60.0, 60.0)
    assert top["apply (tasks/apply/applier.py)"] == (10.0, 100.0)
    assert top["encode (bson/__init__.py)"] == (30.0, 30.0)
    assert profile.share("plan (") == 60.0
    assert profile.share("(tasks/") == 100.0  # two frames of it on one stack count once
    assert product_totals(profile) == [("apply (tasks/apply/applier.py)", 100.0),
                                       ("plan (rules/plan.py)", 60.0)]


def test_frame_names_drop_line_numbers_and_long_paths() -> None:
    assert frame_name("run (/work/x/.venv/lib/python3.11/site-packages/kombu/utils.py:12)") \
        == "run (kombu/utils.py)"
    assert frame_name("<module> (celery:8)") == "<module> (celery)"


# -- the minimal sync's gathering -------------------------------------------------------------
class FakeStream:
    """Change events (or None: nothing yet) in order, each read advancing a fake clock."""

    def __init__(self, items: list[Any], clock: list[float], step: float) -> None:
        self.items, self.clock, self.step = items, clock, step

    def try_next(self) -> Any:
        self.clock[0] += self.step
        return self.items.pop(0) if self.items else None


def _event(doc_id: int) -> dict[str, Any]:
    return {"documentKey": {"_id": doc_id}}


def test_gather_stops_at_the_change_limit_and_deduplicates() -> None:
    clock = [0.0]
    ids = [n % 300 for n in range(GATHER_CHANGES + 50)]
    stream = FakeStream([_event(i) for i in ids], clock, step=0.0)
    got, events = gather(stream, threading.Event(), clock=lambda: clock[0])  # type: ignore[arg-type]
    assert events == GATHER_CHANGES
    assert list(got) == list(range(300))


def test_gather_stops_once_the_window_after_the_first_change_passed() -> None:
    clock = [0.0]
    step = GATHER_SECONDS / 10
    stream = FakeStream([_event(1), None, _event(2), None, None] + [None] * 20 + [_event(3)],
                        clock, step)
    got, events = gather(stream, threading.Event(), clock=lambda: clock[0])  # type: ignore[arg-type]
    assert list(got) == [1, 2] and events == 2


def test_gather_returns_nothing_at_once_when_nothing_is_pending() -> None:
    clock = [0.0]
    stream = FakeStream([None, _event(1)], clock, step=0.001)
    assert gather(stream, threading.Event(), clock=lambda: clock[0]) == ({}, 0)  # type: ignore[arg-type]


def test_a_real_child_burning_cpu_and_exiting_is_counted_by_the_tree_sample(
    tmp_path: Path,
) -> None:
    """The OS side: a parent that starts a child, which burns ~0.3 s of CPU and exits, is
    reaped, and the parent then waits; the tree's delta holds the child's time."""
    import subprocess
    import sys
    import time

    from bench.costs import sample_tree

    go = tmp_path / "go"
    script = (
        "import os, subprocess, sys, time\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
        "subprocess.run([sys.executable, '-c', "
        "'import time\\nend = time.process_time() + 0.3\\n"
        "while time.process_time() < end: pass'])\n"
        f"open({str(go)!r} + '.done', 'w').close()\n"
        "time.sleep(30)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        time.sleep(0.3)
        before = sample_tree(parent.pid)
        go.touch()
        deadline = time.monotonic() + 30
        while not (tmp_path / "go.done").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        delta = tree_delta(before, sample_tree(parent.pid), parent.pid)
        assert delta.exited >= 0.28  # the child's 0.3 s (plus its start-up), through the parent
        assert delta.total == pytest.approx(delta.root + delta.exited)
        assert delta.members == {}
    finally:
        parent.kill()
        parent.wait(10)
