"""Staging round trips of one apply on the common path, counted by pymongo's command monitoring.

The common path (issue 31): a batch of updates to documents staging already holds, with no dead
letter open. It runs through the real task (`apply_batch`, in this process) against the test
server; a `CommandListener` on the worker's staging client counts every command it sends.
The per-process caches of the task (the environments and the rate-limit override, read at most
once a second or two) are left out: they are not per apply.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from bson import ObjectId
from stagesync.deployments.staging import connect_staging
from stagesync.deployments.staging_indexes import ensure_indexes
from stagesync.protocol.names import DEAD_LETTERS, ENVIRONMENTS, RUNTIME
from stagesync.protocol.parts import WHOLE
from stagesync.rules.identity import FIRST_OBJECT_ID, LAST_OBJECT_ID, encode_id
from stagesync.state.dead_letters import DeadLetterStore
from stagesync.state.versions import take_version
from stagesync.tasks import runtime as runtime_module
from stagesync.tasks.apply.applier import ApplyOptions, apply_documents

from tests.support.commands import CommandLog
from tests.support.pipeline import Pipeline, collection_config

# The version, one view read and the bulk write. Before issue 31 the view read was followed by
# an empty getMore, and the dead-letter clear came after the write: five.
COMMON_PATH_MAX = 3
# Read by the task's per-process caches, not by each apply.
CACHED = {ENVIRONMENTS, RUNTIME}


class StagingCommands(CommandLog):
    """Every command the worker's staging client starts: (name, collection)."""

    def per_apply(self) -> list[tuple[str, str]]:
        return [command for command in self.commands if command[1] not in CACHED]


@pytest.fixture
def worker_staging(pipeline_factory: Any, monkeypatch: pytest.MonkeyPatch
                   ) -> Iterator[tuple[Pipeline, StagingCommands]]:
    """A pipeline with no processes; its worker runtime built in this process, its staging
    client listened to."""
    pipeline: Pipeline = pipeline_factory([collection_config("orders")])
    listener = StagingCommands()

    def listened(settings: Any, **options: Any) -> Any:
        return connect_staging(settings, event_listeners=[listener], **options)

    monkeypatch.setenv("STAGESYNC_CONFIG", str(pipeline.config_path))
    monkeypatch.setattr(runtime_module, "connect_staging", listened)
    runtime_module.reset_runtime()
    staging = connect_staging(pipeline.settings.staging)
    ensure_indexes(staging, pipeline.settings)
    staging.close()
    yield pipeline, listener
    runtime_module.reset_runtime()


def apply(pipeline: Pipeline, pids: list[Any], op: str) -> None:
    name = pipeline.collections[0]["name"]
    changes = [[encode_id(pid), op] for pid in pids]
    # Imported here: defining the task loads Celery's configuration (STAGESYNC_CONFIG).
    from stagesync.tasks.apply_batch import apply_batch

    result = apply_batch.apply(args=[name, None, WHOLE.wire, changes])
    result.get(disable_sync_subtasks=False)  # raises what the task raised


def test_an_update_batch_of_held_documents_takes_three_staging_round_trips(
        worker_staging: tuple[Pipeline, StagingCommands]) -> None:
    pipeline, listener = worker_staging
    prod = pipeline.prod()
    pids = prod.insert_many([{"userEmail": f"u{i}@x", "accountId": i, "n": 0}
                             for i in range(50)]).inserted_ids
    apply(pipeline, pids, "insert")  # creates the copies (and warms the worker up)
    prod.update_many({}, {"$set": {"n": 1}})
    apply(pipeline, pids, "update")

    # What the watcher does every few seconds: no dead letter is open, the signal is clean.
    assert DeadLetterStore(pipeline.state()).settle(pipeline.collections[0]["name"])
    prod.update_many({}, {"$inc": {"n": 1}})
    listener.clear()
    apply(pipeline, pids, "update")

    commands = listener.per_apply()
    print(f"staging commands of one common-path apply: {len(commands)}: {commands}")
    assert len(commands) <= COMMON_PATH_MAX, commands
    assert [doc["n"] for doc in pipeline.staging().find()] == [2] * len(pids)
    assert pipeline.state()[DEAD_LETTERS].count_documents({}) == 0



def test_a_resync_batch_reads_its_span_of_copies_with_one_query(
        worker_staging: tuple[Pipeline, StagingCommands]) -> None:
    """A batch of ObjectIds and the copies beside it in its span of `_sync.pid`, in one
    query where lists of `in_list_max` (the tests' 200) took three."""
    pipeline, listener = worker_staging
    ids = sorted(ObjectId() for _ in range(451))
    prod = pipeline.prod()
    prod.insert_many([{"_id": value, "userEmail": f"u{n}@x", "accountId": n, "n": 0}
                      for n, value in enumerate(ids)])
    apply(pipeline, ids, "insert")
    gone = ids[200]
    prod.delete_one({"_id": gone})  # its copy stays, in the batch's span
    runtime = runtime_module.get_runtime()
    context = runtime.context(pipeline.collections[0]["name"])
    version = take_version(runtime.state_db, context.name)
    batch = {encode_id(doc["_id"]): context.masker.mask(doc)
             for doc in context.production.find({}, sort=[("_id", 1)])}
    listener.clear()
    result = apply_documents(context, version, dict(batch), dict.fromkeys(batch, "resync"),
                             ApplyOptions(compare_content=True, write_unchanged=False,
                                          pid_span={"$gte": FIRST_OBJECT_ID,
                                                    "$lte": LAST_OBJECT_ID}))
    target = context.target.collection.name
    assert listener.commands.count(("find", target)) == 1, listener.commands
    assert dict(+result.outcomes) == {"unchanged": 450}
    assert set(result.others) == {encode_id(gone)}
