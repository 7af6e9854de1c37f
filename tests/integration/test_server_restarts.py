"""A server dies mid-stream (SIGKILL) and comes back on the same storage directory.

- Staging: it holds both the synced documents and the pipeline's own state (checkpoint,
  versions, dead letters), so while it is down the watcher cannot checkpoint and the workers
  cannot write: they retry, and whatever was in flight is applied again from the durable
  checkpoint once it is back.
- Production: the stream breaks; the watcher resumes from its checkpoint (resume tokens
  survive the restart), without a resync.

Production keeps changing throughout. Nothing may be lost: staging ends equal to production,
no dead letters, QA's staging-only edits intact. Each test kills a server of its own (the
session's must not be killed).
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from pymongo import MongoClient, WriteConcern
from pymongo.errors import PyMongoError
from stagesync.cli.local_servers import restart
from stagesync.protocol.names import RESYNCS

from tests.support.own_servers import OwnServers
from tests.support.pipeline import Pipeline, collection_config, wait_for

KEYS = 150
RATE = 60  # production changes per second
LOAD_SECONDS = 12
KILL_AT = 3.0
DOWN_SECONDS = 1.5
TIMEOUT = 60


class Writer(threading.Thread):
    """Production traffic: updates, inserts, deletes of random documents."""

    def __init__(self, uri: str, source: str) -> None:
        super().__init__(daemon=True)
        database, _, name = source.partition(".")
        self.client: MongoClient[Any] = MongoClient(uri)
        # Journaled: an acknowledged write that was not may be lost in a crash on MongoDB too.
        self.orders = self.client[database].get_collection(
            name, write_concern=WriteConcern(w=1, j=True))
        self.rng = random.Random(5)
        self.ids = self.orders.insert_many([order(n) for n in range(KEYS)]).inserted_ids
        self.next_key = KEYS

    def run(self) -> None:
        deadline = time.monotonic() + LOAD_SECONDS
        while time.monotonic() < deadline:
            try:
                self.step()
            except PyMongoError:
                # Production went away under this write: it may or may not have happened,
                # which is fine, staging must end equal to whatever production holds.
                time.sleep(0.2)
            time.sleep(1 / RATE)
        self.client.close()

    def step(self) -> None:
        roll = self.rng.random()
        if roll < 0.75:
            self.orders.update_one({"_id": self.rng.choice(self.ids)},
                                   {"$set": {"total": self.rng.randint(1, 10_000)}})
        elif roll < 0.85 and len(self.ids) > KEYS // 2:
            self.orders.delete_one({"_id": self.ids.pop(self.rng.randrange(len(self.ids)))})
        else:
            self.next_key += 1
            self.ids.append(self.orders.insert_one(order(self.next_key)).inserted_id)


def order(number: int) -> dict[str, Any]:
    return {"userEmail": f"r{number}@corp.test", "accountId": 1, "total": 0}


def converged(pipeline: Pipeline) -> bool:
    result = pipeline.cli("verify", pipeline.collections[0]["name"], "--settle", "5")
    return result.returncode == 0 and pipeline.state()["dead_letters"].count_documents(
        {"state": "open"}) == 0


def wait_converged(pipeline: Pipeline) -> None:
    """Until staging equals production; on a timeout, says what differs."""
    try:
        wait_for(lambda: converged(pipeline), TIMEOUT, "staging equal to production",
                 interval=2)
    except AssertionError as error:
        report = pipeline.cli("verify", pipeline.collections[0]["name"], "--settle", "0")
        dead = list(pipeline.state()["dead_letters"].find({"state": "open"}, {"_id": 0}))
        raise AssertionError(f"{error}\nverify: {report.stdout[-3000:]}{report.stderr[-3000:]}"
                             f"\ndead letters: {dead}\n{pipeline.logs()}") from None


def test_staging_killed_and_restarted_on_its_storage_loses_nothing(
    own_servers: OwnServers,
) -> None:
    staging_server = own_servers.server("staging")
    pipeline = own_servers.pipeline([collection_config("orders")], staging=staging_server)
    writer = Writer(pipeline.pair.prod_uri, pipeline.collections[0]["source"])
    pipeline.start_worker(concurrency=2)
    pipeline.start_worker(concurrency=2)
    pipeline.start_watcher()
    wait_for(lambda: len(pipeline.live_staging()) == KEYS, TIMEOUT, "initial copy", pipeline)
    # QA edits, journaled: an acknowledged write that was not journaled may be lost in a
    # crash on MongoDB too, and the point here is what the sync does, not the server.
    qa = [doc["_id"] for doc in pipeline.staging().find({}, {"_id": 1}).limit(20)]
    pipeline.staging().with_options(write_concern=WriteConcern(j=True)).update_many(
        {"_id": {"$in": qa}}, {"$set": {"qaNotes": "keep"}})

    writer.start()
    time.sleep(KILL_AT)
    staging_server.kill()  # SIGKILL, mid-stream
    time.sleep(DOWN_SECONDS)
    restart(staging_server)
    writer.join()

    wait_converged(pipeline)
    assert len(pipeline.live_staging()) == pipeline.prod().count_documents({})
    kept = pipeline.staging().count_documents({"_id": {"$in": qa}, "qaNotes": "keep"})
    assert kept == len(qa)


def test_production_killed_and_restarted_is_resumed_from_the_checkpoint(
    own_servers: OwnServers,
) -> None:
    production = own_servers.server("prod")
    pipeline = own_servers.pipeline([collection_config("orders")], prod=production)
    writer = Writer(production.uri, pipeline.collections[0]["source"])
    pipeline.start_worker(concurrency=2)
    pipeline.start_watcher()
    wait_for(lambda: len(pipeline.live_staging()) == KEYS, TIMEOUT, "initial copy", pipeline)
    resyncs = pipeline.state()[RESYNCS]
    wait_for(lambda: all(doc.get("state") == "done" for doc in resyncs.find({"kind": "resync"})),
             TIMEOUT, "bootstrap resync finished", pipeline)

    writer.start()
    time.sleep(KILL_AT)
    production.kill()  # SIGKILL, mid-stream
    time.sleep(DOWN_SECONDS)
    restart(production)
    writer.join()

    wait_converged(pipeline)
    assert len(pipeline.live_staging()) == pipeline.prod().count_documents({})
    reasons = [doc.get("reason", "") for doc in resyncs.find({"kind": "resync"})]
    assert len(reasons) == 1 and "bootstrap" in reasons[0], reasons  # resumed, not resynced
