"""Read by Celery the first time it needs its configuration (see `tasks.celery_app`)."""

from stagesync.settings import ConfigError, load_settings
from stagesync.tasks.celery_options import celery_options

try:
    globals().update(celery_options(load_settings()))
except ConfigError as error:  # a worker without a usable config must say why and stop
    raise SystemExit(f"stagesync: {error}") from None
