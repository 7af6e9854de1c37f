"""The Redis transport options that decide how soon a dead worker's messages come back."""

from __future__ import annotations

import pytest
from stagesync.settings import Settings
from stagesync.tasks.celery_options import celery_options


def settings(visibility: int) -> Settings:
    return Settings(prod={"uri": "mongodb://prod.corp.test"},
                    staging={"uri": "mongodb://staging.corp.test"},
                    worker={"visibility_timeout_seconds": visibility,
                            "task_time_limit_seconds": visibility - 5,
                            "retry_backoff_max_seconds": visibility / 4},
                    collections=[{"name": "orders", "source": "p.orders",
                                  "target": "s.orders", "business_key": ["k"]}])


@pytest.mark.parametrize("visibility", [10, 30, 300, 3600])
def test_a_dead_workers_messages_come_back_soon_after_the_visibility_timeout(
    visibility: int,
) -> None:
    options = celery_options(settings(visibility))["broker_transport_options"]
    assert options["visibility_timeout"] == visibility
    # Scanned every interval x throttle seconds, under a lock that a SIGKILLed holder keeps
    # for its expiry: both bound the delay after the timeout to a tenth of it (at least 1 s).
    delay = options["unacked_restore_interval"] * options["unacked_restore_throttle"]
    assert 1 <= delay <= max(1, visibility // 10)
    assert 1 <= options["unacked_mutex_expire"] <= max(1, visibility // 10)
