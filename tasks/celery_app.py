"""The Celery app. `celery -A stagesync.tasks worker` finds it as `stagesync.tasks.celery_app`.

Its configuration is read lazily from `stagesync.tasks.celeryconfig`, which loads the stagesync
settings (`STAGESYNC_CONFIG`), so importing this package costs nothing and needs no
configuration. The task modules are listed in `include`: a worker imports them at start-up,
before its logging and `worker_init` hooks run, while publishers (the watcher, the CLI) send
tasks by name and need none of them.
"""

from __future__ import annotations

from celery import Celery

TASK_MODULES = [
    "stagesync.tasks.worker_signals",
    "stagesync.tasks.apply_batch",
    "stagesync.tasks.resync",
    "stagesync.tasks.replay",
    "stagesync.tasks.maintenance",
    "stagesync.tasks.environment_thaw",
]

app = Celery("stagesync", include=TASK_MODULES)
app.config_from_object("stagesync.tasks.celeryconfig")
