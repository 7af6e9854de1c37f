"""Which failures are retried (the infrastructure's) and which isolate a change (the data's)."""

from __future__ import annotations

import pytest
import redis
from pymongo.errors import (
    AutoReconnect,
    DuplicateKeyError,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    ServerSelectionTimeoutError,
)
from stagesync.deployments.failures import is_transient
from stagesync.state.versions import VersionCounterError
from stagesync.tasks.apply.context import ContentionError, WriteErrors
from stagesync.tasks.apply.staging_io import _on_sync_index
from stagesync.tasks.apply_batch import _backoff


@pytest.mark.parametrize("error", [
    AutoReconnect("reset"), NetworkTimeout("slow"), NotPrimaryError("stepped down"),
    ServerSelectionTimeoutError("no primary"),
    *(OperationFailure("server said", code=code)
      for code in (6, 7, 89, 91, 189, 9001, 10107, 11600, 11602, 13435, 13436, 43, 175)),
    OperationFailure("x", code=1, details={"errorLabels": ["RetryableWriteError"]}),
    redis.ConnectionError("down"), redis.TimeoutError("slow"),
    ContentionError("busy"), VersionCounterError("no value"), TimeoutError("rate limit"),
])
def test_infrastructure_failures_are_retried(error: BaseException) -> None:
    assert is_transient(error)


@pytest.mark.parametrize("error", [
    DuplicateKeyError("E11000", code=11000),
    OperationFailure("validation", code=121),
    OperationFailure("history lost", code=286),  # the watcher's to handle, not a retry
    OperationFailure("fatal", code=280),
    WriteErrors({"p": "code 121: Document failed validation"}),
    ValueError("a bug"), KeyError("field"),
])
def test_data_failures_are_isolated_not_retried_forever(error: BaseException) -> None:
    assert not is_transient(error)


@pytest.mark.parametrize(("failure", "race"), [
    ({"code": 11000, "keyPattern": {"_sync.pid": 1}, "errmsg": "E11000"}, True),
    ({"code": 11000, "keyPattern": {"_sync.key": 1}, "errmsg": "E11000"}, True),
    ({"code": 11000, "keyPattern": {"_id": 1}, "errmsg": "E11000"}, True),
    ({"code": 11000, "keyPattern": {"code": 1}, "errmsg": "E11000"}, False),
    ({"code": 11000, "errmsg": "E11000 duplicate key error collection: s.o index: "
      "stagesync_key dup key: { _sync.key: \"ab\" }"}, True),
    ({"code": 11000, "errmsg": "E11000 duplicate key error collection: s.o index: _id_ "
      "dup key: { _id: 1 }"}, True),
    ({"code": 11000, "errmsg": "E11000 duplicate key error collection: s.o index: "
      "qa_unique_code dup key: { code: 7 }"}, False),
    ({"code": 11000, "errmsg": "UNIQUE constraint failed: index 'idx_orders__sync_pid'"}, True),
    ({"code": 11000, "errmsg": "UNIQUE constraint failed: index 'idx_orders_code'"}, False),
])
def test_duplicate_keys_on_stagesync_indexes_are_races(failure: dict[str, object],
                                                        race: bool) -> None:
    assert _on_sync_index(failure) is race


def test_retry_backoff_stays_below_its_cap() -> None:
    for attempt in range(20):
        assert 0.1 <= _backoff(attempt, 60.0) <= 60.0
