"""`stagesync resync NAME [--wait]`: start a full resync and, if asked, follow it."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from stagesync.cli.jobs import follow
from stagesync.deployments.staging import connect_staging
from stagesync.protocol.routing import home_queue
from stagesync.settings.model import Settings
from stagesync.state.database import state_database
from stagesync.state.resync_progress import progress
from stagesync.tasks.enqueue import broker_app, start_resync


def run_resync(settings: Settings, name: str, wait: bool, timeout: float,
               console: Console) -> int:
    staging = connect_staging(settings.staging, serverSelectionTimeoutMS=10_000)
    state_db = state_database(staging, settings.staging)
    queue = home_queue(settings.collection(name))
    resync_id = start_resync(broker_app(settings), state_db, name, queue,
                             "requested by stagesync resync")
    console.print(f"resync {resync_id} queued on {queue}")
    if not wait:
        console.print(f"follow it with: stagesync resync {name} --wait, or stagesync status")
        return 0
    final = follow(console, lambda: progress(state_db, resync_id), f"resync {name}", timeout)
    staging.close()
    if final is None:
        console.print(f"[red]resync {resync_id} did not finish within {timeout:.0f}s[/red]")
        return 1
    if final["state"] != "done":
        console.print(f"[red]resync {resync_id} failed:[/red] {final.get('error')}")
        return 1
    table = Table(title=f"resync {resync_id}")
    for column in ("created", "updated", "unchanged", "soft_deleted", "dead_lettered"):
        table.add_column(column.replace("_", "-"), justify="right")
    summary = final["summary"]
    table.add_row(*(str(summary.get(c, 0)) for c in
                    ("created", "updated", "unchanged", "soft_deleted", "dead_lettered")))
    console.print(table)
    seconds = (final["finishedAt"] - final["startedAt"]).total_seconds()
    console.print(f"{final['total']} production documents in {seconds:.1f}s "
                  f"({final['chunks']} chunks)")
    return 0
