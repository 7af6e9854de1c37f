"""Change events of a sharded collection: `documentKey` holds the shard key fields besides
`_id`. The watcher keeps only the `_id` (workers read by it): nothing of the shard key, which
may be personal data, is kept, published or shown."""

from __future__ import annotations

from dataclasses import fields
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


def test_only_the_id_of_a_sharded_document_key_is_kept() -> None:
    for operation in ("insert", "update", "replace", "delete"):
        change = classify(sharded_event(operation))
        assert isinstance(change, Change)
        assert change.pid == encode_id(OID) and change.op == operation
        assert [f.name for f in fields(change)] == ["pid", "op", "happened_at"]
        assert "ann@corp.test" not in str(vars(change))


def test_an_unsharded_document_key_gives_the_same_change() -> None:
    unsharded = classify({**sharded_event("insert"), "documentKey": {"_id": OID}})
    assert unsharded == classify(sharded_event("insert"))


def test_shard_key_values_never_reach_a_message_or_a_repr() -> None:
    change = classify(sharded_event("update"))
    assert isinstance(change, Change)
    assert "ann@corp.test" not in repr(change)
    batcher = MicroBatcher(lambda pid: "stagesync.orders", max_size=10, max_wait=0.0)
    batcher.add(change, 0.0)
    per_queue, *_ = batcher.drain()
    assert per_queue == {"stagesync.orders": [(encode_id(OID), "update")]}
