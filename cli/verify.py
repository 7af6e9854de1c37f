"""`stagesync verify NAME`: the verification report (see tasks.verification.verifier), readable."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table
from stagesync.cli.index_drift import drift_warnings
from stagesync.settings.model import Settings
from stagesync.tasks.verification.verifier import Report, verify_collection

SHOWN = 20


def run_verify(settings: Settings, name: str, sample: int, settle: float, json_output: bool,
               console: Console) -> int:
    report = verify_collection(settings, name, sample, settle)
    if json_output:
        console.print_json(json.dumps(report.as_dict()))
    else:
        print_report(report, console)
    return 0 if report.equal else 1


def print_report(report: Report, console: Console) -> None:
    counts = Table(title=f"verify {report.collection}" + (" (sample)" if report.sampled else ""))
    for column in ("production", "staging live", "staging soft-deleted",
                   "staging never synced", "compared"):
        counts.add_column(column, justify="right")
    counts.add_row(str(report.production_documents), str(report.staging_live),
                   str(report.staging_soft_deleted), str(report.staging_unsynced),
                   str(report.compared))
    console.print(counts)
    _print_index_drift(report, console)
    if report.equal:
        console.print("[green]staging equals production on production-owned fields[/green]")
        return
    sections = [
        ("missing in staging", report.missing_in_staging),
        ("soft-deleted in staging but live in production", report.deleted_in_staging),
        ("live in staging but gone from production (or outside its filter or subset)",
         report.gone_in_production),
        ("live in staging although the document it follows is not (subset closure)",
         report.orphans),
        ("dead-lettered (stagesync dlq list)",
         [f"{pid} ({reason})" for pid, reason in report.dead_lettered.items()]),
        ("different fields", [f"{pid}: {', '.join(paths)}"
                              for pid, paths in report.different.items()]),
        *((f"dangling references at {path} (no staging document of the referenced "
           "collection, while production's target exists)", pids)
          for path, pids in sorted(report.dangling.items())),
    ]
    for title, items in sections:
        if items:
            console.print(f"[red]{title}: {len(items)}[/red]")
            for item in items[:SHOWN]:
                console.print(f"  {item}", highlight=False)
            if len(items) > SHOWN:
                console.print(f"  ... and {len(items) - SHOWN} more")


def _print_index_drift(report: Report, console: Console) -> None:
    """Index drift beside the documents (`indexes` in the JSON): problems in yellow."""
    problems = drift_warnings(report.collection, report.indexes, problems_only=True)
    for line in problems:
        console.print(f"[yellow]index drift: {line}[/yellow]", highlight=False)
    if report.indexes.get("mode") == "mirror" and not problems:
        console.print("indexes: staging has production's (translated where needed)")
