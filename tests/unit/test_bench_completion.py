"""The benchmark's completion probe: exact end time, yet light on the staging server.

Every probe is a query the staging server answers with CPU taken from the system under test
(2 shared cores), so a probe that waits for a system far behind must not re-read the same
documents 20 times a second, and must not ask for long `$in` lists (SecantusDB's `$in` costs
more per value the longer the list).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from bench import completion
from bench.completion import PROBE_BATCH, wait_until_applied
from bench.workload import MARKER, Expected


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class AppliedAt:
    """A locator over a staging that shows every document in its final state from `ready_at`."""

    def __init__(self, clock: FakeClock, ready_at: float) -> None:
        self.clock = clock
        self.ready_at = ready_at
        self.fetched: list[int] = []

    def fetch(self, coll: Any, wanted: Sequence[Expected]) -> dict[Any, dict[str, Any]]:
        self.fetched.append(len(wanted))
        if self.clock.now < self.ready_at:
            return {}
        return {w.id: {MARKER: w.seq} for w in wanted}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(completion.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(completion.time, "sleep", fake.sleep)
    return fake


def test_a_system_far_behind_is_probed_rarely_and_its_end_time_stays_within_one_percent(
    clock: FakeClock,
) -> None:
    expected = [Expected(i, ("k", i), i + 1, False) for i in range(1_000)]
    locator = AppliedAt(clock, ready_at=clock.now + 100.0)
    started = clock.now

    done, pending = wait_until_applied(None, locator, expected, timeout=500.0)  # type: ignore[arg-type]

    assert pending == 0 and done is not None
    assert 100.0 <= done - started <= 101.0 + 0.05
    # A fixed 50 ms pause would have probed ~2,000 times over those 100 s.
    assert len(locator.fetched) < 500, len(locator.fetched)
    assert max(locator.fetched) <= PROBE_BATCH == 100


def test_documents_already_applied_are_swept_without_pauses(clock: FakeClock) -> None:
    expected = [Expected(i, ("k", i), i + 1, False) for i in range(1_000)]
    locator = AppliedAt(clock, ready_at=clock.now)

    done, pending = wait_until_applied(None, locator, expected, timeout=10.0)  # type: ignore[arg-type]

    assert (done, pending) == (clock.now, 0)
    assert locator.fetched == [PROBE_BATCH] * 10
