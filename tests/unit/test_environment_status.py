"""The environments' table of `stagesync status` (cli.environment_status): one row per
environment that fits 100 columns below the main table; --wide adds the rest. What status
reads from a real store is tests/integration/test_environment_operations.py's business."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from stagesync.cli.status import render

from tests.unit.test_first_use import _row


def _environment(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": "pr-1234-checkout-redesign", "state": "live",
        "created_at": "2026-12-04T20:58:01.123456+00:00",
        "expires_at": "2026-12-11T20:58:01.123456+00:00", "sample": 10.0,
        "lag_seconds": 0.4, "documents_estimate": 123456, "dead_letters": 3,
        "collections": {
            "orders": {"target": "shop__pr-1234-checkout-redesign.orders",
                       "documents_estimate": 100000, "lag_seconds": 0.4, "dead_letters": 3},
            "users": {"target": "shop__pr-1234-checkout-redesign.users",
                      "documents_estimate": 23456, "lag_seconds": 0.1, "dead_letters": 0},
        },
    }
    entry.update(overrides)
    return entry


def _text(width: int, **kwargs: Any) -> str:
    console = Console(width=width, record=True)
    console.print(render([_row(collection="orders_eu_archive"), _row(collection="users")],
                         **kwargs))
    return console.export_text()


def test_environments_fit_100_columns_below_the_main_table() -> None:
    text = _text(100, environments=[
        _environment(), _environment(name="ci", state="frozen", lag_seconds=None,
                                     expires_at=None, sample=None)])
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= 100
    for header in ("environment", "state", "expires", "documents", "lag s", "dead"):
        assert header in text
    for cell in ("pr-1234-checkout-redesign", "live", "2026-12-11 20:58", "123456", "0.4",
                 "frozen", "never"):
        assert cell in text
    assert "per collection" not in text


def test_wide_adds_sample_creation_and_documents_per_collection() -> None:
    text = _text(250, wide=True, environments=[_environment()])
    for cell in ("sample", "created", "10%", "2026-12-04 20:58", "orders 100000, users 23456"):
        assert cell in text


def test_no_environments_no_table() -> None:
    assert "environment" not in _text(100)
