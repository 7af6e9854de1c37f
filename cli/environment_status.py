"""The environments in `stagesync status`: state, expiry, documents, lag and dead letters.

Read through `state.environments.EnvironmentStore`, like `env list`, but cheaper: documents are
the estimated count of each environment copy (metadata, no scan: soft-deleted copies
included), as status shows the main staging's. An environment is written by the same apply
task right after the main staging, so its lag is the stream's lag of the collection; a frozen
one does not follow the stream (it holds still by design): no lag is shown for it.

The table keeps to one row per environment, to fit 100 columns with the main table above it;
`--wide` adds the sample, the creation time and the documents per collection. `--json` has it
all, per collection.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database
from rich.table import Table
from stagesync.protocol.names import scoped_name
from stagesync.rules.document import Document
from stagesync.settings.model import Settings
from stagesync.state.dead_letters import DeadLetterStore
from stagesync.state.environments import FROZEN, EnvironmentStore, environment_settings


def read_environments(settings: Settings, state_db: Database[Document],
                      client: MongoClient[Document], lags: Mapping[str, float],
                      estimate: Callable[[str, Callable[[], int]], int]) -> list[dict[str, Any]]:
    """Every listed environment; `lags` is the stream's lag per collection, `client` the
    deployment the environments live on, `estimate(key, read)` a cached size read."""
    dead_letters = DeadLetterStore(state_db)
    entries = []
    for environment in EnvironmentStore(state_db).all():
        follows = environment.state != FROZEN
        collections = {}
        for collection in settings.collections:
            copy = environment_settings(collection, environment)
            target = client[copy.target_db][copy.target_collection]
            collections[collection.name] = {
                "target": copy.target,
                "documents_estimate": estimate(f"environment:{environment.name}:"
                                               f"{collection.name}",
                                               target.estimated_document_count),
                "lag_seconds": lags.get(collection.name, 0.0) if follows else None,
                "dead_letters": dead_letters.count(scoped_name(collection.name,
                                                               environment.name)),
            }
        lagging = [c["lag_seconds"] for c in collections.values() if c["lag_seconds"] is not None]
        entries.append({
            "name": environment.name, "state": environment.state,
            "created_at": environment.created_at.isoformat(),
            "expires_at": environment.expires_at.isoformat() if environment.expires_at
            else None,
            "sample": environment.sample,
            "frozen_at": environment.frozen_at.isoformat() if environment.frozen_at else None,
            "thawing": environment.thaw_mode,
            "lag_seconds": max(lagging) if lagging else None,
            "documents_estimate": sum(c["documents_estimate"] for c in collections.values()),
            "dead_letters": sum(c["dead_letters"] for c in collections.values()),
            "collections": collections,
        })
    return entries


def environments_table(entries: Sequence[dict[str, Any]], wide: bool = False) -> Table:
    table = Table(title="environments")
    headers = ["environment", "state", "expires", "documents", "lag s", "dead"]
    if wide:
        headers += ["sample", "created", "per collection"]
    for header in headers:
        table.add_column(header, overflow="fold" if header in ("environment", "per collection")
                         else "ellipsis",
                         justify="right" if header in ("documents", "lag s", "dead")
                         else "left")
    for entry in entries:
        state = _state(entry["state"]) + (" thawing" if entry.get("thawing") else "")
        cells = [entry["name"], state, _moment(entry["expires_at"], "never"),
                 str(entry["documents_estimate"]),
                 "-" if entry["lag_seconds"] is None else f"{entry['lag_seconds']:.1f}",
                 str(entry["dead_letters"])]
        if wide:
            cells += ["-" if entry["sample"] is None else f"{entry['sample']:g}%",
                      _moment(entry["created_at"], "-"),
                      ", ".join(f"{name} {c['documents_estimate']}"
                                for name, c in entry["collections"].items())]
        table.add_row(*cells)
    return table


def _state(state: str) -> str:
    colour = {"live": "green", "frozen": "cyan"}.get(state, "yellow")
    return f"[{colour}]{state}[/{colour}]"


def _moment(iso: str | None, missing: str) -> str:
    """`2026-12-04 21:58` (UTC, as recorded): a lifetime is hours or days, not seconds."""
    return iso[:16].replace("T", " ") if iso else missing
