"""While every worker is busy and the only buffered changes are held back for batches in
flight, the watcher waits for a done report on Redis instead of polling production
(`watcher.loop.StreamLoop._await_done`); the held change goes out as soon as the report
comes.

Real processes: `stagesync watch` and a Celery worker, Redis, the test server; production is
reached through an in-process counting proxy (`bench.delay_proxy`, no delay) so that the
watcher's getMores can be counted from outside it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pymongo.uri_parser import parse_uri
from stagesync.protocol.names import APPLY_BATCH, queue_names, stats_key
from stagesync.protocol.routing import PRIORITY_SUFFIXES

from bench.delay_proxy import DelayProxy
from tests.support.backends import MongoPair
from tests.support.pipeline import Pipeline, collection_config, wait_for

TIMEOUT = 45


@pytest.fixture
def counted_prod(mongo_pair: MongoPair) -> Iterator[tuple[DelayProxy, str]]:
    host, port = parse_uri(mongo_pair.prod_uri)["nodelist"][0]
    proxy = DelayProxy(host, port, delay=0.0)
    listen = proxy.start()
    yield proxy, f"mongodb://127.0.0.1:{listen}/?directConnection=true"
    proxy.stop()


def get_mores(proxy: DelayProxy) -> int:
    return sum(n for command, n in list(proxy.commands.items())
               if command.startswith("getMore"))


def queued(rds: redis.Redis, name: str) -> list[str]:
    """The task names of the messages waiting in the collection's queue."""
    return [json.loads(message)["headers"].get("task")
            for queue in queue_names(name, 1) for suffix in PRIORITY_SUFFIXES
            for message in rds.lrange(queue + suffix, 0, -1)]


def batches_queued(rds: redis.Redis, name: str) -> int:
    """Apply batches waiting in the collection's queue. Only those: the bootstrap's worker is
    stopped as soon as its resync records itself done, and the SIGTERM reaches its whole
    process group, the pool child too; a child that had not returned from the resync task
    yet dies, and its message goes back to the queue (late acks, `task_reject_on_worker_lost`;
    run again, the task finds its resync done). Under load that happened in CI: the leftover
    message let the wait for the insert's batch pass before the batch was published."""
    return queued(rds, name).count(APPLY_BATCH)


def test_held_changes_wait_for_a_done_report_not_for_production(
        pipeline_factory: Any, redis_url: str, counted_prod: tuple[DelayProxy, str]) -> None:
    proxy, prod_uri = counted_prod
    pipeline: Pipeline = pipeline_factory(
        [collection_config("orders")], prod={"uri": prod_uri},
        # One batch in flight makes the workers busy; no re-publishing during the test.
        watcher={"max_inflight_batches": 1, "inflight_timeout_seconds": 120})
    name = str(pipeline.collections[0]["name"])
    pipeline.start_watcher()
    bootstrap_worker = pipeline.start_worker(concurrency=1)
    pipeline.wait_bootstrapped()
    bootstrap_worker.terminate()
    rds = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        def read() -> int:
            return int(rds.hget(stats_key(name), "read") or 0)

        prod = pipeline.prod()
        prod.insert_one({"_id": "a", "userEmail": "a@corp.test", "accountId": 1, "v": 0})
        wait_for(lambda: batches_queued(rds, name), TIMEOUT, "the insert's batch published",
                 pipeline)
        # The same document again: held back while the insert's batch is in flight.
        prod.update_one({"_id": "a"}, {"$set": {"v": 1}})
        wait_for(lambda: read() >= 2, TIMEOUT, "the update read and held", pipeline)

        before = get_mores(proxy)
        time.sleep(3.0)
        polled = get_mores(proxy) - before
        # None: only a report sends the watcher back to the stream (it read once a second
        # before, 3 here; polling until the next housekeeping or flush made it 33).
        print(f"\nheld changes, workers busy: {polled} getMores in 3 s")
        assert polled == 0, (polled, queued(rds, name), pipeline.report())
        # The update was held all along: only the insert's batch waits in the queue.
        assert batches_queued(rds, name) == 1, (queued(rds, name), pipeline.report())

        # A worker applies the insert and reports it: the held update goes out then.
        pipeline.start_worker(concurrency=1)
        wait_for(lambda: (pipeline.staging().find_one({"_sync.pid": {"$exists": True}, "v": 1})
                          is not None), TIMEOUT, "the held update applied", pipeline)
    finally:
        rds.close()
