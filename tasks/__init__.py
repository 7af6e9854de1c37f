"""Writes staging: the Celery app and its tasks (`celery -A stagesync.tasks worker`).

Importing this package imports nothing: the watcher and the CLI use `stagesync.tasks.enqueue`
without loading Celery's app or any task. `celery -A stagesync.tasks` (and
`from stagesync.tasks import app`) asks this package for `app`, and only then is
`stagesync.tasks.celery_app` imported (PEP 562 module `__getattr__`). The worker imports the
task modules itself (`stagesync.tasks.celery_app.TASK_MODULES`).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from stagesync.tasks.celery_app import app

        return app
    raise AttributeError(f"module 'stagesync.tasks' has no attribute {name!r}")
