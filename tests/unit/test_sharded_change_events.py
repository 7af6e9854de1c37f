"""Change events of a sharded collection: `documentKey` holds the shard key fields besides
`_id`. The watcher keeps them on the Change, and nothing of them leaves the watcher."""

from __future__ import annotations

from datetime import UTC, datetime

from bson import ObjectId
from stagesync.rules.identity import encode_id
from stagesync.watcher.batcher import MicroBatcher
from stagesync.watcher.events import Change, classify

OID = ObjectId()


def sharded_event(operation: str) -> dict[str, object]:
    # Shape from the MongoDB manual (change events on a sharded collection): documentKey is
    # the shard key fields plus _id, in the shard key's order.
    return {"_id": {"_data": "8264"}, "operationType": operation,
            "documentKey": {"userEmail": "ann@corp.test", "region": "eu", "_id": OID},
            "wallTime": datetime(2024, 5, 1, tzinfo=UTC)}


def test_the_shard_key_is_kept_beside_the_pid() -> None:
    for operation in ("insert", "update", "replace", "delete"):
        change = classify(sharded_event(operation))
        assert isinstance(change, Change)
        assert change.pid == encode_id(OID) and change.op == operation
        assert change.shard_key == {"userEmail": "ann@corp.test", "region": "eu"}


def test_an_unsharded_document_key_has_no_shard_key() -> None:
    change = classify({"_id": {"_data": "82"}, "operationType": "insert",
                       "documentKey": {"_id": OID}})
    assert isinstance(change, Change) and change.shard_key is None


def test_shard_key_values_never_reach_a_message_or_a_repr() -> None:
    change = classify(sharded_event("update"))
    assert isinstance(change, Change)
    assert "ann@corp.test" not in repr(change)
    batcher = MicroBatcher(lambda pid: "stagesync.orders", max_size=10, max_wait=0.0)
    batcher.add(change, 0.0)
    per_queue, *_ = batcher.drain()
    assert per_queue == {"stagesync.orders": [(encode_id(OID), "update")]}
