"""Server errors a real deployment raises, at each call site that can see them.

Only what the test server (SecantusDB) cannot produce is faked here: 280
ChangeStreamFatalError, 260 InvalidResumeToken, step-downs (NotPrimaryError) and a duplicate
key lost to a race at one exact moment. A fake stands in for one call (a change stream, one
bulk write); the rest is real: staging, Redis, a Celery app publishing to Redis, the watcher's
own loop. Each must lead to the documented behaviour: a stream that cannot go on -> say so,
full resync, stream again from a fresh token; a step-down under the stream -> resume from the
checkpoint, no resync; a racing duplicate key -> re-plan; a step-down under a bulk write -> a
transient error the task retries.

Tested for real elsewhere, against the server: 286 ChangeStreamHistoryLost
(test_stream_history.py), 9 for an unreadable stored token (test_resume_token_errors.py), and
drop, rename and database drop, each followed by `invalidate` (test_collection_lifecycle.py),
and a connection lost to a server killed and restarted (test_server_restarts.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from bson import ObjectId
from celery import Celery
from pymongo.errors import BulkWriteError, NotPrimaryError, OperationFailure
from stagesync.deployments.failures import is_transient
from stagesync.deployments.production import ProductionReader
from stagesync.deployments.staging import connect_staging
from stagesync.deployments.staging_indexes import ensure_indexes
from stagesync.protocol.names import RESYNCS
from stagesync.rules.identity import encode_id
from stagesync.rules.pii import Masker
from stagesync.tasks.apply.applier import apply_changes
from stagesync.tasks.apply.context import ApplyContext
from stagesync.tasks.celery_options import celery_options
from stagesync.watcher.stream import CollectionWatcher, WatcherLinks, oplog_window_read

from tests.support.pipeline import Pipeline, wait_for

TOKEN = {"_data": "826B0000000000000002"}

Opening = Callable[[dict[str, Any] | None], "FakeStream"]


class FakeStream:
    """A change stream scripted step by step: events to return, or errors to raise."""

    def __init__(self, script: list[Any], token: dict[str, Any]) -> None:
        self.script = list(script)
        self.resume_token = token

    def try_next(self) -> dict[str, Any] | None:
        if not self.script:
            return None
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        self.resume_token = step["_id"]
        return dict(step)

    def close(self) -> None:
        pass


class FakeSource:
    """Stands in for the production collection's `watch()`: one script per opening."""

    def __init__(self, openings: list[Opening]) -> None:
        self.openings = list(openings)
        self.opened_with: list[dict[str, Any] | None] = []

    def watch(self, pipeline: Any, *, resume_after: Any = None, **_: Any) -> FakeStream:
        self.opened_with.append(resume_after)
        opening = self.openings.pop(0) if len(self.openings) > 1 else self.openings[0]
        return opening(resume_after)


def fresh(token: dict[str, Any], script: list[Any] | None = None) -> Opening:
    return lambda _resume: FakeStream(script or [], token)


def history_lost(code: int) -> Opening:
    def opening(resume: dict[str, Any] | None) -> FakeStream:
        if resume is not None:
            raise OperationFailure("resume point may no longer be in the oplog", code=code)
        return FakeStream([], {"_data": "fresh"})
    return opening


def event(operation: str, **fields: Any) -> dict[str, Any]:
    return {"_id": {"_data": f"ev-{operation}-{time.monotonic_ns()}"},
            "operationType": operation, **fields}


@pytest.fixture
def watcher_factory(
    pipeline: Pipeline,
) -> Iterator[Callable[[FakeSource], tuple[CollectionWatcher, Any]]]:
    settings = pipeline.settings
    # A Celery app of its own: the package's app reads its configuration once per process.
    celery_app = Celery("conformance")
    celery_app.conf.update(celery_options(settings))
    production = ProductionReader(settings.prod)
    staging = connect_staging(settings.staging)
    ensure_indexes(staging, settings)
    client = redis.Redis.from_url(settings.redis_url)
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def make(source: FakeSource) -> tuple[CollectionWatcher, Any]:
        links = WatcherLinks(production, staging[settings.staging.state_db], client,
                             celery_app, "conformance", stop,
                             oplog_window_read(production, settings))
        watcher = CollectionWatcher(settings, settings.collections[0],
                                    source, links)  # type: ignore[arg-type]
        thread = threading.Thread(target=watcher.run, daemon=True)
        thread.start()
        threads.append(thread)
        return watcher, staging[settings.staging.state_db]

    yield make
    stop.set()
    for thread in threads:
        thread.join(20)
    production.close()
    staging.close()
    client.close()


def resync_reasons(state: Any) -> list[str]:
    return [doc["reason"] for doc in state[RESYNCS].find({"kind": "resync"})]


def seed_checkpoint(state: Any, name: str) -> None:
    state["watchers"].insert_one({"_id": name, "token": TOKEN, "owner": None, "leaseUntil": 0})


# 280 ChangeStreamFatalError and 260 InvalidResumeToken are as final as a lost history when the
# stream is opened from a stored token.
@pytest.mark.parametrize("code", [280, 260])
def test_history_lost_on_resume_starts_a_resync_from_a_fresh_token(
    pipeline: Pipeline, watcher_factory: Any, code: int
) -> None:
    name = pipeline.collections[0]["name"]
    seed_checkpoint(pipeline.state(), name)
    source = FakeSource([history_lost(code)])
    watcher, state = watcher_factory(source)
    wait_for(lambda: resync_reasons(state), 20, "resync started")
    reason = resync_reasons(state)[0]
    assert f"code {code}" in reason and "history lost" in reason
    wait_for(lambda: (r := state["watchers"].find_one({"_id": name}))
             and r["token"] == {"_data": "fresh"} and r.get("resyncPending"), 20,
             "fresh checkpoint, resync pending")
    assert source.opened_with[0] == TOKEN and None in source.opened_with[1:]
    assert "history lost" in (watcher.last_error or "")


@pytest.mark.parametrize("ending", [
    OperationFailure("fatal", code=280), OperationFailure("invalid resume token", code=260),
])
def test_fatal_errors_mid_stream_start_a_resync(
    pipeline: Pipeline, watcher_factory: Any, ending: OperationFailure
) -> None:
    name = pipeline.collections[0]["name"]
    seed_checkpoint(pipeline.state(), name)
    source = FakeSource([fresh(TOKEN, [ending]), fresh({"_data": "after"})])
    _, state = watcher_factory(source)
    reasons = wait_for(lambda: resync_reasons(state), 20, "resync started")
    assert len(reasons) == 1, reasons
    assert f"code {ending.code}" in reasons[0] and "history lost" in reasons[0], reasons
    wait_for(lambda: (state["watchers"].find_one({"_id": name}) or {}).get("token")
             == {"_data": "after"}, 20, "streaming again from a fresh token")


# A connection lost to a server restart is tested for real in test_server_restarts.py.
def test_a_step_down_mid_stream_resumes_from_the_checkpoint_without_a_resync(
    pipeline: Pipeline, watcher_factory: Any
) -> None:
    name = pipeline.collections[0]["name"]
    seed_checkpoint(pipeline.state(), name)
    pid = ObjectId()
    source = FakeSource([
        fresh(TOKEN, [NotPrimaryError("not primary")]),
        fresh(TOKEN, [event("insert", documentKey={"_id": pid})]),
    ])
    _, state = watcher_factory(source)
    client = redis.Redis.from_url(pipeline.redis_url)
    wait_for(lambda: client.llen(f"stagesync.{name}") >= 1, 30,
             "the change enqueued after reconnecting")
    assert source.opened_with[:2] == [TOKEN, TOKEN]  # resumed, not restarted
    assert resync_reasons(state) == []


def test_a_duplicate_key_race_is_replanned_and_a_step_down_is_transient(
    pipeline: Pipeline,
) -> None:
    settings = pipeline.settings
    collection = settings.collections[0]
    production = ProductionReader(settings.prod)
    staging = connect_staging(settings.staging)
    ensure_indexes(staging, settings)
    state = staging[settings.staging.state_db]
    context = ApplyContext.build(collection, Masker({}, b""), production.collection(collection),
                                 staging, state,)
    pid = pipeline.prod().insert_one({"userEmail": "r@corp.test", "accountId": 1}).inserted_id
    real = context.target.collection
    calls: list[int] = []

    class RacingCollection:
        """The staging collection, whose first bulk write loses a race the way MongoDB
        reports it: another apply inserted the same document between our read and our
        write, and the server answers 11000 on stagesync's pid index."""

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def bulk_write(self, operations: Any, ordered: bool = True) -> Any:
            calls.append(len(operations))
            if len(calls) == 1:
                real.bulk_write(operations, ordered=ordered)  # lands for "the other apply"
                raise BulkWriteError({"writeErrors": [{
                    "index": 0, "code": 11000, "keyPattern": {"_sync.pid": 1},
                    "keyValue": {"_sync.pid": encode_id(pid)},
                    "errmsg": "E11000 duplicate key error"}],
                    "nInserted": 0, "nMatched": 0, "nRemoved": 0, "nUpserted": 0})
            return real.bulk_write(operations, ordered=ordered)

    class SteppingDown(RacingCollection):
        def bulk_write(self, operations: Any, ordered: bool = True) -> Any:
            raise OperationFailure("not writable primary", code=10107)

    try:
        context.target.collection = RacingCollection()  # type: ignore[assignment]
        result = apply_changes(context, {encode_id(pid): "insert"})
        assert len(calls) >= 2 and result.dead_letters == []  # re-planned, not dead-lettered
        assert pipeline.staging().count_documents({}) == 1

        context.target.collection = SteppingDown()  # type: ignore[assignment]
        pipeline.prod().update_one({"_id": pid}, {"$set": {"total": 1}})
        with pytest.raises(OperationFailure) as raised:
            apply_changes(context, {encode_id(pid): "update"})
        assert is_transient(raised.value)  # the task retries it with backoff
    finally:
        production.close()
        staging.close()
