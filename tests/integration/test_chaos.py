"""Chaos: kill and wipe everything while production keeps changing; nothing may be lost.

During a continuous stream of mixed changes over a few hundred keys: SIGKILL a worker,
SIGKILL the watcher and restart it, FLUSHALL Redis, stop and restart the staging server,
SIGKILL another worker. Afterwards staging must converge to exactly what production holds
(`stagesync verify`), staging-only fields intact, dead-letter store empty; an environment
created before the chaos holds what the main staging holds.

Uses its own Redis (FLUSHALL must not touch anyone else's) and, with the SecantusDB backend,
its own staging server on a storage directory, so it can be restarted with its data (other
backends' servers are not the test's to stop).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pymongo import MongoClient
from stagesync.cli.local_servers import LocalServer, restart, start_mongo_test_server, start_redis

from tests.support.backends import MongoPair
from tests.support.pipeline import Pipeline, Proc, collection_config, wait_for

KEYS = 300
RATE = 110  # changes/s: the watcher is down ~2 s, far within production's history
LOAD_SECONDS = 30  # the last disruption is at 24 s
CONVERGE_TIMEOUT = 180


class Load(threading.Thread):
    """Mixed production writes: updates, inserts, deletes, re-inserts, key moves."""

    def __init__(self, uri: str, database: str, seed: int = 3) -> None:
        super().__init__(daemon=True)
        self.client: MongoClient[Any] = MongoClient(uri)
        self.orders = self.client[database]["orders"]
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.changes = 0
        self.live: dict[int, Any] = {}  # key number -> production _id
        self.gone: list[int] = []
        self.next_account = 10_000

    def seed(self) -> None:
        for number in range(KEYS):
            self.live[number] = self.orders.insert_one(self.document(number)).inserted_id

    def document(self, number: int) -> dict[str, Any]:
        return {"userEmail": f"k{number}@corp.test", "accountId": 1, "total": 0,
                "status": "new", "customer": {"name": f"N{number}", "city": "Oslo"}}

    def run(self) -> None:
        deadline = time.monotonic() + LOAD_SECONDS
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.step()
            self.changes += 1
            time.sleep(1 / RATE)

    def step(self) -> None:
        roll = self.rng.random()
        number = self.rng.choice(list(self.live))
        _id = self.live[number]
        if roll < 0.7:
            change: dict[str, Any] = {"$set": {"total": self.rng.randint(1, 1000),
                                               "status": self.rng.choice(["a", "b", "c"])}}
            if self.rng.random() < 0.1:
                change["$unset"] = {"customer.city": ""}
            self.orders.update_one({"_id": _id}, change)
        elif roll < 0.8 and len(self.live) > KEYS // 2:
            self.orders.delete_one({"_id": _id})
            del self.live[number]
            self.gone.append(number)
        elif roll < 0.9 and self.gone:
            back = self.gone.pop(self.rng.randrange(len(self.gone)))
            self.live[back] = self.orders.insert_one(self.document(back)).inserted_id
        else:
            # Moves the business key to a key nobody else ever holds: no conflicts expected.
            self.next_account += 1
            self.orders.update_one({"_id": _id}, {"$set": {"accountId": self.next_account}})


@pytest.fixture
def chaos_pipeline(mongo_pair: MongoPair, tmp_path: Path) -> Iterator[tuple[Pipeline, Any]]:
    redis_server = start_redis(workdir=tmp_path / "redis")
    staging_server: LocalServer | None = None
    pair = mongo_pair
    if mongo_pair.is_test_server:
        staging_server = start_mongo_test_server(data_dir=tmp_path / "staging-data",
                                                 workdir=tmp_path / "staging")
        pair = MongoPair(mongo_pair.kind, mongo_pair.prod_uri, staging_server.uri)
    workdir = tmp_path / "pipeline"
    workdir.mkdir()
    pipeline = Pipeline(
        pair, f"{redis_server.uri}", workdir, [collection_config("orders", partitions=2)],
        {"watcher": {"inflight_timeout_seconds": 15, "lease_seconds": 3},
         "worker": {"visibility_timeout_seconds": 15, "task_time_limit_seconds": 12,
                    "retry_backoff_max_seconds": 2.0, "max_retries": 3}},
    )
    yield pipeline, staging_server
    pipeline.stop()
    redis_server.stop()
    if staging_server:
        staging_server.stop()


@pytest.mark.slow
def test_kills_wipes_and_restarts_lose_nothing(chaos_pipeline: tuple[Pipeline, Any]) -> None:
    pipeline, staging_server = chaos_pipeline
    name = pipeline.collections[0]["name"]
    load = Load(pipeline.pair.prod_uri, pipeline.collections[0]["source"].split(".")[0])
    load.seed()
    workers: list[Proc] = [pipeline.start_worker(concurrency=2),
                           pipeline.start_worker(concurrency=2)]
    watcher = pipeline.start_watcher()
    wait_for(lambda: len(pipeline.live_staging()) == KEYS, 120, "bootstrap", pipeline)
    qa = [doc["_id"] for doc in pipeline.staging().find({}).limit(30)]
    pipeline.staging().update_many({"_id": {"$in": qa}},
                                   {"$set": {"qaNotes": "keep", "qaTag": "chaos"}})
    # An environment lives through the same chaos and must lose nothing either.
    created = pipeline.cli("env", "create", "ch", "--wait", "--timeout", "120")
    assert created.returncode == 0, created.stdout + created.stderr + pipeline.logs()
    database, _, collection = pipeline.collections[0]["target"].partition(".")
    copies = pipeline.staging_client[f"{database}__ch"][collection]

    started = time.monotonic()
    load.start()
    events: list[str] = []

    def at(second: float, what: str) -> None:
        time.sleep(max(0.0, started + second - time.monotonic()))
        events.append(f"{time.monotonic() - started:5.1f}s {what}")

    at(4, "SIGKILL worker 1")
    workers[0].kill()
    workers.append(pipeline.start_worker(concurrency=2))
    at(8, "SIGKILL watcher, restart after 1 s")
    watcher.kill()
    time.sleep(1)
    watcher = pipeline.start_watcher()
    at(13, "FLUSHALL Redis")
    redis.Redis.from_url(pipeline.redis_url).flushall()
    if staging_server is not None:
        at(18, "stop staging, restart after 2 s")
        staging_server.stop()
        time.sleep(2)
        restart(staging_server)
    at(24, "SIGKILL worker 2")
    workers[1].kill()
    workers.append(pipeline.start_worker(concurrency=2))
    load.join()
    load_ended = time.monotonic()

    last_verify: list[str] = []

    def converged() -> bool:
        result = pipeline.cli("verify", name, "--settle", "5")
        letters = list(pipeline.state()["dead_letters"].find({"state": "open"}))
        open_letters = len(letters)
        last_verify[:] = [f"verify exit {result.returncode}, open dead letters "
                          f"{open_letters}:\n{result.stdout[-3000:]}{result.stderr[-1000:]}"]
        last_verify.extend(f"\nopen: {letter.get('collection')} {letter.get('pid')} "
                           f"{letter.get('reason')} v{letter.get('version')} "
                           f"{str(letter.get('error'))[:120]}" for letter in letters[:10])
        return result.returncode == 0 and open_letters == 0 and environment_equal()

    def environment_equal() -> bool:
        held = {doc["_sync"]["pid"]: (doc.get("total"), doc.get("status"))
                for doc in copies.find({"deleted": False}, {"_sync": 1, "total": 1,
                                                             "status": 1})}
        wanted = {doc["_sync"]["pid"]: (doc.get("total"), doc.get("status"))
                  for doc in pipeline.staging().find({"deleted": False}, {
                      "_sync": 1, "total": 1, "status": 1})}
        last_verify.append(f"\nenvironment ch: {len(held)} live copies, main staging "
                           f"{len(wanted)}, {sum(held.get(k) != v for k, v in wanted.items())}"
                           " differ")
        return held == wanted

    try:
        wait_for(converged, CONVERGE_TIMEOUT, "convergence after chaos", pipeline, interval=3)
    except AssertionError as error:
        raise AssertionError(f"disruptions: {events}\nlast {''.join(last_verify)}\n"
                             f"{error}") from None
    converge_seconds = time.monotonic() - load_ended
    staging = {doc["_id"]: doc for doc in pipeline.staging().find({"_id": {"$in": qa}})}
    for staging_id in qa:
        assert staging[staging_id]["qaNotes"] == "keep"
        assert staging[staging_id]["qaTag"] == "chaos"
    live = pipeline.live_staging()
    assert len(live) == len(load.live)
    figures = {"changes": load.changes, "disruptions": events,
               "converged_after_load_seconds": round(converge_seconds, 1),
               "production_documents": len(load.live)}
    print("chaos figures:", json.dumps(figures))
    (pipeline.workdir / "chaos-figures.json").write_text(json.dumps(figures, indent=2))
