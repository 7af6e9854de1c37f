"""`may_hold_unsynced`: the resync's look for a never-synced staging document is bounded in time,
and a look that runs out answers "maybe" (every batch then reads staging), never "none".

MongoDB answers a query past its `maxTimeMS` with ExecutionTimeout (code 50); the test server
does not bound a query's time, so the call site gets a stand-in collection here."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.errors import ExecutionTimeout
from stagesync.tasks.full_resync.chunks import UNSYNCED_PROBE_MS, may_hold_unsynced


class Staging:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked: list[tuple[Any, ...]] = []

    def find_one(self, query: Any, projection: Any, **options: Any) -> Any:
        self.asked.append((query, projection, options))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize(("answer", "maybe"), [
    (None, False),
    ({"_id": 1}, True),
    (ExecutionTimeout("operation exceeded time limit", 50), True),
])
def test_only_a_look_that_found_none_in_time_says_none(answer: Any, maybe: bool) -> None:
    staging = Staging(answer)
    assert may_hold_unsynced(staging) is maybe  # type: ignore[arg-type]
    (query, projection, options), = staging.asked
    assert query == {"_sync": {"$exists": False}} and projection == {"_id": 1}
    assert options == {"max_time_ms": UNSYNCED_PROBE_MS}
