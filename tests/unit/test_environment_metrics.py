"""Environment metrics (tasks.metrics, tasks.environment_metrics): families of their own with an
`environment` label, the main staging's series untouched, a deleted environment's series gone
from this process (`forget_environment`) and from a multiprocess worker's scrape (the filter).
A live scrape of a worker applying into an environment is in
tests/integration/test_environment_operations.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

from prometheus_client import REGISTRY, generate_latest
from stagesync.tasks import metrics
from stagesync.tasks.apply.context import ApplyResult
from stagesync.tasks.environment_metrics import (
    EnvironmentFigures,
    EnvironmentReading,
    environment_families,
)


def _scrape() -> str:
    return generate_latest(REGISTRY).decode()


def test_fanout_results_are_recorded_per_environment_and_main_series_stay_as_they_were() -> None:
    main_before = [line for line in _scrape().splitlines()
                   if line.startswith("stagesync_applied_total")]
    metrics.observe_environments("orders", {
        "orders@pr-7": ApplyResult(version=1, outcomes=Counter(created=3, updated=0)),
        "orders@pr-8": None,  # contained: its changes were dead-lettered in its scope
    }, 0.02)
    text = _scrape()
    assert ('stagesync_environment_applied_total{collection="orders",environment="pr-7",'
            'outcome="created"} 3.0') in text
    assert 'outcome="updated"' not in text  # zero outcomes make no series
    assert ('stagesync_environment_apply_failures_total{collection="orders",'
            'environment="pr-8"} 1.0') in text
    assert ('stagesync_environment_apply_failures_total{collection="orders",'
            'environment="pr-7"} 0.0') in text
    assert 'stagesync_environment_last_applied_timestamp_seconds{collection="orders",' \
           'environment="pr-7"}' in text
    assert 'stagesync_environment_fanout_seconds_count{collection="orders"} 1.0' in text
    assert [line for line in text.splitlines()
            if line.startswith("stagesync_applied_total")] == main_before


def test_forget_environment_removes_only_that_environments_series() -> None:
    metrics.observe_environments("users", {
        "users@gone": ApplyResult(version=1, outcomes=Counter(created=1)),
        "users@kept": ApplyResult(version=1, outcomes=Counter(created=2)),
    }, 0.01)
    metrics.forget_environment("gone")
    metrics.forget_environment("never-existed")  # nothing to do, no error
    text = _scrape()
    assert 'environment="gone"' not in text
    assert 'stagesync_environment_applied_total{collection="users",environment="kept",' \
           'outcome="created"} 2.0' in text


def test_scrape_time_gauges_say_state_dead_letters_and_expiry() -> None:
    families = {family.name: family for family in environment_families([
        EnvironmentReading("pr-1", "frozen", 1_900_000_000.0, {"orders": 4, "users": 0}),
        EnvironmentReading("ci", "live", None, {"orders": 0}),
    ])}
    states = {(s.labels["environment"], s.labels["state"]): s.value
              for s in families["stagesync_environment_state"].samples}
    assert states[("pr-1", "frozen")] == 1.0 and states[("pr-1", "live")] == 0.0
    assert states[("ci", "live")] == 1.0
    assert {k for k, v in states.items() if v} == {("pr-1", "frozen"), ("ci", "live")}
    dead = {(s.labels["environment"], s.labels["collection"]): s.value
            for s in families["stagesync_environment_dead_letters"].samples}
    assert dead == {("pr-1", "orders"): 4.0, ("pr-1", "users"): 0.0, ("ci", "orders"): 0.0}
    expiry = families["stagesync_environment_expiry_timestamp_seconds"].samples
    assert [(s.labels, s.value) for s in expiry] == [({"environment": "pr-1"}, 1_900_000_000.0)]


def test_the_store_is_read_at_most_every_few_seconds_and_a_failed_read_keeps_the_last() -> None:
    now = [0.0]
    answers: list[list[EnvironmentReading] | Exception] = [
        [EnvironmentReading("a", "live", None, {})], RuntimeError("down"),
    ]
    calls = []

    def read() -> list[EnvironmentReading]:
        calls.append(now[0])
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    figures = EnvironmentFigures(read, every=5.0, clock=lambda: now[0])
    assert [r.name for r in figures.readings() or []] == ["a"]
    now[0] = 4.0
    figures.readings()
    now[0] = 6.0
    assert [r.name for r in figures.readings() or []] == ["a"]  # the failure kept "a"
    assert calls == [0.0, 6.0]


def test_never_read_means_nothing_is_filtered() -> None:
    def down() -> list[EnvironmentReading]:
        raise RuntimeError("state database down")

    figures = EnvironmentFigures(down)
    metrics.observe_environments("items", {
        "items@x": ApplyResult(version=1, outcomes=Counter(created=1))}, 0.01)
    kept = figures.filter(REGISTRY.collect())
    assert any(s.labels.get("environment") == "x" for family in kept for s in family.samples)
    assert list(figures.collect()) and all(not f.samples for f in figures.collect())


def test_a_multiprocess_workers_scrape_leaves_out_deleted_environments(tmp_path: Path) -> None:
    """Pool children's series live in files that prometheus_client cannot edit: the worker's
    scrape leaves out the environments the store no longer lists. (A subprocess: multiprocess
    mode changes prometheus_client for the whole process.)"""
    script = textwrap.dedent(f"""
        from collections import Counter
        from pathlib import Path
        from stagesync.tasks import metrics
        from stagesync.tasks.apply.context import ApplyResult
        from stagesync.tasks.environment_metrics import EnvironmentFigures, EnvironmentReading
        directory = Path({str(tmp_path / "w@h")!r})
        metrics.enable_multiprocess(directory)
        metrics.observe_environments("orders", {{
            "orders@deleted": ApplyResult(version=1, outcomes=Counter(created=5)),
            "orders@pr-1": ApplyResult(version=1, outcomes=Counter(created=2)),
        }}, 0.01)
        metrics.observe_apply("orders", 7, 0.1, 0.0, {{"created": 7}})
        metrics.forget_environment("deleted")  # cannot edit the files: no error either
        listed = [EnvironmentReading("pr-1", "live", None, {{"orders": 1}})]
        collector = metrics._WorkerCollector(directory, EnvironmentFigures(lambda: listed))
        for family in collector.collect():
            for sample in family.samples:
                print(sample.name, sorted(sample.labels.items()), sample.value)
    """)
    result = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", script],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert not [line for line in lines if "'deleted'" in line], lines
    assert ("stagesync_environment_applied_total [('collection', 'orders'), "
            "('environment', 'pr-1'), ('outcome', 'created')] 2.0") in lines
    assert ("stagesync_applied_total [('collection', 'orders'), ('outcome', 'created'), "
            "('source', 'stream')] 7.0") in lines
    assert ("stagesync_environment_dead_letters [('collection', 'orders'), "
            "('environment', 'pr-1')] 1.0") in lines
