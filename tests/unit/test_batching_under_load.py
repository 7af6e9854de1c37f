"""Batches that grow with the backlog and never shrink under it (issue 30): the rule
(`watcher.batcher.least_batch`) and what `MicroBatcher.drain` makes of it, with the checkpoint
rule kept (invariant 5: the checkpoint only moves past published work)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stagesync.protocol.parts import WHOLE
from stagesync.watcher.batcher import MicroBatcher, least_batch
from stagesync.watcher.events import Change
from stagesync.watcher.inflight import InflightWindow

PROPERTY = settings(database=None, deadline=None, max_examples=400,
                    suppress_health_check=[HealthCheck.too_slow])


def token(n: int) -> dict[str, Any]:
    return {"_data": n}


def test_only_full_batches_join_a_queue_that_holds_messages_while_workers_are_busy() -> None:
    assert least_batch(room=False, queue_waiting=True, max_size=500) == 500
    # Workers with room, or queues with nothing waiting: whatever has gathered goes.
    assert least_batch(room=True, queue_waiting=True, max_size=500) == 1
    assert least_batch(room=False, queue_waiting=False, max_size=500) == 1


def test_a_short_batch_waits_and_its_changes_keep_the_checkpoint_back() -> None:
    batcher = MicroBatcher(lambda pid: "q", max_size=3, max_wait=0.0)
    for n in range(7):
        batcher.add(Change(f"p{n}", "update", None), 0.0, before=token(n))
    drained = batcher.drain(token(7), least=3)
    assert drained.batches(3) == [("q", [(f"p{n}", "update") for n in range(3)]),
                                  ("q", [(f"p{n}", "update") for n in range(3, 6)])]
    assert drained.token == token(6)  # just before p6, which waits
    assert batcher.size == 1
    last = batcher.drain(token(7))  # the workers have room: the very last change goes
    assert last.batches(3) == [("q", [("p6", "update")])] and last.token == token(7)


def test_held_changes_do_not_make_every_later_change_a_flush() -> None:
    """A buffer full of changes held back for batches in flight is not a full batch: the size
    trigger counts only what came after the drain that kept them."""
    batcher = MicroBatcher(lambda pid: "q", max_size=4, max_wait=10.0, busy_wait=10.0)
    for n in range(4):
        batcher.add(Change(f"hot{n}", "update", None), 0.0)
    assert batcher.due(0.0, stream_idle=False, busy=True)
    assert not batcher.only_kept
    held = batcher.drain(token(4), held=lambda pid: pid.startswith("hot"), least=4)
    assert held.per_queue == {} and batcher.size == 4
    # Only held changes: the watcher waits for a done report (`StreamLoop._await_done`),
    # also when a held document changes again.
    batcher.add(Change("hot0", "delete", None), 0.0)
    assert batcher.only_kept
    batcher.add(Change("cold0", "update", None), 0.0)
    assert not batcher.only_kept
    assert not batcher.due(0.0, stream_idle=False, busy=True)  # was: due, and a batch of 1
    for n in range(1, 4):
        batcher.add(Change(f"cold{n}", "update", None), 0.0)
    assert batcher.due(0.0, stream_idle=False, busy=True)
    drained = batcher.drain(token(8), held=lambda pid: pid.startswith("hot"), least=4)
    assert drained.batches(4) == [("q", [(f"cold{n}", "update") for n in range(4)])]


# Property: random reads, holds and drains. Tokens are integers: the token read just before
# change n is n, the token after everything read so far is the number of changes read.
steps = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 11), st.sampled_from(["insert", "update"])),
    st.tuples(st.just("drain"), st.booleans(), st.booleans(), st.frozensets(st.integers(0, 11))),
), max_size=60)


@PROPERTY
@given(st.integers(1, 5), st.integers(1, 3), steps)
def test_batches_never_shrink_under_load_and_the_checkpoint_never_passes_a_waiting_change(
    max_size: int, partitions: int, history: list[tuple[Any, ...]],
) -> None:
    batcher = MicroBatcher(lambda pid: f"q{int(pid[1:]) % partitions}", max_size, 0.0)
    pending: dict[str, str] = {}  # buffered, not yet published: pid -> latest op
    first_read: dict[str, int] = {}  # pid -> the token just before its oldest pending change
    read = 0
    for step in [*history, ("drain", True, False, frozenset())]:  # the last drain: room
        if step[0] == "add":
            pid = f"p{step[1]}"
            batcher.add(Change(pid, step[2], None), 0.0, before=token(read))
            pending[pid] = step[2]
            first_read.setdefault(pid, read)
            read += 1
            continue
        _, room, queue_waiting, held_ids = step
        least = least_batch(room, queue_waiting, max_size)
        held = {f"p{n}" for n in held_ids}
        drained = batcher.drain(token(read), held=held.__contains__ if not room else None,
                                least=least)
        published = [pair for _, batch in drained.batches(max_size) for pair in batch]
        for queue, batch in drained.batches(max_size):
            assert 1 <= len(batch) <= max_size
            assert len(batch) >= least  # never a short batch into a queue that holds some
            assert all(f"q{int(pid[1:]) % partitions}" == queue for pid, _ in batch)
        for pid, op in published:
            assert pending.pop(pid) == op  # each document's latest operation, once
            del first_read[pid]
            assert room or pid not in held
        assert batcher.size == len(pending)  # nothing lost, nothing invented
        waiting = min(first_read.values(), default=read)
        assert drained.token is not None and drained.token["_data"] <= waiting
        if not pending:
            assert drained.token == token(read)
    assert not pending  # the very last drain, with room, flushed everything


def test_the_window_stays_a_few_groups_deep_when_completions_release_one_change_each() -> None:
    """The loop of issue 30, replayed on the pure parts: a hot set held back by batches in
    flight, the queue holding messages, and completions that each release a few changes.
    Before, each release went out as a batch of its own; now nothing short joins the queue."""
    max_size = 50
    window = InflightWindow()
    batcher = MicroBatcher(lambda pid: "q", max_size, 0.0)
    for n in range(120):
        batcher.add(Change(f"p{n}", "update", None), 0.0)
    first = batcher.drain(token(1), least=1)
    window.open_group(first.token, {f"b{i}": (queue, changes) for i, (queue, changes)
                                    in enumerate(first.batches(max_size))}, 0.0, None)
    sizes = []
    for step in range(200):  # the same hot documents change again and again
        batcher.add(Change(f"p{step % 120}", "update", None), 0.0)
        drained = batcher.drain(token(2 + step), held=window.holds,
                                least=least_batch(False, True, max_size))
        sizes += [len(batch) for _, batch in drained.batches(max_size)]
        if step % 10 == 0 and window.incomplete():  # a completion now and then
            window.part_done(window.incomplete()[0].batch_id, WHOLE)
            window.advance()
    assert sizes and min(sizes) == max_size


def test_the_wait_left_is_the_time_trigger_of_due() -> None:
    """What the stream loop waits on between reads (`StreamLoop._await_seconds`): nothing
    buffered never comes due by time; a buffer comes due after `max_wait`, or `busy_wait`
    while the workers are busy, exactly when `due` turns true."""
    batcher = MicroBatcher(lambda pid: "q", max_size=100, max_wait=0.02, busy_wait=0.25)
    assert batcher.wait_left(5.0, busy=False) == float("inf")
    batcher.add(Change("p0", "update", None), 10.0)
    assert batcher.wait_left(10.0, busy=False) == 0.02
    assert abs(batcher.wait_left(10.1, busy=True) - 0.15) < 1e-9
    assert not batcher.due(10.1, stream_idle=False, busy=True)
    assert batcher.wait_left(10.25, busy=True) == 0.0
    assert batcher.due(10.25, stream_idle=False, busy=True)
