"""`read_oplog_window`: the oplog's time span, or why it cannot be known (never just None)."""

from __future__ import annotations

from typing import Any

from bson import Timestamp
from pymongo.errors import AutoReconnect, OperationFailure
from stagesync.deployments.production import read_oplog_window


class Oplog:
    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers

    def find_one(self, *_: Any, **__: Any) -> Any:
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def test_span_between_the_oldest_and_newest_entries() -> None:
    window = read_oplog_window(Oplog([{"ts": Timestamp(1000, 1)}, {"ts": Timestamp(4600, 9)}]))
    assert window.seconds == 3600 and window.unknown_because is None


def test_a_refused_read_names_the_missing_privilege() -> None:
    refused = OperationFailure("not authorized on local", code=13,
                               details={"code": 13, "codeName": "Unauthorized"})
    window = read_oplog_window(Oplog([refused]))
    assert window.seconds is None
    assert "may not read local.oplog.rs" in (window.unknown_because or "")


def test_other_failures_name_the_error_not_its_message() -> None:
    failure = OperationFailure("secret value in message", code=20,
                               details={"code": 20, "codeName": "IllegalOperation"})
    window = read_oplog_window(Oplog([failure]))
    assert window.unknown_because == "local.oplog.rs could not be read (20 IllegalOperation)"
    window = read_oplog_window(Oplog([AutoReconnect("down")]))
    assert window.unknown_because == "local.oplog.rs could not be read (AutoReconnect)"


def test_no_oplog_at_all() -> None:
    window = read_oplog_window(Oplog([None, None]))
    assert window.seconds is None and "no oplog" in (window.unknown_because or "")
