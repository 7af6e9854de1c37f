"""Waiting for a job (resync, replay) recorded in staging, with a progress bar."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

POLL_SECONDS = 0.5


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} docs/s" if speed else "- docs/s")


def follow(
    console: Console,
    read: Callable[[], dict[str, Any]],
    label: str,
    timeout: float,
    finished: tuple[str, ...] = ("done", "failed"),
) -> dict[str, Any] | None:
    """Poll `read()` until its state is finished; None when `timeout` (if > 0) passed."""
    deadline = time.monotonic() + timeout if timeout > 0 else float("inf")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               RateColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(label, total=None)
        while time.monotonic() < deadline:
            state = read()
            total = state.get("total")
            bar.update(task, total=total, completed=state.get("done", 0),
                       description=f"{label} [{state.get('state')}]")
            if state.get("state") in finished:
                if total is not None:
                    bar.update(task, completed=total if state["state"] == "done" else None)
                return state
            time.sleep(POLL_SECONDS)
    return None
