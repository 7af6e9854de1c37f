"""Writes staging: the Celery app and its tasks (`celery -A tasks worker`).

Importing this package imports nothing: the watcher and the CLI use `tasks.enqueue` without
loading Celery's app or any task. `celery -A tasks` (and `from tasks import app`) asks this
package for `app`, and only then is `tasks.celery_app` imported (PEP 562 module `__getattr__`).
The worker imports the task modules itself (`tasks.celery_app.TASK_MODULES`).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from tasks.celery_app import app

        return app
    raise AttributeError(f"module 'tasks' has no attribute {name!r}")
