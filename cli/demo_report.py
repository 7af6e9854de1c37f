"""What the demo measures and the summary it ends with: steady lag beside the promise, the
burst's drain time, verification, QA notes kept and raw PII found (none)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

SEED_PROMISE = "~1-3 s"  # the lag the product promises in quiet times


@dataclass
class Figures:
    """What the summary reports, measured during the run."""

    steady_changes: int = 0
    steady_seconds: float = 0.0
    steady_lags: list[float] = field(default_factory=list)
    burst_changes: int = 0
    burst_write_seconds: float = 0.0
    burst_lags: list[float] = field(default_factory=list)
    burst_drain_seconds: float | None = None  # last burst write -> last apply
    burst_total_seconds: float | None = None  # first burst write -> last apply
    verify_seconds: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """How the run ended: verification reports and the checks on staging."""

    reports: list[Any]
    changes: int  # production changes the demo made
    qa_kept: int
    qa_total: int
    leaked: int  # staging documents holding a raw email
    seconds: float
    ok: bool


def percentile(values: list[float], percent: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[int(percent) - 1] \
        if percent < 100 else max(values)


def print_summary(console: Console, figures: Figures, outcome: Outcome) -> None:
    table = Table(title="stagesync demo: summary")
    for column in ("collection", "production docs", "staging live", "verify"):
        table.add_column(column)
    for report in outcome.reports:
        table.add_row(report.collection, str(report.production_documents),
                      str(report.staging_live),
                      "[green]equal[/green]" if report.equal else "[red]differs[/red]")
    console.print(table)
    steady = figures.steady_lags
    if steady:
        console.print(
            f"steady traffic: {figures.steady_changes} changes in {figures.steady_seconds:.0f} s;"
            f" lag p50 {percentile(steady, 50):.2f} s, steady p99 lag "
            f"{percentile(steady, 99):.2f} s, max {max(steady):.2f} s "
            f"(the promise: {SEED_PROMISE})", highlight=False)
    if figures.burst_changes:
        drain = figures.burst_drain_seconds
        console.print(
            f"burst: {figures.burst_changes} changes written in "
            f"{figures.burst_write_seconds:.1f} s; burst drain time "
            + (f"{drain:.1f} s after the last write ({figures.burst_total_seconds:.1f} s "
               "after the first)" if drain is not None else "unknown")
            + (f"; lag p99 {percentile(figures.burst_lags, 99):.1f} s"
               if figures.burst_lags else ""), highlight=False)
    console.print(f"verification: {figures.verify_seconds:.1f} s", highlight=False)
    console.print(f"production changes made during the demo: {outcome.changes}")
    console.print(f"QA notes on staging documents kept: {outcome.qa_kept}/{outcome.qa_total}")
    console.print(f"staging documents holding a raw email: {outcome.leaked}")
    console.print(f"total time: {outcome.seconds:.0f}s")
    console.print("[green]demo passed: staging converged[/green]" if outcome.ok
                  else "[red]demo failed[/red]")
