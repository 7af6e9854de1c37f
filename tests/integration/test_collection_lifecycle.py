"""The production collection goes away (dropped, renamed, its database dropped) and comes back.

A stream on a collection that is dropped or renamed gets that event and then `invalidate`: it
cannot go on. The watcher treats both as the end of the stream's history: a full resync, then
a fresh stream on the same namespace. So staging soft-deletes every document production no
longer has (keeping their staging-only fields), and documents inserted into the re-created
collection are synced, a returning business key reviving its old staging document.

Real server events, real watcher and worker processes; assertions on staging's final state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pymongo.collection import Collection
from stagesync.protocol.names import RESYNCS

from tests.support.pipeline import Pipeline, wait_for

TIMEOUT = 45


def order(number: int) -> dict[str, Any]:
    return {"userEmail": f"c{number}@corp.test", "accountId": 1, "total": number}


def rename_away(collection: Collection[Any]) -> None:
    collection.rename(f"{collection.name}_old")


def drop_database(collection: Collection[Any]) -> None:
    collection.database.client.drop_database(collection.database.name)


ENDINGS: dict[str, tuple[Callable[[Collection[Any]], None], str]] = {
    # how production loses the collection, and the event the resync reason names
    "drop": (lambda collection: collection.drop(), "drop event"),
    "rename": (rename_away, "rename event"),
    "drop_database": (drop_database, "drop event"),  # a collection stream sees `drop`
}


def verified(pipeline: Pipeline) -> bool:
    return pipeline.cli("verify", pipeline.collections[0]["name"], "--settle", "5"
                        ).returncode == 0


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_a_vanished_collection_is_soft_deleted_and_its_successor_synced(
    pipeline: Pipeline, ending: str
) -> None:
    end, event = ENDINGS[ending]
    prod = pipeline.prod()
    prod.insert_many([order(i) for i in range(10)])
    pipeline.start_worker(concurrency=2)
    pipeline.start_watcher()
    wait_for(lambda: len(pipeline.live_staging()) == 10, TIMEOUT, "initial copy", pipeline)
    staging = pipeline.staging()
    staging.update_many({}, {"$set": {"qaNotes": "keep"}})

    end(prod)
    wait_for(lambda: not pipeline.live_staging(), TIMEOUT,
             f"every staging document soft-deleted after the {ending}", pipeline)
    assert staging.count_documents({"deleted": True, "qaNotes": "keep"}) == 10
    reasons = [doc.get("reason", "") for doc in pipeline.state()[RESYNCS].find(
        {"kind": "resync"})]
    assert any("history lost" in reason and event in reason for reason in reasons), reasons

    # Once that resync is over, production re-creates the collection (one business key comes
    # back, one is new): only the fresh stream can bring these.
    wait_for(lambda: all(doc.get("state") == "done" for doc in pipeline.state()[RESYNCS].find(
        {"kind": "resync"})), TIMEOUT, "resync finished", pipeline)
    prod.insert_many([order(3), order(100)])
    wait_for(lambda: len(pipeline.live_staging()) == 2, TIMEOUT, "the new documents",
             pipeline)
    wait_for(lambda: verified(pipeline), TIMEOUT, "staging equal to production", pipeline,
             interval=2)
    assert staging.count_documents({}) == 11  # key 3 revived its document, no duplicate
    revived = staging.find_one({"userEmail": "c3@corp.test", "deleted": False})
    assert revived is not None and revived["qaNotes"] == "keep"
