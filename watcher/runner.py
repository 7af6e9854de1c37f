"""The `stagesync watch` process: checks, then one streaming thread per collection.

Start-up refuses to run when staging is production under another name, and creates the
indexes the sync relies on. SIGTERM or SIGINT stops every stream cleanly: in-flight work gets a
short grace period, the checkpoint is saved, and the leases are released so a standby takes
over at once.
"""

from __future__ import annotations

import logging
import signal
import threading
import uuid
from collections.abc import Sequence
from types import FrameType
from typing import Any

import redis
from prometheus_client import start_http_server
from pymongo import MongoClient
from pymongo.errors import PyMongoError
from stagesync.deployments.failures import describe_error
from stagesync.deployments.guard import assert_distinct_uris
from stagesync.deployments.production import ProductionReader
from stagesync.deployments.staging import connect_staging
from stagesync.settings.model import Settings
from stagesync.state.database import state_database
from stagesync.state.start_up import prepare_staging
from stagesync.tasks.enqueue import broker_app
from stagesync.watcher.stream import CollectionWatcher, WatcherLinks, oplog_window_read

log = logging.getLogger("stagesync.watcher")


def run_watcher(settings: Settings, names: Sequence[str] = ()) -> int:
    collections = [settings.collection(n) for n in names] if names else settings.collections
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    assert_distinct_uris(settings)  # before any client exists, let alone asks a server
    production = ProductionReader(settings.prod)
    staging = connect_staging(settings.staging)
    try:
        if not _prepare(settings, production, staging, stop):
            return 0
        redis_client = redis.Redis.from_url(settings.redis_url, socket_timeout=30)
        if settings.metrics.watcher_port:
            start_http_server(settings.metrics.watcher_port, addr="0.0.0.0")
        run_id = uuid.uuid4().hex[:12]
        links = WatcherLinks(production, state_database(staging, settings.staging), redis_client,
                             broker_app(settings), run_id, stop,
                             oplog_window_read(production, settings))
        threads = []
        for collection in collections:
            watcher = CollectionWatcher(settings, collection, production.collection(collection),
                                        links)
            thread = threading.Thread(target=watcher.run, name=f"watch-{collection.name}",
                                      daemon=True)
            thread.start()
            threads.append(thread)
        log.info("watcher started", extra={"run": run_id,
                                           "collections": [c.name for c in collections]})
        while any(thread.is_alive() for thread in threads):
            for thread in threads:
                thread.join(timeout=0.5)
        links.oplog_window.close()
        redis_client.close()
        log.info("watcher stopped", extra={"run": run_id})
        return 0
    finally:
        production.close()
        staging.close()


def _prepare(
    settings: Settings, production: ProductionReader, staging: MongoClient[dict[str, Any]],
    stop: threading.Event,
) -> bool:
    """The safety guard and the indexes, retried while a server is unreachable (a watcher
    started before its databases waits for them instead of dying). False when stopped."""
    attempt = 0
    while not stop.is_set():
        try:
            prepare_staging(production, staging, settings)
            return True
        except PyMongoError as error:
            attempt += 1
            pause = min(30.0, 2.0**attempt)
            log.error("MongoDB not reachable yet, retrying",
                      extra={"error": describe_error(error), "retry_in": pause})
            stop.wait(pause)
    return False
