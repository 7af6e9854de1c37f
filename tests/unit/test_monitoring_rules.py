"""The shipped monitoring files: alert rules checked and unit-tested by a real `promtool`,
the Prometheus configurations, the dashboard's shape, and the README entries the rules link.

What the dashboard's expressions return against live metrics is
tests/integration/test_monitoring_live.py's business.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.prometheus import (
    DASHBOARD,
    MONITORING,
    REPO,
    RULES,
    RULES_TEST,
    dashboard_expressions,
    promtool,
)

CONFIGS = [MONITORING / "prometheus" / "prometheus.yml",
           MONITORING / "prometheus" / "prometheus.local.yml"]


def alerting_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerting_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    """Each alert is evaluated at least twice: once where it must fire, and once (at another
    time, or for other input series in the same test) where it must not."""
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    fired: dict[str, int] = {}
    quiet: dict[str, int] = {}
    for test in tests:
        series = {entry["series"] for entry in test["input_series"]}
        for case in test.get("alert_rule_test", []):
            name = case["alertname"]
            if case.get("exp_alerts"):
                fired[name] = fired.get(name, 0) + 1
                # Some input series of the test raise no alert: the case that must not fire.
                if len(series) > len(case["exp_alerts"]):
                    quiet[name] = quiet.get(name, 0) + 1
            else:
                quiet[name] = quiet.get(name, 0) + 1
    names = {rule["alert"] for rule in alerting_rules()}
    assert names == set(fired), names ^ set(fired)
    assert names == set(quiet), names ^ set(quiet)


def test_promtool_checks_both_prometheus_configurations() -> None:
    for config in CONFIGS:
        result = promtool("check", "config", str(config))
        assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_rule_fails_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests can fail: the lag alert with another threshold no longer passes."""
    broken = RULES.read_text().replace("(stagesync_lag_seconds) > 120",
                                       "(stagesync_lag_seconds) > 300")
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    (tmp_path / RULES_TEST.name).write_text(RULES_TEST.read_text())
    result = promtool("test", "rules", RULES_TEST.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "StagesyncLagHigh" in result.stdout + result.stderr


def _readme_anchors() -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in (REPO / "README.md").read_text().splitlines():
        if match := re.match(r"^#{1,6}\s+(.*)$", line):
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_every_alert_explains_itself_and_links_its_readme_entry() -> None:
    anchors = _readme_anchors()
    for rule in alerting_rules():
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook"} <= set(annotations), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        page, _, anchor = annotations["runbook"].partition("#")
        assert page == "README.md" and anchor == rule["alert"].lower(), annotations["runbook"]
        assert anchor in anchors, f"README.md has no heading for #{anchor}"


def test_the_dashboard_has_its_variables_and_every_panel_queries_prometheus() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["collection"]["type"] == "query"
    assert variables["collection"]["multi"] and variables["collection"]["includeAll"]
    assert variables["environment"]["type"] == "query"
    assert variables["environment"]["multi"] and variables["environment"]["includeAll"]
    assert "stagesync_environment_state" in variables["environment"]["definition"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            expr = target["expr"]
            # A stagesync series is always narrowed to the selected collections, and an
            # environment's to the selected environments (its state has no collection).
            per_environment = "stagesync_environment_" in expr
            assert "stagesync_" not in expr or "$collection" in expr or \
                "stagesync_environment_state" in expr, expr
            assert not per_environment or "$environment" in expr or \
                "stagesync_environment_fanout_seconds" in expr, expr
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert len(dashboard_expressions()) >= len(dashboard["panels"])


@pytest.mark.parametrize("panel", [
    "Lag per collection", "Changes read, enqueued and applied by outcome",
    "Unapplied changes and queue depth per partition", "Apply duration (p50, p90, p99)",
    "Rate-limit wait", "Dead letters", "Resync progress", "Checkpoint age", "Oplog headroom",
    "Celery task rates (Flower)", "Environment states", "Environment changes applied by outcome",
    "Environment dead letters and failed applies",
])
def test_the_dashboard_has_the_panels_operators_ask_for(panel: str) -> None:
    titles = {p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]}
    assert panel in titles


def test_compose_runs_prometheus_grafana_and_alertmanager_in_a_profile() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert "profiles" not in prometheus and "profiles" not in grafana
    assert services["alertmanager"]["profiles"] == ["alerting"]
    for service in (prometheus, grafana, services["alertmanager"]):
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), volume
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert "./monitoring/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    config = yaml.safe_load(CONFIGS[0].read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"stagesync-watcher", "stagesync-worker", "flower"}
    # One target per worker replica, found by DNS, on the port the worker service is given.
    worker_port = services["worker"]["environment"]["STAGESYNC_METRICS__WORKER_PORT_BASE"]
    assert jobs["stagesync-worker"]["dns_sd_configs"][0]["port"] == int(worker_port)
    assert config["rule_files"] == [RULES.name]
    # The job the worker-target alert names is the one scraped.
    assert 'up{job="stagesync-worker"}' in RULES.read_text()
