"""A real Prometheus scraping a running pipeline: watcher, a worker with -c 2, and Flower.

Every expression of every dashboard panel is evaluated through Prometheus's HTTP API and must
return series for the synced collection, so a renamed metric or label breaks this test rather
than a user's dashboard. The worker is one scrape target whatever its -c, and a pool child
killed with SIGKILL leaves its counts in the sum, once.

The tests share one pipeline and one Prometheus (starting them is most of the cost); each
inserts documents of its own and checks the counts against what was inserted so far, so they
pass in any order.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from stagesync.cli.local_servers import free_port

from tests.support.backends import MongoPair
from tests.support.pipeline import VENV_BIN, Pipeline, Proc, collection_config, wait_for
from tests.support.prometheus import (
    PrometheusServer,
    binary,
    dashboard_expressions,
    grafana_to_promql,
)

TIMEOUT = 40
BATCH = 30  # documents each step inserts
ENVIRONMENT = "ci-1"  # an environment beside the main staging, for the environment panels


@dataclass
class Live:
    pipeline: Pipeline
    prometheus: PrometheusServer
    worker: Proc
    worker_port: int
    metrics_dir: Path
    name: str
    standby_port: int
    inserted: int = 0  # documents inserted since the bootstrap (each created exactly once)
    baseline: int = 0  # of those, inserted before the current worker started
    evaluated: list[tuple[str, str, int]] = field(default_factory=list)

    def insert(self, count: int = BATCH) -> None:
        first = self.inserted
        self.pipeline.prod().insert_many(
            [{"userEmail": f"m{i}@corp.test", "accountId": i} for i in range(first,
                                                                             first + count)])
        self.inserted += count
        wait_for(lambda: len(self.pipeline.live_staging()) == self.inserted, TIMEOUT,
                 f"{self.inserted} documents synced", self.pipeline)

    def created(self) -> float | None:
        """`created` outcomes of the collection, summed by Prometheus over the worker target."""
        result = self.prometheus.query(
            f'sum(stagesync_applied_total{{collection="{self.name}",outcome="created"}})')
        return float(result[0]["value"][1]) if result else None

    def wait_created(self, expected: int, what: str) -> None:
        wait_for(lambda: self.created() == expected, TIMEOUT,
                 f"Prometheus summing {expected} created ({what}); last {self.created()}",
                 self.pipeline)

    def scraped_after(self, moment: float) -> None:
        """Until Prometheus holds a scrape of the worker target taken after `moment`."""
        def fresh() -> bool:
            result = self.prometheus.query('timestamp(up{job="stagesync-worker"})')
            return bool(result) and float(result[0]["value"][1]) > moment + 0.1
        wait_for(fresh, TIMEOUT, "a new scrape of the worker")

    def pool(self) -> list[int]:
        return sorted(child.pid for child in psutil.Process(self.worker.process.pid).children())


def wait_pool(pipeline: Pipeline, worker: Proc, concurrency: int) -> Proc:
    wait_for(lambda: len(psutil.Process(worker.process.pid).children()) == concurrency,
             TIMEOUT, f"{concurrency} pool children", pipeline)
    return worker


def stop_all(pipeline: Pipeline, prometheus: PrometheusServer) -> None:
    """Everything asked to stop at once, then waited for (one by one costs seconds each)."""
    for proc in pipeline.procs:
        if proc.alive():
            os.killpg(proc.process.pid, signal.SIGTERM)
    prometheus.stop()
    pipeline.stop()  # waits for each, SIGKILLs a straggler, closes the clients


@pytest.fixture(scope="module")
def live(mongo_pair: MongoPair, redis_base: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    binary("prometheus")  # skip (or fail in CI) before starting anything
    workdir = tmp_path_factory.mktemp("monitoring")
    # The Redis database of this pytest process, as the `redis_url` fixture chooses it.
    database = int(os.environ.get("STAGESYNC_TEST_REDIS_DB", "11")) + int(
        os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    watcher_port, worker_port, flower_port = free_port(), free_port(), free_port()
    metrics_dir = workdir / "worker-metrics"
    (workdir / "pipeline").mkdir()
    pipeline = Pipeline(mongo_pair, f"{redis_base}/{database}", workdir / "pipeline",
                        [collection_config("orders")],
                        {"metrics": {"watcher_port": watcher_port,
                                     "worker_port_base": worker_port,
                                     "worker_dir": str(metrics_dir)}})
    prometheus = PrometheusServer(free_port(), workdir / "prometheus")
    try:
        worker = pipeline.start_worker(concurrency=2)
        pipeline.start("flower", [str(VENV_BIN / "celery"), "-A", "stagesync.tasks", "flower",
                                  f"--port={flower_port}", "--address=127.0.0.1"])
        pipeline.start_watcher()
        prometheus.start([
            {"job_name": "stagesync-watcher",
             "static_configs": [{"targets": [f"127.0.0.1:{watcher_port}"]}]},
            {"job_name": "stagesync-worker",
             "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]},
            {"job_name": "flower",
             "static_configs": [{"targets": [f"127.0.0.1:{flower_port}"]}]},
        ])
        wait_pool(pipeline, worker, 2)
        pipeline.wait_bootstrapped()
        # A second watcher of the collection, which can only stand by (it starts while the
        # Flower wait below goes on).
        standby_port = free_port()
        pipeline.start("watcher", ["/usr/bin/env",
                                   f"STAGESYNC_METRICS__WATCHER_PORT={standby_port}",
                                   str(VENV_BIN / "stagesync"), "watch"])
        # Flower turns the workers' task events on once it runs (Celery's `enable_events`):
        # before that, no task reaches Flower's figures.
        wait_for(lambda: "Events of group {task} enabled" in worker.log(400), TIMEOUT,
                 "Flower enabling task events", pipeline)
        created = pipeline.cli("env", "create", ENVIRONMENT, "--wait", "--timeout", "60")
        assert created.returncode == 0, created.stdout + created.stderr + pipeline.logs()
        yield Live(pipeline, prometheus, worker, worker_port, metrics_dir,
                   pipeline.collections[0]["name"], standby_port)
    finally:
        stop_all(pipeline, prometheus)


def _all_targets_up(live: Live) -> list[dict[str, Any]] | None:
    targets = live.prometheus.targets()
    healthy = len(targets) == 3 and all(t["health"] == "up" for t in targets)
    return targets if healthy else None


def _series_for(live: Live, expr: str) -> list[dict[str, Any]]:
    """The series of `expr` that belong to the synced collection (its queues for the queue
    depth; for Flower's figures, which know tasks and not collections, stagesync's tasks)."""
    result = live.prometheus.query(expr)
    if "stagesync_" not in expr:
        return [s for s in result
                if s["metric"].get("task", "stagesync.").startswith("stagesync.")]
    return [s for s in result
            if s["metric"].get("collection") == live.name
            or s["metric"].get("queue", "").startswith(f"stagesync.{live.name}")
            or ("collection" not in s["metric"]
                and s["metric"].get("environment") == ENVIRONMENT)]


def test_every_dashboard_expression_returns_series_for_the_synced_collection(
    live: Live,
) -> None:
    live.insert()
    wait_for(lambda: _all_targets_up(live), TIMEOUT,
             f"every target up: {live.prometheus.targets()}", live.pipeline)
    for title, expr in dashboard_expressions():
        promql = grafana_to_promql(expr, live.name, ENVIRONMENT)
        series = wait_for(lambda promql=promql: _series_for(live, promql), TIMEOUT,
                          f"series for {live.name} from {title!r}: {promql}", live.pipeline)
        live.evaluated.append((title, promql, len(series)))
    # Every alert rule evaluates without error against the live series, and none fires for a
    # healthy pipeline, but for one truth: a test server started for this session has an
    # oplog only minutes long, so the headroom alert is rightly pending.
    rules = [rule for group in live.prometheus.api("rules")["groups"]
             for rule in group["rules"]]
    shipped = (Path(__file__).resolve().parents[2] / "monitoring" / "prometheus"
               / "stagesync.rules.yml").read_text().count("- alert:")
    assert len(rules) == shipped and all(r["health"] == "ok" for r in rules), rules
    alerts = [a for a in live.prometheus.api("alerts")["alerts"]
              if a["labels"].get("collection") == live.name]
    headroom = min(float(s["value"][1]) for s in live.prometheus.query(
        f'stagesync_oplog_headroom_seconds{{collection="{live.name}"}}'))
    expected = {"StagesyncOplogHeadroomLow"} if headroom < 3600 else set()
    assert {a["labels"]["alertname"] for a in alerts} == expected, alerts
    print("\npanel | expression | series")
    for title, promql, count in live.evaluated:
        print(f"{title} | {promql} | {count}")


def test_a_killed_pool_child_counts_neither_lost_nor_twice(live: Live) -> None:
    live.insert()
    live.wait_created(live.inserted - live.baseline, "before the kill")
    # The current worker's directory (one per Celery node name) and its children's counters.
    counted, directory = [], live.metrics_dir
    for directory in live.metrics_dir.iterdir():
        counted = [pid for pid in live.pool() if (directory / f"counter_{pid}.db").exists()]
        if counted:
            break
    assert counted, f"no pool child of {live.pool()} wrote counters in {live.metrics_dir}"
    victim = counted[0]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    wait_for(lambda: len(live.pool()) == 2 and victim not in live.pool(), TIMEOUT,
             "a replacement pool child", live.pipeline)
    live.scraped_after(killed_at)
    # Not lost: the dead child's file still counts.
    assert (directory / f"counter_{victim}.db").exists()
    assert live.created() == live.inserted - live.baseline

    live.insert()
    live.wait_created(live.inserted - live.baseline, "after the kill")
    # Not twice: later scrapes still say the same.
    live.scraped_after(time.time())
    assert live.created() == live.inserted - live.baseline


def test_changing_concurrency_needs_no_scrape_change(live: Live) -> None:
    targets_before = [t["scrapeUrl"] for t in live.prometheus.targets()]
    live.worker.terminate()
    live.worker = wait_pool(live.pipeline, live.pipeline.start_worker(concurrency=3), 3)
    live.baseline = live.inserted
    live.insert()
    # The new worker (another node, a fresh directory) on the same port: the same target,
    # which now sums three children.
    live.wait_created(BATCH, "the -c 3 worker's own")
    assert [t["scrapeUrl"] for t in live.prometheus.targets()] == targets_before
    wait_for(lambda: _all_targets_up(live), TIMEOUT, "every target up again", live.pipeline)
    assert len(live.pool()) == 3


def test_a_standby_watcher_says_so_and_reports_no_figures_of_its_own(live: Live) -> None:
    """The role gauge of a second watcher of the collection is 0, and it serves none of the
    active watcher's per-collection figures (which every aggregation would mix in)."""
    def scraped() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{live.standby_port}/metrics",
                                        timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return None
        return text if f'stagesync_watcher_active{{collection="{live.name}"}}' in text \
            else None

    text = wait_for(scraped, TIMEOUT, "the standby watcher's metrics", live.pipeline)
    assert f'stagesync_watcher_active{{collection="{live.name}"}} 0.0' in text
    for figure in ("stagesync_lag_seconds", "stagesync_oplog_headroom_seconds",
                   "stagesync_unapplied_changes"):
        assert f'{figure}{{collection="{live.name}"}}' not in text, figure
    # The active one still is (Prometheus scrapes only the first watcher).
    active = live.prometheus.query(f'sum(stagesync_watcher_active{{collection="{live.name}"}})')
    assert float(active[0]["value"][1]) == 1
