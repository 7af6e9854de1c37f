"""Worker start-up and fork hooks: logging, the safety guard, indexes, fresh clients per child.

The guard runs in the worker's main process before it consumes anything: a worker pointed at
production as its staging refuses to start, like the watcher.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import signals
from stagesync.deployments.guard import SameDeploymentError, assert_distinct_uris
from stagesync.deployments.production import ProductionReader
from stagesync.deployments.staging import connect_staging
from stagesync.deployments.staging_indexes import IndexConflictError
from stagesync.settings import load_settings
from stagesync.settings.logs import configure_logging
from stagesync.state.start_up import prepare_staging
from stagesync.tasks import metrics
from stagesync.tasks.environment_metrics import EnvironmentFigures, state_database_reader
from stagesync.tasks.runtime import reset_runtime

log = logging.getLogger("stagesync.worker")


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    configure_logging("worker")


@signals.worker_init.connect
def _check_deployments(**_: Any) -> None:
    settings = load_settings()
    try:
        assert_distinct_uris(settings)  # before any client exists, let alone asks a server
        production = ProductionReader(settings.prod)
        staging = connect_staging(settings.staging)
        try:
            prepare_staging(production, staging, settings)
        finally:
            production.close()
            staging.close()
    except (SameDeploymentError, IndexConflictError) as error:
        # Celery logs and ignores ordinary exceptions from signal handlers; this must stop it.
        raise SystemExit(f"stagesync: {error}") from None
    log.info("worker ready", extra={"collections": [c.name for c in settings.collections]})


@signals.worker_init.connect
def _serve_metrics(sender: Any = None, **_: Any) -> None:
    """One metrics endpoint for the whole worker, served by its main process: multiprocess
    mode is switched on here, before the pool forks (see tasks.metrics)."""
    settings = load_settings()
    config = settings.metrics
    if config.worker_port_base <= 0:
        return
    node = str(getattr(sender, "hostname", "") or f"pid{os.getpid()}")
    directory = metrics.worker_directory(config.worker_dir, node)
    metrics.enable_multiprocess(directory)
    metrics.serve_worker(config.worker_port_base, directory,
                         EnvironmentFigures(state_database_reader(settings)))


@signals.worker_process_init.connect
def _fresh_clients(**_: Any) -> None:
    reset_runtime()
    metrics.close_inherited_server()


@signals.worker_process_shutdown.connect
def _child_exits(**_: Any) -> None:
    metrics.mark_this_process_dead()
