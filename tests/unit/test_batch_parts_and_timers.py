"""The named types behind the watcher's bookkeeping: a part of a batch (`protocol.parts`) and
the watcher's one timer scheme (`watcher.timers`)."""

from __future__ import annotations

import pytest
from stagesync.protocol.names import done_report, parse_done_report
from stagesync.protocol.parts import WHOLE, BatchPart
from stagesync.watcher.timers import Timers


def test_a_part_keeps_the_wire_spelling_of_earlier_versions() -> None:
    # Messages and done reports of earlier versions carry "" (whole), "0", "1", "01", ...
    for text in ("", "0", "1", "01", "110"):
        assert BatchPart.from_wire(text).wire == text
    assert done_report("run:1:0", BatchPart("01")) == "run:1:0|01"
    assert done_report("run:1:0", WHOLE) == "run:1:0|"
    assert parse_done_report(b"run:1:0|01") == ("run:1:0", BatchPart("01"))
    assert parse_done_report("a|b|") == ("a|b", WHOLE)


@pytest.mark.parametrize("text", ["2", "x", "0 1", "|"])
def test_a_part_is_a_path_of_halves_only(text: str) -> None:
    with pytest.raises(ValueError, match="path of halves"):
        BatchPart.from_wire(text)


def test_halves_and_coverage() -> None:
    first, second = WHOLE.halves
    assert (first, second) == (BatchPart("0"), BatchPart("1"))
    assert first.halves == (BatchPart("00"), BatchPart("01"))
    assert WHOLE.contains(BatchPart("01")) and first.contains(BatchPart("01"))
    assert not second.contains(BatchPart("01"))
    assert WHOLE.covered_by([WHOLE])
    assert WHOLE.covered_by([second, *first.halves])
    assert not WHOLE.covered_by([second, BatchPart("00")])
    assert not WHOLE.covered_by([])


def test_timers_are_due_at_once_then_once_per_period() -> None:
    timers = Timers({"beat": 1.0, "fetch": 0.0})
    assert timers.due("beat", 100.0)
    assert not timers.due("beat", 100.5)
    assert timers.left("beat", 100.5) == pytest.approx(0.5)
    assert timers.due("beat", 101.0)
    assert timers.ready("fetch", 0.0)
    timers.hold_until("fetch", 50.0)
    assert not timers.ready("fetch", 49.9) and timers.ready("fetch", 50.0)
    timers.reset("beat", "fetch")
    assert timers.ready("beat", 0.0) and timers.ready("fetch", 0.0)
