"""A real Prometheus for tests: Debian's `prometheus` package (which includes `promtool`).

`scripts/test` and `.ci/run` install the package where it is missing and apt can (as root).
Where neither binary can be found, the monitoring tests skip with the reason; in CI
(`CI=true`) they fail instead, so that a CI run can never pass without them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
RULES = MONITORING / "prometheus" / "stagesync.rules.yml"
RULES_TEST = MONITORING / "prometheus" / "rules_test.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "stagesync.json"


def binary(name: str) -> str:
    """The path of `prometheus` or `promtool`, or skip (locally) / fail (in CI) saying why."""
    path = shutil.which(name)
    if path:
        return path
    reason = (f"{name} is not installed: scripts/test installs Debian's prometheus package "
              f"when it is missing (apt-get, as root or through passwordless sudo); install "
              f"it with `apt-get install prometheus` to run the monitoring tests")
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(reason)


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, check=False)


@dataclass
class PrometheusServer:
    """One Prometheus process with its own port, configuration and storage directory."""

    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, scrape_configs: list[dict[str, Any]], interval: str = "1s") -> None:
        """Scrape and evaluate every `interval`, with stagesync's rule file loaded."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval,
                       "evaluation_interval": interval},
            "rule_files": [str(RULES)],
            "scrape_configs": scrape_configs,
        }
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        log = open(self.workdir / "prometheus.log", "ab")  # noqa: SIM115 - the child's
        self.process = subprocess.Popen(
            [binary("prometheus"), f"--config.file={config_path}",
             f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             # Dashboards ask for recent data only; nothing needs to survive the test.
             "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited ({self.process.returncode}):\n"
                                     f"{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"prometheus not ready within 30 s:\n{self.log()}")

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as reply:
            body = json.loads(reply.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector (a PromQL error raises, naming the expression)."""
        try:
            data = self.api("query", query=expr)
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{expr}: {error.read().decode(errors='replace')}") from None
        assert data["resultType"] == "vector", (expr, data["resultType"])
        return list(data["result"])

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])

    def log(self, lines: int = 40) -> str:
        path = self.workdir / "prometheus.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, expression) for every target of every panel of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    return found


def grafana_to_promql(expr: str, collection: str, environment: str = ".*",
                      rate_interval: str = "20s", time_range: str = "10m") -> str:
    """What Grafana sends for one selected collection and environment: its variables replaced
    (collection names are word characters, environment names word characters and dashes,
    which need no regex escaping)."""
    for name in ("${collection:regex}", "${collection}", "$collection"):
        expr = expr.replace(name, collection)
    for name in ("${environment:regex}", "${environment}", "$environment"):
        expr = expr.replace(name, environment)
    return expr.replace("$__rate_interval", rate_interval).replace("$__range", time_range)
