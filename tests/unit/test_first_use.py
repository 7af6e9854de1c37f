"""A new user's first commands: help fit to read, a missing file that says what to do, the
fields of `status` that cannot be known said so, and `init`'s proposal rules (pure parts)."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import stagesync.cli.demo as demo_module
import typer
import yaml
from rich.console import Console
from stagesync.cli.main import app
from stagesync.cli.starter_config import (
    Candidate,
    ProposedCollection,
    collection_name,
    key_candidates,
    starter_yaml,
)
from stagesync.cli.status import render
from stagesync.deployments.production import oplog_fill
from stagesync.settings import CONFIG_ENV, ConfigFileMissing, Settings, load_settings
from typer.testing import CliRunner

runner = CliRunner()


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the CLI, groups included (`()`, `("dlq",)`, `("dlq", "list")`)."""
    found = [prefix]
    for name, command in getattr(group, "commands", {}).items():
        found += _commands(command, (*prefix, name))
    return found


def test_help_of_every_command_has_no_value_placeholder_on_flags_and_no_braces() -> None:
    root = typer.main.get_command(app)
    paths = _commands(root)
    assert ("demo",) in paths and ("dlq", "list") in paths and ("init",) in paths
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0, (path, result.output)
        assert "<bool>" not in result.output, (path, result.output)
        assert not re.search(r"\{[a-z_]+\}", result.output), (path, result.output)
        if path and path != ("dlq",) and path != ("pii",):
            assert "Example" in result.output, (path, result.output)


def test_resync_help_says_what_timeout_zero_means() -> None:
    result = runner.invoke(app, ["resync", "--help"], env={"COLUMNS": "120"})
    assert "0: wait until it" in result.output
    assert re.search(r"resync \[OPTIONS\] NAME\b", result.output), result.output


def test_missing_default_file_names_the_path_the_variable_and_init(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    with pytest.raises(ConfigFileMissing) as caught:
        load_settings()
    message = str(caught.value)
    assert str(tmp_path / "stagesync.yaml") in message
    assert "does not exist" in message and CONFIG_ENV in message
    assert "stagesync init" in message
    result = runner.invoke(app, ["status"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "stagesync init" in result.output and "required key" not in result.output


def test_a_file_named_by_the_variable_says_so(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigFileMissing, match=f"path from {CONFIG_ENV}"):
        load_settings()


@pytest.mark.parametrize(("stats", "expected"), [
    ({"capped": False, "count": 10}, "unbounded"),
    ({"capped": True, "max": 100000, "count": 5000, "maxSize": 10**9, "size": 0}, "not_full"),
    ({"capped": True, "max": 100, "count": 100}, "full"),
    ({"capped": True, "maxSize": 1000, "size": 990}, "full"),
    ({"capped": True, "maxSize": 1000, "size": 10}, "not_full"),
    ({}, None),
    (None, None),
])
def test_oplog_fill(stats: dict[str, Any] | None, expected: str | None) -> None:
    assert oplog_fill(stats) == expected


class _Poller:
    """Stands for the status poller: the rows it last read, stale since a while."""

    def snapshot(self) -> tuple[list[dict[str, Any]], str | None]:
        return [_row(queue_depth=3)], "read 8s ago"


def test_plain_demo_prints_progress_while_its_main_thread_is_busy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a terminal, a progress line comes from a thread of its own every
    PROGRESS_SECONDS (at most 5), whatever the main thread is blocked on."""
    assert demo_module.PROGRESS_SECONDS <= 5
    monkeypatch.setattr(demo_module, "PROGRESS_SECONDS", 0.2)
    console = Console(width=200, record=True, force_terminal=False)
    demo = demo_module.Demo(console, False, 10, 0, 1.0, 1.0)
    try:
        with demo_module._live(demo, _Poller()):  # type: ignore[arg-type]
            time.sleep(1.1)  # a slow write or read, say
    finally:
        shutil.rmtree(demo.workdir, ignore_errors=True)
    lines = [line for line in console.export_text().splitlines() if "orders: ok" in line]
    assert len(lines) >= 3, lines
    assert "(status read 8s ago)" in lines[0]


def _row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "collection": "orders", "health": "ok", "watcher": {"state": "streaming"},
        "lag_seconds": 0.0, "pending_changes": 0,
        "counters": {"read": 1, "enqueued": 1, "updated": 1, "dead_lettered": 0},
        "dead_letters": 0, "queues": {"stagesync.orders": 0},
        "rate_limit": {"rate": None, "source": "none"}, "checkpoint_age_seconds": 4.0,
        "oplog_headroom_seconds": None, "oplog_unknown_because": None,
        "oplog_history": "unbounded", "last_applied_at": None, "resync": None,
        "last_verify": None, "last_error": None, "warnings": [], "subset": None,
        "pending_references": 0,
    }
    row.update(overrides)
    return row


def _text(renderable: Any) -> str:
    console = Console(width=250, record=True)
    console.print(renderable)
    return console.export_text()


def test_status_says_unlimited_unbounded_not_full_and_stale() -> None:
    text = _text(render([_row(), _row(collection="users", oplog_history="not_full"),
                         _row(collection="items", oplog_history="full",
                              oplog_headroom_seconds=40.0,
                              rate_limit={"rate": "500/s", "source": "config"})],
                        stale="read 9s ago", wide=True))
    assert "unlimited" in text and "none (none)" not in text
    assert "unbounded" in text and "not full" in text and "40s" in text
    assert "500/s (config)" in text
    assert "stale: read 9s ago" in text


def test_key_candidates_put_unique_indexes_first() -> None:
    indexes = [
        {"name": "_id_", "key": {"_id": 1}},
        {"name": "email_1", "key": {"email": 1}, "unique": True},
        {"name": "a_1_b_1", "key": {"a": 1, "b": -1}, "unique": True},
        {"name": "partial", "key": {"c": 1}, "unique": True,
         "partialFilterExpression": {"c": {"$exists": True}}},
        {"name": "text", "key": {"d": "text"}, "unique": True},
        {"name": "plain", "key": {"e": 1}},
    ]
    sample = [{"_id": i, "email": f"u{i}@x.invalid", "code": f"C{i}", "same": "x",
               "flag": i % 2 == 0} for i in range(5)]
    found = key_candidates(indexes, sample)
    assert [c.fields for c in found] == [["email"], ["a", "b"], ["code"]]
    assert found[0].reason == "unique index email_1"
    assert found[-1].reason == "unique in the sample"


def test_collection_names_fit_the_configuration() -> None:
    taken: set[str] = set()
    assert collection_name("shop", "orders", taken) == "orders"
    assert collection_name("archive", "orders", taken) == "archive_orders"
    assert collection_name("x", "2024.events", taken) == "c_2024_events"


def test_starter_file_loads_as_proposed() -> None:
    proposed = [
        ProposedCollection("orders", "shop.orders", "shop_staging.orders", 10, 10,
                           [Candidate(["userEmail", "orderNo"], "unique index u_1_o_1")],
                           pii={"userEmail": "hash", "customer.name": "fake:name"}),
        ProposedCollection("events", "logs.events", "logs_staging.events", 3, 3, []),
    ]
    text = starter_yaml("mongodb://p:1/", "mongodb://s:2/", "redis://r:3/0", "s3cret",
                        proposed, None)
    settings = Settings(**yaml.safe_load(text))
    assert [c.name for c in settings.collections] == ["orders"]  # events: commented out
    orders = settings.collection("orders")
    assert orders.business_key == ["userEmail", "orderNo"]
    assert {path: str(rule) for path, rule in orders.pii.items()} == {
        "userEmail": "hash", "customer.name": "fake:name"}
    assert "# - name: events" in text
    example = starter_yaml("mongodb://p:1/", "mongodb://s:2/", "redis://r:3/0", "s", [],
                           "no --prod-uri given")
    assert Settings(**yaml.safe_load(example)).collections[0].name == "orders"


def test_status_fits_100_columns_with_the_essentials_and_gives_the_rest_with_wide() -> None:
    """At 100 columns (a terminal, a CI log) no header or cell of the default table is cut;
    --wide adds the rest."""
    rows = [_row(collection="orders_eu_archive", health="lagging", lag_seconds=123.4,
                 pending_changes=98765, dead_letters=12,
                 last_applied_at="2026-12-04T21:58:01+00:00"),
            _row(collection="users")]
    console = Console(width=100, record=True)
    console.print(render(rows))
    text = console.export_text()
    assert "…" not in text, text
    for header in ("collection", "health", "lag s", "pending", "dead", "last applied"):
        assert header in text
    for cell in ("orders_eu_archive", "lagging", "123.4", "98765", "12", "21:58:01"):
        assert cell in text
    assert "rate limit" not in text and "oplog headroom" not in text
    assert max(len(line) for line in text.splitlines()) <= 100
    wide = _text(render(rows, wide=True))
    for header in ("watcher", "read", "applied", "queue", "rate limit", "checkpoint age",
                   "oplog headroom"):
        assert header in wide
