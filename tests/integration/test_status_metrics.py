"""`stagesync status` figures and the Prometheus endpoints, against a running pipeline."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from stagesync.cli.local_servers import free_port

from tests.support.pipeline import Pipeline, collection_config, wait_for

TIMEOUT = 40
AWAY_SECONDS = 3.0  # how long the watcher is away while production changes
# `wallTime` is the production server's clock and has millisecond precision; status rounds
# lag to milliseconds. Allows for that (and a little clock skew with external deployments).
CLOCK_TOLERANCE = 0.25


def status(pipeline: Pipeline) -> tuple[int, dict[str, Any]]:
    result = pipeline.cli("status", "--json")
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)["collections"][0]


def caught_up(pipeline: Pipeline) -> tuple[int, dict[str, Any]] | None:
    """Status once healthy with nothing pending. Health alone is not enough: a collection
    whose lag is under the threshold is healthy while changes are still being applied."""
    code, row = status(pipeline)
    done = code == 0 and row["lag_seconds"] == 0 and row["pending_changes"] == 0 \
        and row["queue_depth"] == 0
    return (code, row) if done else None


def created(row: dict[str, Any]) -> int:
    """Documents created in staging, by the stream and by resyncs."""
    return int(row["counters"]["created"] + row["resync_counters"].get("created", 0))


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_status_tracks_lag_and_health_and_metrics_are_served(pipeline_factory: Any) -> None:
    watcher_port, worker_port = free_port(), free_port()
    pipeline: Pipeline = pipeline_factory(
        [collection_config("orders", rate_limit="500/s")],
        status={"lag_threshold_seconds": 2, "stalled_after_seconds": 3},
        metrics={"watcher_port": watcher_port, "worker_port_base": worker_port},
    )
    code, row = status(pipeline)
    assert code == 1 and row["health"] == "down"  # no watcher yet

    worker = pipeline.start_worker(concurrency=1)
    pipeline.start_watcher()
    pipeline.wait_streaming()
    prod = pipeline.prod()
    prod.insert_many([{"userEmail": f"u{i}@corp.test", "accountId": i} for i in range(50)])
    wait_for(lambda: len(pipeline.live_staging()) == 50, TIMEOUT, "50 synced", pipeline)
    code, row = wait_for(lambda: caught_up(pipeline), TIMEOUT, "healthy and caught up",
                         pipeline)
    assert row["watcher"]["alive"] and row["counters"]["read"] >= 50
    # Each document is created once, by the stream or by the bootstrap resync, which may
    # still be copying when they are inserted: how they split depends on timing.
    wait_for(lambda: created(status(pipeline)[1]) == 50, TIMEOUT, "50 created", pipeline)
    assert row["rate_limit"] == {"rate": "500/s", "source": "config"}
    name = pipeline.collections[0]["name"]
    assert row["checkpoint_at"] and row["queues"] == {f"stagesync.{name}": 0}

    metrics = scrape(watcher_port)
    assert f'stagesync_changes_read_total{{collection="{name}"}}' in metrics
    assert f'stagesync_lag_seconds{{collection="{name}"}} 0.0' in metrics
    worker_metrics = wait_for(lambda: _first_serving(worker_port), TIMEOUT, "worker metrics")
    assert "stagesync_applied_total" in worker_metrics
    assert "stagesync_apply_seconds_bucket" in worker_metrics

    # Workers gone: changes pile up, lag rises, the health check fails.
    worker.terminate()
    prod.update_many({}, {"$set": {"total": 1}})
    code, row = wait_for(lambda: (s := status(pipeline))[1]["health"] in ("stalled", "lagging")
                         and s, TIMEOUT, "lag noticed", pipeline)
    assert code == 1 and row["lag_seconds"] > 2 and row["pending_changes"] > 0
    assert row["queue_depth"] > 0

    # A worker returns: the backlog drains and health comes back.
    pipeline.start_worker(concurrency=1)
    wait_for(lambda: caught_up(pipeline), TIMEOUT, "recovered", pipeline)


def test_lag_counts_from_when_production_made_the_change(pipeline: Pipeline) -> None:
    """Lag is the age of the oldest unapplied change by its event's `wallTime`, not by when
    the watcher read it: changes made while the watcher was away are already old when read."""
    worker = pipeline.start_worker(concurrency=1)
    watcher = pipeline.start_watcher()
    pipeline.wait_streaming()
    wait_for(lambda: caught_up(pipeline), TIMEOUT, "caught up after the bootstrap", pipeline)
    watcher.terminate()
    worker.terminate()

    pipeline.prod().insert_many([{"userEmail": f"l{i}@corp.test", "accountId": i}
                                 for i in range(10)])
    written = time.time()  # each change's wallTime is at or before this
    time.sleep(AWAY_SECONDS)
    pipeline.start_watcher()  # reads the changes; no worker applies them yet

    def pending() -> tuple[float, dict[str, Any]] | None:
        asked = time.time()
        row = status(pipeline)[1]
        return (asked, row) if row["pending_changes"] > 0 else None

    asked, first = wait_for(pending, TIMEOUT, "the changes read, not applied", pipeline)
    assert first["lag_seconds"] >= asked - written - CLOCK_TOLERANCE, (first, asked - written)
    _, second = wait_for(pending, TIMEOUT, "still pending", pipeline)
    assert second["lag_seconds"] > first["lag_seconds"]  # the same oldest change, older now

    pipeline.start_worker(concurrency=1)
    wait_for(lambda: caught_up(pipeline), TIMEOUT, "lag back to 0", pipeline)
    assert len(pipeline.live_staging()) == 10


def _first_serving(base: int) -> str | None:
    for port in range(base, base + 8):
        try:
            return scrape(port)
        except OSError:
            continue
    return None
