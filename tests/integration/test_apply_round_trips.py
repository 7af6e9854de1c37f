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
from stagesync.deployments.staging import connect_staging
from stagesync.deployments.staging_indexes import ensure_indexes
from stagesync.protocol.names import DEAD_LETTERS, ENVIRONMENTS, RUNTIME
from stagesync.protocol.parts import WHOLE
from stagesync.rules.identity import encode_id
from stagesync.state.dead_letters import DeadLetterStore
from stagesync.tasks import runtime as runtime_module

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
