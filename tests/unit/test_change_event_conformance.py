"""Change-event conformance (issue 8): events in the exact shape real MongoDB 6.0/7.0 sends
them, as pymongo decodes them with default codec options (BSON datetimes as naive UTC
`datetime`s, `clusterTime` as `bson.Timestamp`, `txnNumber` as `Int64`, UUIDs as `Binary`
subtype 4), fed to the watcher's event handling.

Written from the MongoDB manual's "Change Events" reference: the common fields (`_id` resume
token `{"_data": "82..."}`, `operationType`, `clusterTime`, `wallTime`, `ns`), `documentKey`
(shard-key fields first, then `_id`, on sharded collections), `fullDocument` (inserts and
replaces; updates only with `fullDocument: "updateLookup"`, and then `None` when the document
was deleted before the lookup), `updateDescription` (`updatedFields`, `removedFields`,
`truncatedArrays`, and `disambiguatedPaths` with `showExpandedEvents`), `txnNumber` and `lsid`
on events written in a transaction, `to` on rename, `fullDocumentBeforeChange` with pre-images,
and the expanded DDL events (`create`, `createIndexes`, `dropIndexes`, `modify`,
`shardCollection`, `refineCollectionShardKey`, `reshardCollection`) with their
`operationDescription` and `collectionUUID`.

The integration tests put the common events (insert, update, replace, delete, drop, rename,
invalidate) through the watcher against the test server. The shapes only other deployments send
(sharded `documentKey`s, expanded DDL events, transactions' `lsid`, pre-images) are checked here
only, from the manual.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from bson import Binary, Int64, ObjectId, Timestamp
from stagesync.rules.identity import decode_id, encode_id
from stagesync.watcher.events import (
    APPLIED_OPERATIONS,
    HISTORY_ENDING_OPERATIONS,
    STREAM_PROJECTION,
    Change,
    HistoryEnded,
    IndexChanged,
    classify,
)

OID_ADA = ObjectId("65e1c9a7d4e5f60718293a4b")
OID_BOB = ObjectId("65e1c9b2d4e5f60718293a4c")
OID_EU = ObjectId("65e1ca01d4e5f60718293a4d")
COLLECTION_UUID = Binary.from_uuid(uuid.UUID("6c4c3c2b-0a1e-4f8e-9f7b-0a3d5e1c2b3a"))
SESSION_ID = Binary.from_uuid(uuid.UUID("1f3e5d7c-9b8a-4c6d-8e0f-a1b2c3d4e5f6"))
SESSION_UID = Binary(
    bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
)
NS = {"db": "production", "coll": "orders"}
PII_DOC = {
    "userEmail": "ada.lovelace@real-domain.test",
    "accountId": 7,
    "customer": {"name": "Ada Lovelace", "phone": "+44 20 7946 0000"},
    "items": [{"sku": "A1", "qty": 2}, {"sku": "B2", "qty": 1}],
}


def resume_token(seconds: int, increment: int, tail: str) -> dict[str, str]:
    """A v2 resume token (MongoDB 4.2+): '82' + cluster time + ... keystring; hex, uppercase."""
    return {"_data": f"82{seconds:08X}{increment:08X}2B022C0100296E5A1004{tail}"}


def wall(seconds: int, millis: int = 0) -> datetime:
    # pymongo decodes BSON dates as naive UTC datetimes (tz_aware=False, the default).
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None, microsecond=millis * 1000)


T0 = 1709296215  # 2024-03-01T12:30:15Z


# --- the events, as MongoDB sends them -------------------------------------------------------

INSERT = {
    "_id": resume_token(T0, 1, "6C4C3C2B0A1E4F8E46645F69640064" + str(OID_ADA).upper() + "0004"),
    "operationType": "insert",
    "clusterTime": Timestamp(T0, 1),
    "wallTime": wall(T0, 250),
    "fullDocument": {"_id": OID_ADA, **PII_DOC},
    "ns": NS,
    "documentKey": {"_id": OID_ADA},
}

UPDATE = {
    "_id": resume_token(T0 + 1, 1, "46645F69640064" + str(OID_ADA).upper() + "0004"),
    "operationType": "update",
    "clusterTime": Timestamp(T0 + 1, 1),
    "wallTime": wall(T0 + 1, 3),
    "ns": NS,
    "documentKey": {"_id": OID_ADA},
    "updateDescription": {
        "updatedFields": {"status": "shipped", "customer.phone": "+44 20 7946 0999"},
        "removedFields": ["coupon"],
        "truncatedArrays": [{"field": "items", "newSize": 1}],
    },
}

# showExpandedEvents: true adds disambiguatedPaths (6.1+) for paths with numeric-looking keys.
UPDATE_EXPANDED = {
    **copy.deepcopy(UPDATE),
    "_id": resume_token(T0 + 1, 2, "46645F69640064" + str(OID_ADA).upper() + "0004"),
    "clusterTime": Timestamp(T0 + 1, 2),
    "collectionUUID": COLLECTION_UUID,
    "updateDescription": {
        "updatedFields": {"items.0.qty": 3, "scores.1": 99},
        "removedFields": [],
        "truncatedArrays": [],
        "disambiguatedPaths": {"scores.1": ["scores", "1"], "items.0.qty": ["items", 0, "qty"]},
    },
}

# fullDocument: "updateLookup": the current document comes along...
UPDATE_LOOKUP = {
    **copy.deepcopy(UPDATE),
    "_id": resume_token(T0 + 2, 1, "46645F69640064" + str(OID_ADA).upper() + "0004"),
    "clusterTime": Timestamp(T0 + 2, 1),
    "wallTime": wall(T0 + 2),
    "fullDocument": {"_id": OID_ADA, **PII_DOC, "status": "shipped"},
}

# ...or None when the document was deleted between the update and the lookup.
UPDATE_LOOKUP_DELETED = {
    **copy.deepcopy(UPDATE),
    "_id": resume_token(T0 + 3, 1, "46645F69640064" + str(OID_BOB).upper() + "0004"),
    "clusterTime": Timestamp(T0 + 3, 1),
    "wallTime": wall(T0 + 3),
    "documentKey": {"_id": OID_BOB},
    "fullDocument": None,
}

REPLACE = {
    "_id": resume_token(T0 + 4, 1, "46645F69640064" + str(OID_ADA).upper() + "0004"),
    "operationType": "replace",
    "clusterTime": Timestamp(T0 + 4, 1),
    "wallTime": wall(T0 + 4, 999),
    "ns": NS,
    "documentKey": {"_id": OID_ADA},
    "fullDocument": {"_id": OID_ADA, "userEmail": "ada@real-domain.test", "accountId": 7},
}

DELETE = {
    "_id": resume_token(T0 + 5, 1, "46645F69640064" + str(OID_ADA).upper() + "0004"),
    "operationType": "delete",
    "clusterTime": Timestamp(T0 + 5, 1),
    "wallTime": wall(T0 + 5),
    "ns": NS,
    "documentKey": {"_id": OID_ADA},
}

# changeStreamPreAndPostImages + fullDocumentBeforeChange: "whenAvailable".
DELETE_WITH_PRE_IMAGE = {
    **copy.deepcopy(DELETE),
    "_id": resume_token(T0 + 5, 2, "46645F69640064" + str(OID_BOB).upper() + "0004"),
    "clusterTime": Timestamp(T0 + 5, 2),
    "documentKey": {"_id": OID_BOB},
    "fullDocumentBeforeChange": {"_id": OID_BOB, **PII_DOC},
}

TRANSACTION_FIELDS = {"txnNumber": Int64(3), "lsid": {"id": SESSION_ID, "uid": SESSION_UID}}

TXN_INSERT = {
    "_id": resume_token(T0 + 6, 1, "46645F6964003C6F726465722D31303031000004"),
    "operationType": "insert",
    "clusterTime": Timestamp(T0 + 6, 1),
    "wallTime": wall(T0 + 6),
    **TRANSACTION_FIELDS,
    "fullDocument": {"_id": "order-1001", **PII_DOC},
    "ns": NS,
    "documentKey": {"_id": "order-1001"},
}

# Events of one transaction share clusterTime and are told apart by the token.
TXN_UPDATE = {
    "_id": resume_token(T0 + 6, 1, "46645F69640029A40F0004"),
    "operationType": "update",
    "clusterTime": Timestamp(T0 + 6, 1),
    "wallTime": wall(T0 + 6),
    **TRANSACTION_FIELDS,
    "ns": NS,
    "documentKey": {"_id": 1001},
    "updateDescription": {"updatedFields": {"total": 12.5}, "removedFields": [],
                          "truncatedArrays": []},
}

TXN_DELETE = {
    "_id": resume_token(T0 + 6, 1, "46645F69640029A50F0004"),
    "operationType": "delete",
    "clusterTime": Timestamp(T0 + 6, 1),
    "wallTime": wall(T0 + 6),
    **TRANSACTION_FIELDS,
    "ns": NS,
    "documentKey": {"_id": Int64(1002)},
}

# Sharded collection, shard key {region: 1, _id: 1}: documentKey holds the shard key then _id.
SHARDED_INSERT = {
    "_id": resume_token(T0 + 7, 1, "3C726567696F6E00033C657500" + str(OID_EU).upper() + "0004"),
    "operationType": "insert",
    "clusterTime": Timestamp(T0 + 7, 1),
    "wallTime": wall(T0 + 7),
    "fullDocument": {"_id": OID_EU, "region": "eu", **PII_DOC},
    "ns": NS,
    "documentKey": {"region": "eu", "_id": OID_EU},
}

SHARDED_UPDATE = {
    "_id": resume_token(T0 + 8, 1, "3C726567696F6E00033C657500" + str(OID_EU).upper() + "0004"),
    "operationType": "update",
    "clusterTime": Timestamp(T0 + 8, 1),
    "wallTime": wall(T0 + 8),
    "ns": NS,
    "documentKey": {"region": "eu", "_id": OID_EU},
    "updateDescription": {"updatedFields": {"customer.name": "A. L."}, "removedFields": [],
                          "truncatedArrays": []},
}

# A document whose shard key value changed (moved between shards) keeps its _id.
SHARDED_DELETE_OTHER_REGION = {
    "_id": resume_token(T0 + 9, 1, "3C726567696F6E00033C757300" + str(OID_EU).upper() + "0004"),
    "operationType": "delete",
    "clusterTime": Timestamp(T0 + 9, 1),
    "wallTime": wall(T0 + 9),
    "ns": NS,
    "documentKey": {"region": "us", "_id": OID_EU},
}

UUID_ID_INSERT = {
    "_id": resume_token(T0 + 10, 1, "46645F69640005"),
    "operationType": "insert",
    "clusterTime": Timestamp(T0 + 10, 1),
    "wallTime": wall(T0 + 10),
    "fullDocument": {"_id": SESSION_ID, **PII_DOC},
    "ns": NS,
    "documentKey": {"_id": SESSION_ID},
}

COMPOUND_ID_UPDATE = {
    "_id": resume_token(T0 + 11, 1, "46645F696400030004"),
    "operationType": "update",
    "clusterTime": Timestamp(T0 + 11, 1),
    "wallTime": wall(T0 + 11),
    "ns": NS,
    "documentKey": {"_id": {"tenant": "acme", "seq": Int64(17)}},
    "updateDescription": {"updatedFields": {"x": 1}, "removedFields": [], "truncatedArrays": []},
}

DROP = {
    "_id": resume_token(T0 + 20, 1, "5A10046C4C3C2B04"),
    "operationType": "drop",
    "clusterTime": Timestamp(T0 + 20, 1),
    "wallTime": wall(T0 + 20),
    "ns": NS,
}

DROP_EXPANDED = {**copy.deepcopy(DROP), "collectionUUID": COLLECTION_UUID}

RENAME = {
    "_id": resume_token(T0 + 21, 1, "5A10046C4C3C2B04"),
    "operationType": "rename",
    "clusterTime": Timestamp(T0 + 21, 1),
    "wallTime": wall(T0 + 21),
    "ns": NS,
    "to": {"db": "production", "coll": "orders_archive"},
}

RENAME_EXPANDED = {
    **copy.deepcopy(RENAME),
    "collectionUUID": COLLECTION_UUID,
    "operationDescription": {"to": {"db": "production", "coll": "orders_archive"}},
}

DROP_DATABASE = {
    "_id": resume_token(T0 + 22, 1, "5A1004"),
    "operationType": "dropDatabase",
    "clusterTime": Timestamp(T0 + 22, 1),
    "wallTime": wall(T0 + 22),
    "ns": {"db": "production"},
}

INVALIDATE = {
    "_id": resume_token(T0 + 22, 2, "5A10046C4C3C2B04"),
    "operationType": "invalidate",
    "clusterTime": Timestamp(T0 + 22, 2),
    "wallTime": wall(T0 + 22),
}

CREATE = {
    "_id": resume_token(T0 + 30, 1, "5A1004"),
    "operationType": "create",
    "clusterTime": Timestamp(T0 + 30, 1),
    "wallTime": wall(T0 + 30),
    "collectionUUID": COLLECTION_UUID,
    "ns": NS,
    "operationDescription": {"idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}},
}

CREATE_INDEXES = {
    "_id": resume_token(T0 + 31, 1, "5A1004"),
    "operationType": "createIndexes",
    "clusterTime": Timestamp(T0 + 31, 1),
    "wallTime": wall(T0 + 31),
    "collectionUUID": COLLECTION_UUID,
    "ns": NS,
    "operationDescription": {
        "indexes": [{"v": 2, "key": {"userEmail": 1, "accountId": 1}, "name": "key_1"}]
    },
}

DROP_INDEXES = {
    "_id": resume_token(T0 + 32, 1, "5A1004"),
    "operationType": "dropIndexes",
    "clusterTime": Timestamp(T0 + 32, 1),
    "wallTime": wall(T0 + 32),
    "collectionUUID": COLLECTION_UUID,
    "ns": NS,
    "operationDescription": {"indexes": [{"v": 2, "key": {"userEmail": 1}, "name": "key_1"}]},
}

MODIFY = {
    "_id": resume_token(T0 + 33, 1, "5A1004"),
    "operationType": "modify",
    "clusterTime": Timestamp(T0 + 33, 1),
    "wallTime": wall(T0 + 33),
    "collectionUUID": COLLECTION_UUID,
    "ns": NS,
    "operationDescription": {"index": {"name": "createdAt_1", "expireAfterSeconds": 3600}},
    "stateBeforeChange": {"collectionOptions": {"uuid": COLLECTION_UUID},
                          "indexOptions": {"expireAfterSeconds": 60}},
}

SHARD_COLLECTION = {
    "_id": resume_token(T0 + 34, 1, "5A1004"),
    "operationType": "shardCollection",
    "clusterTime": Timestamp(T0 + 34, 1),
    "wallTime": wall(T0 + 34),
    "collectionUUID": COLLECTION_UUID,
    "ns": NS,
    "operationDescription": {"shardKey": {"region": 1, "_id": 1}, "unique": False,
                             "numInitialChunks": Int64(0), "presplitHashedZones": False},
}

REFINE_SHARD_KEY = {
    "_id": resume_token(T0 + 35, 1, "5A1004"),
    "operationType": "refineCollectionShardKey",
    "clusterTime": Timestamp(T0 + 35, 1),
    "wallTime": wall(T0 + 35),
    "collectionUUID": COLLECTION_UUID,
    "ns": NS,
    "operationDescription": {"shardKey": {"region": 1, "_id": 1, "accountId": 1},
                             "oldShardKey": {"region": 1, "_id": 1}},
}

RESHARD_COLLECTION = {
    "_id": resume_token(T0 + 36, 1, "5A1004"),
    "operationType": "reshardCollection",
    "clusterTime": Timestamp(T0 + 36, 1),
    "wallTime": wall(T0 + 36),
    "collectionUUID": COLLECTION_UUID,
    "ns": NS,
    "operationDescription": {
        "reshardUUID": Binary.from_uuid(uuid.UUID("0a0b0c0d-0e0f-4a1b-8c2d-3e4f5a6b7c8d")),
        "shardKey": {"accountId": 1},
        "oldShardKey": {"region": 1, "_id": 1},
        "unique": False,
        "numInitialChunks": Int64(1),
    },
}


@dataclass(frozen=True)
class Expected:
    kind: type | None
    op: str | None = None
    document_id: Any = None


CASES: dict[str, tuple[dict[str, Any], Expected]] = {
    "insert": (INSERT, Expected(Change, "insert", OID_ADA)),
    "update": (UPDATE, Expected(Change, "update", OID_ADA)),
    "update with disambiguatedPaths": (UPDATE_EXPANDED, Expected(Change, "update", OID_ADA)),
    "update with updateLookup": (UPDATE_LOOKUP, Expected(Change, "update", OID_ADA)),
    "updateLookup of a since-deleted document": (
        UPDATE_LOOKUP_DELETED, Expected(Change, "update", OID_BOB)),
    "replace": (REPLACE, Expected(Change, "replace", OID_ADA)),
    "delete": (DELETE, Expected(Change, "delete", OID_ADA)),
    "delete with pre-image": (DELETE_WITH_PRE_IMAGE, Expected(Change, "delete", OID_BOB)),
    "insert in a transaction": (TXN_INSERT, Expected(Change, "insert", "order-1001")),
    "update in a transaction": (TXN_UPDATE, Expected(Change, "update", 1001)),
    "delete in a transaction": (TXN_DELETE, Expected(Change, "delete", Int64(1002))),
    "sharded insert": (SHARDED_INSERT, Expected(Change, "insert", OID_EU)),
    "sharded update": (SHARDED_UPDATE, Expected(Change, "update", OID_EU)),
    "sharded delete, other shard key": (
        SHARDED_DELETE_OTHER_REGION, Expected(Change, "delete", OID_EU)),
    "UUID _id": (UUID_ID_INSERT, Expected(Change, "insert", SESSION_ID)),
    "compound _id": (COMPOUND_ID_UPDATE,
                     Expected(Change, "update", {"tenant": "acme", "seq": Int64(17)})),
    "drop": (DROP, Expected(HistoryEnded)),
    "drop (expanded)": (DROP_EXPANDED, Expected(HistoryEnded)),
    "rename": (RENAME, Expected(HistoryEnded)),
    "rename (expanded)": (RENAME_EXPANDED, Expected(HistoryEnded)),
    "dropDatabase": (DROP_DATABASE, Expected(HistoryEnded)),
    "invalidate": (INVALIDATE, Expected(HistoryEnded)),
    "create": (CREATE, Expected(None)),
    "createIndexes": (CREATE_INDEXES, Expected(IndexChanged)),
    "dropIndexes": (DROP_INDEXES, Expected(IndexChanged)),
    "modify": (MODIFY, Expected(IndexChanged)),
    "shardCollection": (SHARD_COLLECTION, Expected(None)),
    "refineCollectionShardKey": (REFINE_SHARD_KEY, Expected(None)),
    "reshardCollection": (RESHARD_COLLECTION, Expected(None)),
}

DOCUMENT_CASES = [name for name, (_, expected) in CASES.items() if expected.kind is Change]


def cases(names: list[str] | None = None) -> list[Any]:
    chosen = names if names is not None else list(CASES)
    return [pytest.param(CASES[name][0], CASES[name][1], id=name) for name in chosen]


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC)


# --- each event yields the right action ------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), cases())
def test_event_yields_the_right_action(raw: dict[str, Any], expected: Expected) -> None:
    action = classify(raw)
    if expected.kind is None:
        assert action is None
        return
    assert isinstance(action, expected.kind)
    if isinstance(action, Change):
        assert action.op == expected.op
        assert action.pid == encode_id(expected.document_id)
        decoded = decode_id(action.pid)
        assert decoded == expected.document_id
        assert type(decoded) is type(expected.document_id)
        assert action.happened_at == as_utc(raw["wallTime"])
    elif isinstance(action, IndexChanged):
        assert action.operation == raw["operationType"]  # the index mirror reads listIndexes
    else:
        assert isinstance(action, HistoryEnded)
        assert raw["operationType"] in action.reason


def test_every_operation_type_of_the_manual_is_covered() -> None:
    seen = {raw["operationType"] for raw, _ in CASES.values()}
    assert seen >= APPLIED_OPERATIONS | HISTORY_ENDING_OPERATIONS
    assert seen >= {"create", "createIndexes", "dropIndexes", "modify", "shardCollection",
                    "refineCollectionShardKey", "reshardCollection"}


def test_shard_key_fields_do_not_change_the_pid() -> None:
    pids = {
        classify(raw).pid  # type: ignore[union-attr]
        for raw in (SHARDED_INSERT, SHARDED_UPDATE, SHARDED_DELETE_OTHER_REGION)
    }
    assert pids == {encode_id(OID_EU)}


def test_transaction_fields_do_not_change_the_action() -> None:
    plain = {k: v for k, v in TXN_INSERT.items() if k not in TRANSACTION_FIELDS}
    assert classify(plain) == classify(TXN_INSERT)


def test_events_of_one_transaction_share_their_time() -> None:
    times = {classify(raw).happened_at  # type: ignore[union-attr]
             for raw in (TXN_INSERT, TXN_UPDATE, TXN_DELETE)}
    assert times == {as_utc(wall(T0 + 6))}


def test_int_and_long_ids_stay_distinct_documents() -> None:
    """BSON int32 1001 and int64 1002 come back as int and Int64; their pids keep the type."""
    assert classify(TXN_UPDATE).pid == '{"$numberInt": "1001"}'  # type: ignore[union-attr]
    assert classify(TXN_DELETE).pid == '{"$numberLong": "1002"}'  # type: ignore[union-attr]


@pytest.mark.parametrize(("raw", "expected"), cases(DOCUMENT_CASES))
def test_cluster_time_alone_gives_the_change_time(raw: dict[str, Any], expected: Expected) -> None:
    """Before 6.0 there is no wallTime; the clusterTime Timestamp's seconds stand in."""
    without_wall = {k: v for k, v in raw.items() if k != "wallTime"}
    action = classify(without_wall)
    assert isinstance(action, Change)
    assert action.happened_at == datetime.fromtimestamp(raw["clusterTime"].time, UTC)


def test_uuid_id_decoded_with_standard_representation() -> None:
    native = SESSION_ID.as_uuid()
    raw = {**copy.deepcopy(UUID_ID_INSERT), "documentKey": {"_id": native},
           "fullDocument": {"_id": native, **PII_DOC}}
    action = classify(raw)
    assert isinstance(action, Change)
    # The same document must get the same pid whichever UUID representation the client uses.
    assert action.pid == classify(UUID_ID_INSERT).pid  # type: ignore[union-attr]


# --- the result never depends on the document bodies -----------------------------------------

BODY_FIELDS = ("fullDocument", "updateDescription", "fullDocumentBeforeChange")
BODY_VARIANTS: list[dict[str, Any]] = [
    {},
    {"fullDocument": None},
    {"fullDocument": {"_id": "a different id", "userEmail": "someone@else.test"}},
    {"fullDocument": {}},
    {"updateDescription": None},
    {"updateDescription": {"updatedFields": {"_id": 5}, "removedFields": ["documentKey"],
                           "truncatedArrays": []}},
    {"fullDocumentBeforeChange": None},
    {"fullDocument": None, "updateDescription": None, "fullDocumentBeforeChange": None},
]


def with_body(raw: Mapping[str, Any], variant: Mapping[str, Any]) -> dict[str, Any]:
    stripped = {k: copy.deepcopy(v) for k, v in raw.items() if k not in BODY_FIELDS}
    stripped.update(copy.deepcopy(dict(variant)))
    return stripped


@pytest.mark.parametrize("variant", BODY_VARIANTS)
@pytest.mark.parametrize(("raw", "expected"), cases())
def test_action_does_not_depend_on_bodies(
    raw: dict[str, Any], expected: Expected, variant: dict[str, Any]
) -> None:
    assert classify(with_body(raw, variant)) == classify(raw)


@pytest.mark.parametrize(("raw", "expected"), cases())
def test_classify_does_not_modify_the_event(raw: dict[str, Any], expected: Expected) -> None:
    before = copy.deepcopy(raw)
    classify(raw)
    assert raw == before


# --- the stream's projection -----------------------------------------------------------------


def project(raw: Mapping[str, Any]) -> dict[str, Any]:
    """What the server returns for an inclusion `$project` of top-level fields (the `_id`
    stays unless excluded)."""
    (stage,) = STREAM_PROJECTION
    spec = stage["$project"]
    keep = {name for name, flag in spec.items() if flag in (1, True)}
    if spec.get("_id", 1) not in (0, False):
        keep.add("_id")
    return {name: value for name, value in raw.items() if name in keep}


def test_stream_projection_shape() -> None:
    assert isinstance(STREAM_PROJECTION, list) and len(STREAM_PROJECTION) == 1
    (stage,) = STREAM_PROJECTION
    assert list(stage) == ["$project"]
    spec = stage["$project"]
    # An inclusion projection of top-level fields only: whatever is not listed is dropped.
    assert all(flag in (1, True) for name, flag in spec.items() if name != "_id")
    assert all("." not in name and not name.startswith("$") for name in spec)
    # The resume token stays: MongoDB refuses to resume a stream whose _id was removed.
    assert spec.get("_id", 1) in (1, True)
    assert "operationType" in spec and "documentKey" in spec
    for dropped in (*BODY_FIELDS, "lsid"):
        assert dropped not in spec


@pytest.mark.parametrize(("raw", "expected"), cases())
def test_projected_event_keeps_what_the_watcher_needs(
    raw: dict[str, Any], expected: Expected
) -> None:
    projected = project(raw)
    assert projected["_id"] == raw["_id"]
    assert projected["operationType"] == raw["operationType"]
    for name in ("documentKey", "ns", "to", "clusterTime", "wallTime"):
        assert projected.get(name) == raw.get(name)
    assert classify(projected) == classify(raw)


@pytest.mark.parametrize(("raw", "expected"), cases())
def test_projected_event_carries_no_document_content(
    raw: dict[str, Any], expected: Expected
) -> None:
    projected = project(raw)
    for name in (*BODY_FIELDS, "operationDescription", "stateBeforeChange"):
        assert name not in projected
    text = repr(projected)
    for secret in ("ada.lovelace@real-domain.test", "Ada Lovelace", "+44 20 7946"):
        assert secret not in text
