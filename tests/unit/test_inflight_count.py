"""The in-flight window counts its batches as they open and complete (the watcher asks before
every event): the count must always equal the batches not yet complete."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from stagesync.protocol.parts import BatchPart
from stagesync.watcher.inflight import InflightWindow

# Each step: open a group of n batches, or report a part ("", "0", "1") of some batch id.
STEPS = st.lists(st.one_of(
    st.tuples(st.just("open"), st.integers(1, 3)),
    st.tuples(st.just("done"), st.integers(0, 12), st.sampled_from(["", "0", "1"])),
), max_size=40)


@given(STEPS)
def test_batches_in_flight_is_the_number_of_incomplete_batches(steps: list[tuple]) -> None:
    window = InflightWindow()
    opened = 0
    for step in steps:
        if step[0] == "open":
            batches = {f"b{opened + i}": ("q", [("p", "update")]) for i in range(step[1])}
            window.open_group({"_data": str(opened)}, batches, 0.0, None)
            opened += step[1]
        else:
            window.part_done(f"b{step[1]}", BatchPart(step[2]))
        window.advance()
        assert window.batches_in_flight == len(window.incomplete())
