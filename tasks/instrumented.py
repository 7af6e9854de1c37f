"""The one decorator of every stagesync task, as Sentry's `instrumented_task` is of theirs.

A task is named explicitly (the names live in `protocol.names`, where the watcher and the CLI
send them from), bound (its body reads `self.request`), and timed by outcome in
`stagesync_task_seconds`, which Flower does not keep. Delivery guarantees are the app's, set
once in `celery_options` for every task (late acks, requeue when a worker is lost, one message
reserved per process): no task repeats or overrides them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from celery import Task
from celery.exceptions import Retry
from stagesync.tasks import metrics
from stagesync.tasks.celery_app import app

P = ParamSpec("P")
R = TypeVar("R")


def stagesync_task(
    name: str, **options: Any
) -> Callable[[Callable[Concatenate[Task, P], R]], Task]:
    """Register `function` as the task `name`; `options` are Celery's task options."""

    def register(function: Callable[Concatenate[Task, P], R]) -> Task:
        @functools.wraps(function)
        def run(self: Task, *args: P.args, **kwargs: P.kwargs) -> R:
            began = time.monotonic()
            outcome = "failed"
            try:
                result = function(self, *args, **kwargs)
                outcome = "done"
                return result
            except Retry:
                outcome = "retried"
                raise
            finally:
                metrics.TASK_SECONDS.labels(name, outcome).observe(time.monotonic() - began)

        return app.task(name=name, bind=True, **options)(run)

    return register
