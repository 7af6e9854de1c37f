"""Where the stream stands in production's change history, against a real server.

- History lost: the watcher was away while production made more changes than its history
  (oplog) holds. Resuming from the stored token fails with 286 ChangeStreamHistoryLost, so the
  watcher must resync the whole collection and stream again from a fresh token; staging then
  equals production, deletes made while it was away included.
- Idle streams: a collection nobody writes to still moves its checkpoint on (the post-batch
  resume token advances with the cluster's writes elsewhere), so a quiet collection never
  falls off the oplog.

Real watcher and worker processes; assertions on staging's final state and the stored
checkpoint, never on event counts or timing.
"""

from __future__ import annotations

from typing import Any

from pymongo.collection import Collection
from pymongo.errors import OperationFailure
from stagesync.protocol.names import RESYNCS
from stagesync.rules.identity import encode_id

from tests.support.own_servers import OwnServers
from tests.support.pipeline import Pipeline, Proc, collection_config, wait_for

TIMEOUT = 45
HISTORY = 50  # the production server's `--oplog-max-entries`
# SecantusDB trims its history once every 1,000 writes, where mongod trims its oplog as it
# fills: more than 1,000 writes are needed before a token is really gone.
PAST_HISTORY = 1_200


def order(number: int) -> dict[str, Any]:
    return {"userEmail": f"h{number}@corp.test", "accountId": 1, "total": number,
            "status": "new"}


def checkpoint(pipeline: Pipeline) -> Any:
    name = pipeline.collections[0]["name"]
    return (pipeline.state()["watchers"].find_one({"_id": name}) or {}).get("token")


def resumable(collection: Collection[Any], token: Any) -> bool:
    """Whether the server can still resume a stream on `collection` from `token`."""
    try:
        collection.watch(resume_after=token).close()
    except OperationFailure as error:
        if error.code == 286:  # ChangeStreamHistoryLost
            return False
        raise
    return True


def resync_reasons(pipeline: Pipeline) -> list[str]:
    return [doc.get("reason", "") for doc in pipeline.state()[RESYNCS].find({"kind": "resync"})]


def resyncs_finished(pipeline: Pipeline) -> bool:
    return all(doc.get("state") == "done"
               for doc in pipeline.state()[RESYNCS].find({"kind": "resync"}))


def verified(pipeline: Pipeline) -> bool:
    return pipeline.cli("verify", pipeline.collections[0]["name"], "--settle", "5"
                        ).returncode == 0


def synced(pipeline: Pipeline, pid: Any) -> dict[str, Any] | None:
    return pipeline.staging().find_one({"_sync.pid": encode_id(pid), "deleted": False})


def bootstrapped_on_a_short_history(own_servers: OwnServers
                                    ) -> tuple[Pipeline, Proc, Any, list[Any]]:
    """20 orders copied by a watcher and a worker, on a production server whose history
    holds HISTORY changes: the pipeline, its watcher, production's collection, the `_id`s."""
    production = own_servers.server("prod", oplog_max_entries=HISTORY)
    pipeline = own_servers.pipeline([collection_config("orders")], prod=production)
    prod = pipeline.prod()
    ids = prod.insert_many([order(i) for i in range(20)]).inserted_ids
    pipeline.start_worker(concurrency=2)
    watcher = pipeline.start_watcher()
    wait_for(lambda: len(pipeline.live_staging()) == 20, TIMEOUT, "bootstrap copy", pipeline)
    return pipeline, watcher, prod, ids


def changed_past_history(prod: Any, ids: list[Any]) -> None:
    """While the watcher is away: updates, deletes and far more inserts than history holds."""
    for _id in ids[:10]:
        prod.update_one({"_id": _id}, {"$set": {"status": "changed"}, "$inc": {"total": 1}})
    prod.delete_many({"_id": {"$in": ids[10:15]}})
    prod.insert_many([order(i) for i in range(100, 100 + PAST_HISTORY)])


def test_lost_history_means_a_full_resync_then_streaming(own_servers: OwnServers) -> None:
    pipeline, watcher, prod, ids = bootstrapped_on_a_short_history(own_servers)
    pipeline.staging().update_many({}, {"$set": {"qaNotes": "keep"}})
    watcher.terminate()
    token = checkpoint(pipeline)
    assert token is not None and resumable(prod, token)
    changed_past_history(prod, ids)
    assert not resumable(prod, token)  # the server really lost the checkpoint's history

    pipeline.start_watcher()
    wait_for(lambda: verified(pipeline), 2 * TIMEOUT, "staging equal to production after "
             "the history-lost resync", pipeline, interval=2)
    assert any("history lost" in reason and "code 286" in reason
               for reason in resync_reasons(pipeline)), resync_reasons(pipeline)
    for _id in ids[10:15]:  # deleted while nobody watched: soft-deleted by the resync
        doc = pipeline.staging().find_one({"_sync.pid": encode_id(_id)})
        assert doc is not None and doc["deleted"] is True and doc["qaNotes"] == "keep"
    for _id in [*ids[:10], *ids[15:]]:
        doc = synced(pipeline, _id)
        assert doc is not None and doc["qaNotes"] == "keep"

    # Then it streams: once the resync is over, a new change can only arrive through it.
    wait_for(lambda: resyncs_finished(pipeline), TIMEOUT, "resync finished", pipeline)
    later = prod.insert_one(order(9_999)).inserted_id
    prod.update_one({"_id": ids[0]}, {"$set": {"status": "after"}})
    wait_for(lambda: synced(pipeline, later), TIMEOUT, "a change after the resync", pipeline)
    wait_for(lambda: (synced(pipeline, ids[0]) or {}).get("status") == "after", TIMEOUT,
             "an update after the resync", pipeline)
    assert resumable(prod, checkpoint(pipeline))


def test_an_idle_collections_checkpoint_advances_with_writes_elsewhere(
    pipeline: Pipeline,
) -> None:
    prod = pipeline.prod()
    elsewhere = prod.database["elsewhere"]
    pipeline.start_worker(concurrency=1)
    pipeline.start_watcher()
    pipeline.wait_streaming()
    seen = [checkpoint(pipeline)]
    for round_number in range(3):
        elsewhere.insert_one({"round": round_number})
        seen.append(wait_for(lambda: (t := checkpoint(pipeline)) not in seen and t, TIMEOUT,
                             "the idle collection's checkpoint to move on", pipeline))
    assert prod.count_documents({}) == 0
    assert pipeline.staging().count_documents({}) == 0


def test_an_idle_collection_keeps_its_place_in_a_short_history(
    own_servers: OwnServers,
) -> None:
    production = own_servers.server("prod", oplog_max_entries=HISTORY)
    pipeline = own_servers.pipeline([collection_config("orders")], prod=production)
    prod = pipeline.prod()
    first = prod.insert_one(order(1)).inserted_id
    pipeline.start_worker(concurrency=1)
    watcher = pipeline.start_watcher()
    wait_for(lambda: synced(pipeline, first), TIMEOUT, "bootstrap copy", pipeline)
    wait_for(lambda: resyncs_finished(pipeline), TIMEOUT, "bootstrap resync finished", pipeline)
    before = checkpoint(pipeline)

    # Far more writes than the history holds, none of them to the watched collection.
    prod.database["busy"].insert_many([{"n": n} for n in range(PAST_HISTORY)])
    assert not resumable(prod, before)
    wait_for(lambda: resumable(prod, checkpoint(pipeline)), TIMEOUT,
             "the idle checkpoint to move back into the history", pipeline)
    watcher.terminate()
    assert resumable(prod, checkpoint(pipeline))

    # A restarted watcher resumes where it was: no history lost, no second resync.
    pipeline.start_watcher()
    later = prod.insert_one(order(2)).inserted_id
    wait_for(lambda: synced(pipeline, later), TIMEOUT, "a change after the restart", pipeline)
    reasons = resync_reasons(pipeline)
    assert len(reasons) == 1 and "bootstrap" in reasons[0], reasons


def test_lost_history_resyncs_the_live_environments_too(own_servers: OwnServers) -> None:
    pipeline, watcher, prod, ids = bootstrapped_on_a_short_history(own_servers)
    created = pipeline.cli("env", "create", "h1", "--wait", "--timeout", "60")
    assert created.returncode == 0, created.stdout + created.stderr + pipeline.logs()
    database, _, name = pipeline.collections[0]["target"].partition(".")
    copies = pipeline.staging_client[f"{database}__h1"][name]
    watcher.terminate()
    changed_past_history(prod, ids)
    assert not resumable(prod, checkpoint(pipeline))

    pipeline.start_watcher()

    def environment_equal() -> bool:
        held = {doc["_sync"]["pid"]: doc.get("status") for doc in copies.find(
            {"deleted": False}, {"_sync.pid": 1, "status": 1})}
        return held == {encode_id(doc["_id"]): doc["status"] for doc in prod.find({})}

    wait_for(environment_equal, 3 * TIMEOUT, "the environment equal to production after "
             "the history-lost resync", pipeline, interval=2)
    scoped = f"{pipeline.collections[0]['name']}@h1"
    assert any(doc.get("reason", "").startswith("history lost") for doc in
               pipeline.state()[RESYNCS].find({"kind": "resync", "collection": scoped}))
