"""A chunk task's hand-on (`tasks.resync.hand_on`) never drops its message: when the soft time
limit fires while the new message is published, Celery's retry rejects the running message
without requeue; the hand-on puts it back instead, so the chunk it holds is taken back."""

from __future__ import annotations

from typing import Any

import pytest
from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded
from stagesync.tasks.resync import hand_on


class Task:
    """What `hand_on` asks of a Celery task: `retry`, as Celery's behaves when its publish
    raises (`Reject(exc, requeue=False)`) or succeeds (`Retry`)."""

    def __init__(self, publish_error: BaseException | None) -> None:
        self.publish_error = publish_error
        self.calls: list[dict[str, Any]] = []

    def retry(self, **options: Any) -> Retry:
        self.calls.append(options)
        if self.publish_error is not None:
            raise Reject(self.publish_error, requeue=False)
        raise Retry("handed on", when=options["countdown"])


def test_a_hand_on_that_publishes_raises_retry_with_the_chunk_s_arguments() -> None:
    task = Task(None)
    with pytest.raises(Retry):
        hand_on(task, ["orders", "r1", 3, "copy"], countdown=0)  # type: ignore[arg-type]
    assert task.calls == [{"args": ["orders", "r1", 3, "copy"], "exc": None, "countdown": 0,
                           "max_retries": None}]


def test_the_soft_time_limit_during_the_publish_requeues_the_message() -> None:
    with pytest.raises(Reject) as rejected:
        hand_on(Task(SoftTimeLimitExceeded()), ["orders", "r1", 3, "copy"],  # type: ignore[arg-type]
                countdown=0)
    assert rejected.value.requeue is True
    assert isinstance(rejected.value.reason, SoftTimeLimitExceeded)


def test_another_publish_failure_is_rejected_as_celery_decides() -> None:
    with pytest.raises(Reject) as rejected:
        hand_on(Task(ConnectionError("broker gone")), ["orders", "r1", 3, "copy"],  # type: ignore[arg-type]
                countdown=5, error=TimeoutError())
    assert rejected.value.requeue is False
