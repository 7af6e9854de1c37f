"""`stagesync status` figures and the Prometheus endpoints, against a running pipeline."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from cli.local_servers import free_port
from tests.support.pipeline import Pipeline, collection_config, wait_for

TIMEOUT = 40


def status(pipeline: Pipeline) -> tuple[int, dict[str, Any]]:
    result = pipeline.cli("status", "--json")
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)["collections"][0]


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
    wait_for(lambda: status(pipeline)[1]["counters"]["created"] >= 50, TIMEOUT,
             "50 created", pipeline)
    code, row = wait_for(lambda: (s := status(pipeline))[0] == 0 and s, TIMEOUT, "healthy",
                         pipeline)
    assert row["lag_seconds"] == 0 and row["pending_changes"] == 0
    assert row["watcher"]["alive"] and row["counters"]["read"] >= 50
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
    code, row = wait_for(lambda: (s := status(pipeline))[0] == 0 and s, TIMEOUT, "recovered",
                         pipeline)
    assert row["lag_seconds"] == 0 and row["queue_depth"] == 0


def _first_serving(base: int) -> str | None:
    for port in range(base, base + 8):
        try:
            return scrape(port)
        except OSError:
            continue
    return None
