"""Operating environments, with a real watcher, a worker (-c 2) serving its metrics, and Flower:
`stagesync status` lists the environment, the worker's endpoint labels its series by
environment (and drops them once it is deleted), and Flower shows its resync chunks with the
scoped name that identifies it."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from stagesync.cli.local_servers import free_port

from tests.support.pipeline import VENV_BIN, Pipeline, wait_for

TIMEOUT = 60.0


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return None


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample of `name` with exactly these labels."""
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) == labels:
            return float(match.group(2))
    return None


def test_status_metrics_and_flower_show_an_environment(
    pipeline_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, flower_port = free_port(), free_port()
    pipeline: Pipeline = pipeline_factory(metrics={
        "worker_port_base": port, "worker_dir": str(tmp_path / "metrics")})
    name = pipeline.collections[0]["name"]
    pipeline.prod().insert_many([{"userEmail": f"u{n}@x", "accountId": n} for n in range(200)])
    pipeline.start_watcher()
    worker = pipeline.start_worker(concurrency=2)
    # Flower's HTTP API answers without credentials only when told to (Flower 2).
    pipeline.start("flower", ["/usr/bin/env", "FLOWER_UNAUTHENTICATED_API=true",
                              str(VENV_BIN / "celery"), "-A", "stagesync.tasks", "flower",
                              f"--port={flower_port}", "--address=127.0.0.1"])
    pipeline.wait_bootstrapped()
    wait_for(lambda: "Events of group {task} enabled" in worker.log(400), TIMEOUT,
             "Flower enabling task events", pipeline)

    created = pipeline.cli("env", "create", "pr-1", "--sample", "50", "--wait",
                           "--timeout", "60")
    assert created.returncode == 0, created.stdout + created.stderr + pipeline.logs()
    scope = f"{name}@pr-1"

    # Flower: the environment's resync chunks, named by task, with the scoped collection first.
    def chunks() -> list[dict[str, Any]] | None:
        body = _get(f"http://127.0.0.1:{flower_port}/api/tasks?taskname=stagesync.resync_chunk")
        found = [t for t in json.loads(body).values() if scope in str(t.get("args"))] \
            if body else []
        return found or None
    seen = wait_for(chunks, TIMEOUT, f"Flower listing resync chunks of {scope}", pipeline)
    print(f"\nFlower: {seen[0]['name']} args={seen[0]['args']} state={seen[0]['state']}")
    assert seen[0]["name"] == "stagesync.resync_chunk"
    assert seen[0]["args"].startswith(f"['{scope}'")

    # The stream into the environment, counted under the environment's label.
    pipeline.prod().insert_many([{"userEmail": f"n{n}@x", "accountId": 1000 + n}
                                 for n in range(40)])
    url = f"http://127.0.0.1:{port}/metrics"

    def env_created() -> str | None:
        text = _get(url) or ""
        value = _sample(text, "stagesync_environment_applied_total", collection=name,
                        environment="pr-1", outcome="created")
        main = _sample(text, "stagesync_applied_total", collection=name, outcome="created",
                       source="stream")
        return text if value and main == 40 else None
    text = wait_for(env_created, TIMEOUT, "environment series on the worker's endpoint",
                    pipeline)
    assert _sample(text, "stagesync_environment_state", environment="pr-1", state="live") == 1
    assert _sample(text, "stagesync_environment_state", environment="pr-1",
                   state="frozen") == 0
    assert _sample(text, "stagesync_environment_dead_letters", collection=name,
                   environment="pr-1") == 0
    assert _sample(text, "stagesync_environment_apply_failures_total", collection=name,
                   environment="pr-1") == 0
    # The main staging's series keep their labels: no environment among them.
    assert not re.search(r'^stagesync_(applied_total|apply_seconds_count)\{[^}]*environment=',
                         text, re.M)

    # status: the environment in --json and in the 100-column table.
    status = pipeline.cli("status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    [entry] = json.loads(status.stdout)["environments"]
    assert entry["name"] == "pr-1" and entry["state"] == "live" and entry["sample"] == 50
    copy = entry["collections"][name]
    assert copy["target"].endswith("__pr-1." + pipeline.collections[0]["target"].split(".")[1])
    assert 0 < copy["documents_estimate"] < 240 and copy["dead_letters"] == 0
    assert isinstance(copy["lag_seconds"], float)
    monkeypatch.setenv("COLUMNS", "100")
    table = pipeline.cli("status")
    assert table.returncode == 0, table.stdout + table.stderr
    assert "environments" in table.stdout and "pr-1" in table.stdout and "live" in table.stdout
    assert max(len(line) for line in table.stdout.splitlines()) <= 100, table.stdout
    assert "…" not in table.stdout, table.stdout

    # Deleted: the worker's endpoint drops every series of it (the pool children's included).
    deleted = pipeline.cli("env", "delete", "pr-1")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    wait_for(lambda: 'environment="pr-1"' not in (_get(url) or 'environment="pr-1"'),
             TIMEOUT, "the deleted environment's series gone", pipeline)
    assert _sample(_get(url) or "", "stagesync_applied_total", collection=name,
                   outcome="created", source="stream") == 40
