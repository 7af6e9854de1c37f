"""Writes staging: the Celery app and its tasks (`celery -A tasks worker`).

The worker imports the task modules itself (`tasks.app.TASK_MODULES`); importing this package
only creates the app, so the watcher and the CLI can use the room's modules freely.
"""

from tasks.app import app

__all__ = ["app"]
