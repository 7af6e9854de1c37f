"""`stagesync dlq list|show|replay|purge`: the dead-letter store from the command line."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table
from stagesync.cli.jobs import follow
from stagesync.deployments.staging import connect_staging
from stagesync.protocol.names import split_scope
from stagesync.protocol.routing import home_queue
from stagesync.settings.model import Settings
from stagesync.state import dead_letters as dl
from stagesync.state.database import state_database
from stagesync.state.dead_letters import DeadLetterStore, summarize
from stagesync.state.replay_jobs import replay_progress
from stagesync.tasks.enqueue import broker_app, start_replay

REPLAY_TIMEOUT = 300.0


def _store(settings: Settings) -> tuple[Any, DeadLetterStore]:
    client = connect_staging(settings.staging, serverSelectionTimeoutMS=10_000)
    return client, DeadLetterStore(state_database(client, settings.staging))


def _plain(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in entry.items()}


def list_entries(settings: Settings, collection: str | None, reason: str | None,
                 json_output: bool, console: Console) -> int:
    client, store = _store(settings)
    entries = list(store.list(collection, reason))
    client.close()
    if json_output:
        console.print_json(json.dumps([_plain(e) for e in entries]))
        return 0
    if not entries:
        console.print("dead-letter store is empty" + (f" for {collection}" if collection else ""))
        return 0
    table = Table(title=f"{len(entries)} dead-lettered change(s)")
    for column in ("collection", "production _id", "op", "reason", "attempts", "first seen",
                   "last seen", "error"):
        table.add_column(column)
    for entry in entries:
        table.add_row(
            entry.get(dl.COLLECTION_FIELD), entry.get(dl.PID), entry.get(dl.OP),
            entry.get(dl.REASON), str(entry.get(dl.ATTEMPTS)),
            f"{entry.get(dl.FIRST_SEEN):%Y-%m-%d %H:%M:%S}",
            f"{entry.get(dl.LAST_SEEN):%Y-%m-%d %H:%M:%S}", str(entry.get(dl.ERROR))[:60],
        )
    console.print(table)
    console.print(", ".join(f"{reason}: {n}" for reason, n in summarize(entries).items()))
    return 0


def show_entry(settings: Settings, collection: str | None, pid: str, console: Console) -> int:
    client, store = _store(settings)
    names = [collection] if collection else [c.name for c in settings.collections]
    found = [e for name in names if (e := store.get(name, pid)) is not None]
    client.close()
    if not found:
        console.print(f"no dead-letter entry for {pid}")
        return 1
    for entry in found:
        console.print_json(json.dumps(_plain(entry)))
    return 0


def replay_entries(settings: Settings, collection: str | None, reason: str | None,
                   pids: list[str], console: Console) -> int:
    client, store = _store(settings)
    state_db = state_database(client, settings.staging)
    names = [collection] if collection else [c.name for c in settings.collections]
    failing = 0
    for name in names:
        if not any(True for _ in store.list(name, reason, limit=1)):
            continue
        job = start_replay(broker_app(settings), state_db, name,
                           home_queue(settings.collection(split_scope(name)[0])),
                           pids or None, reason)
        final = follow(console, lambda job=job: replay_progress(state_db, job), f"replay {name}",
                       REPLAY_TIMEOUT)
        if final is None:
            console.print(f"[red]replay of {name} did not finish (are workers running?)[/red]")
            failing += 1
            continue
        summary = final.get("summary", {})
        console.print(f"{name}: {summary.get('resolved', 0)} resolved, "
                      f"{summary.get('still_failing', 0)} still failing")
        failing += int(summary.get("still_failing", 0))
    client.close()
    return 1 if failing else 0


def purge_entries(settings: Settings, collection: str | None, pids: list[str] | None,
                  console: Console) -> int:
    client, store = _store(settings)
    if pids and not collection:
        console.print("[red]--id needs --collection[/red]")
        return 2
    removed = store.purge(collection, pids)
    client.close()
    console.print(f"purged {removed} dead-letter entr{'y' if removed == 1 else 'ies'}")
    return 0
