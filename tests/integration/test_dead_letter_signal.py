"""The dead-letter clear that applies skip (issue 31), under the races it must survive.

An apply that found the collection's dead letters settled skips its clear. A dead letter that
another worker records for one of its documents after it took its version, from an older read,
must still end resolved once the apply lands that document, whether the entry comes between
the apply's read and its write or after its write (`state.dead_letters`, the signal). The
interleavings are made by recording the entry from inside the apply's bulk write, in the same
process, against the real server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from stagesync.deployments.production import ProductionReader
from stagesync.deployments.staging import connect_staging
from stagesync.deployments.staging_indexes import ensure_indexes
from stagesync.rules.identity import encode_id
from stagesync.rules.pii import Masker
from stagesync.state.dead_letters import OPEN, RESOLVED, SIGNAL_GRACE, DeadLetterEntry
from stagesync.state.versions import take_version
from stagesync.tasks.apply.applier import apply_changes
from stagesync.tasks.apply.context import ApplyContext

from tests.support.pipeline import Pipeline


@pytest.fixture
def context(pipeline: Pipeline) -> Iterator[ApplyContext]:
    settings = pipeline.settings
    collection = settings.collections[0]
    production = ProductionReader(settings.prod)
    staging = connect_staging(settings.staging)
    ensure_indexes(staging, settings)
    yield ApplyContext.build(collection, Masker({}, b""), production.collection(collection),
                             staging, staging[settings.staging.state_db])
    production.close()
    staging.close()


def held_copy(pipeline: Pipeline, context: ApplyContext) -> str:
    """A production document with its copy in staging, and the signal settled (clean)."""
    pid = encode_id(pipeline.prod().insert_one(
        {"userEmail": "d@x", "accountId": 1, "n": 0}).inserted_id)
    apply_changes(context, {pid: "insert"})
    assert context.dead_letters.settle(context.name)
    return pid


def record_during_write(context: ApplyContext, monkeypatch: pytest.MonkeyPatch,
                        entry: Callable[[], DeadLetterEntry], before: bool) -> None:
    """Record `entry` just before (or just after) the apply's first bulk write."""
    real = context.target.execute
    calls = []

    def execute(writes: Any, marks: Any = None) -> Any:
        calls.append(1)
        if before and len(calls) == 1:
            context.dead_letters.record([entry()])
        report = real(writes, marks)
        if not before and len(calls) == 1:
            context.dead_letters.record([entry()])
        return report

    monkeypatch.setattr(context.target, "execute", execute)


@pytest.mark.parametrize("before", [True, False], ids=["between-read-and-write", "after-write"])
def test_an_older_dead_letter_recorded_during_an_apply_ends_resolved(
        pipeline: Pipeline, context: ApplyContext, monkeypatch: pytest.MonkeyPatch,
        before: bool) -> None:
    pid = held_copy(pipeline, context)
    # Another worker's apply read production before ours (an older version) and gave up.
    older = take_version(context.state_db, context.name)
    record_during_write(context, monkeypatch, lambda: DeadLetterEntry(
        collection=context.scope, pid=pid, op="update", reason="apply_error",
        error="from an older read", version=older), before)
    pipeline.prod().update_one({}, {"$set": {"n": 1}})

    result = apply_changes(context, {pid: "update"})

    assert result.outcomes["updated"] == 1 and result.version > older
    entry = context.dead_letters.entries.find_one({"pid": pid})
    assert entry is not None and entry["state"] == RESOLVED, entry
    copy = pipeline.staging().find_one({"_sync.pid": pid})
    assert copy is not None and copy["n"] == 1
    if before:
        # The mark made our first write lose its race; the second one read it and dropped it.
        assert result.rounds == 2 and "dl" not in copy["_sync"]


def test_a_newer_dead_letter_stays_open_until_a_newer_apply(
        pipeline: Pipeline, context: ApplyContext, monkeypatch: pytest.MonkeyPatch) -> None:
    """A verdict from a later read than the apply's is not the apply's to resolve: it stays
    open. No apply holding a newer version can have skipped its clear, so the copy needs no
    mark; the signal makes the next applies clear, and the next one resolves it."""
    pid = held_copy(pipeline, context)
    record_during_write(context, monkeypatch, lambda: DeadLetterEntry(
        collection=context.scope, pid=pid, op="update", reason="apply_error",
        error="from a later read",
        version=take_version(context.state_db, context.name)), True)
    pipeline.prod().update_one({}, {"$set": {"n": 1}})

    result = apply_changes(context, {pid: "update"})

    entry = context.dead_letters.entries.find_one({"pid": pid})
    assert entry is not None and entry["state"] == OPEN and entry["version"] > result.version
    copy = pipeline.staging().find_one({"_sync.pid": pid})
    assert copy is not None and "dl" not in copy["_sync"]

    monkeypatch.undo()
    pipeline.prod().update_one({}, {"$set": {"n": 2}})
    apply_changes(context, {pid: "update"})
    entry = context.dead_letters.entries.find_one({"pid": pid})
    assert entry is not None and entry["state"] == RESOLVED
    copy = pipeline.staging().find_one({"_sync.pid": pid})
    assert copy is not None and copy["n"] == 2 and "dl" not in copy["_sync"]


def test_settle_waits_for_open_entries_and_recent_records(
        pipeline: Pipeline, context: ApplyContext) -> None:
    pid = held_copy(pipeline, context)
    store = context.dead_letters
    version = take_version(context.state_db, context.name)
    store.record([DeadLetterEntry(collection=context.scope, pid=pid, op="update",
                                  reason="apply_error", error="x", version=version)])
    later = datetime.now(UTC) + SIGNAL_GRACE + timedelta(seconds=1)
    assert not store.settle(context.name)  # recorded just now
    assert not store.settle(context.name, now=later)  # still open
    store.clear(context.scope, [pid], older_than=version + 1)
    assert not store.settle(context.name)  # resolved, but a record() may still be writing
    assert store.settle(context.name, now=later)
