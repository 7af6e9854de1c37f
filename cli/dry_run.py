"""`stagesync watch --dry-run`: stream, plan the merges, print them, write nothing.

For onboarding a collection safely: the same change stream, and the real apply path
(`tasks.apply.applier.apply_changes`) in its plan-only mode, so the same masking, reference
translation, planning rounds and key hand-overs as a real sync; but no checkpoint, no lease,
no queue, no version taken, no staging write, nothing recorded in the state database. Each
planned write is printed with the field paths it would set, change or remove (never values).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

import bson
from rich.console import Console
from stagesync.deployments.production import ProductionReader
from stagesync.deployments.staging import connect_staging
from stagesync.rules.document import Document
from stagesync.rules.identity import encode_id
from stagesync.rules.merge import merge_fields
from stagesync.rules.paths import join_dotted, leaf_paths, set_path
from stagesync.rules.pii import Masker
from stagesync.rules.plan_types import PlannedWrite
from stagesync.rules.sync_meta import SYNC, read_meta
from stagesync.settings.collection import CollectionSettings
from stagesync.settings.model import Settings
from stagesync.state.database import state_database
from stagesync.tasks.apply.applier import apply_changes
from stagesync.tasks.apply.context import ApplyContext, PlanOnly
from stagesync.watcher.events import STREAM_PROJECTION, Change, classify

BATCH = 200
VERBS = {"created": "create", "updated": "update", "soft_deleted": "soft-delete",
         "tombstoned": "record a tombstone", "released": "release the business key of"}
IDLE_SECONDS = 0.05


def run_dry(settings: Settings, names: Sequence[str], console: Console) -> int:
    collections = [settings.collection(n) for n in names] if names else settings.collections
    production = ProductionReader(settings.prod)
    staging = connect_staging(settings.staging)
    state_db = state_database(staging, settings.staging)
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    contexts = {
        c.name: ApplyContext.build(
            c, Masker.from_settings(c, settings.secret_bytes()), production.collection(c),
            staging, state_db,
        )
        for c in collections
    }
    streams = {c.name: production.collection(c).watch(STREAM_PROJECTION) for c in collections}
    console.print(f"dry run: watching {', '.join(streams)}; nothing will be written "
                  "(Ctrl-C to stop)")
    try:
        while not stop.is_set():
            busy = False
            for collection in collections:
                changes = _drain(streams[collection.name])
                if changes:
                    busy = True
                    _show(console, contexts[collection.name], collection, changes)
            if not busy:
                stop.wait(IDLE_SECONDS)
    finally:
        for stream in streams.values():
            stream.close()
        production.close()
        staging.close()
    return 0


def _drain(stream: Any) -> dict[str, str]:
    changes: dict[str, str] = {}
    while len(changes) < BATCH:
        event = stream.try_next()
        if event is None:
            break
        action = classify(event)
        if isinstance(action, Change):
            changes[action.pid] = action.op
    return changes


def _show(console: Console, context: ApplyContext, collection: CollectionSettings,
          changes: dict[str, str]) -> None:
    plan = PlanOnly()
    result = apply_changes(context, changes, plan_only=plan)
    before = context.target.documents(write.staging_id for write in plan.writes)
    stamp = time.strftime("%H:%M:%S")

    def say(text: str) -> None:
        console.print(f"{stamp} {collection.name} would {text}", highlight=False)

    for write in plan.writes:
        current = before.get(encode_id(write.staging_id))
        say(_describe(write, current, plan.content.get(write.pid or ""), context))
    for letter in plan.dead_letters:
        say(f"dead-letter {letter.pid}: {letter.reason} ({letter.detail})")
    if result.outcomes["superseded"]:
        say(f"skip {result.outcomes['superseded']} change(s): staging holds a newer read")
    for pid in sorted(plan.replanned):
        say(f"re-plan {pid} after these writes (business key handed over)")


def _describe(write: PlannedWrite, current: Document | None,
              incoming: Document | None, context: ApplyContext) -> str:
    """What the write would change, field by field, from the merge it writes."""
    target = f"staging _id={write.staging_id}"
    if write.delete:
        return f"remove tombstone {target} (pid {write.pid})"
    if write.outcome in ("unchanged", "released"):
        return f"{VERBS.get(write.outcome, write.outcome)} {target} (pid {write.pid})"
    if write.document is not None:
        after = _body(write.document)
    elif incoming is not None and write.outcome != "soft_deleted":
        after, _ = merge_fields(current, incoming, read_meta(current).owned,
                                context.rules.fields)
    else:
        after = dict(_body(current))
        set_path(after, context.rules.soft_delete_field, True)
    before = {p: v for p, v in leaf_paths(_body(current))}
    flat_after = {p: v for p, v in leaf_paths(after)}
    added = sorted(join_dotted(p) for p in flat_after.keys() - before.keys())
    removed = sorted(join_dotted(p) for p in before.keys() - flat_after.keys())
    changed = sorted(join_dotted(p) for p in flat_after.keys() & before.keys()
                     if bson.encode({"v": flat_after[p]}) != bson.encode({"v": before[p]}))
    parts = [f"+{', +'.join(added)}" if added else "", f"~{', ~'.join(changed)}" if changed
             else "", f"-{', -'.join(removed)}" if removed else ""]
    fields = " ".join(part for part in parts if part) or "no field changes"
    return f"{VERBS.get(write.outcome, write.outcome)} {target} (pid {write.pid}): {fields}"


def _body(document: Document | None) -> Document:
    if not document:
        return {}
    return {k: v for k, v in document.items() if k not in ("_id", SYNC)}
