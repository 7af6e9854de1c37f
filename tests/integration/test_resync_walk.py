"""The resync's chunk bounds and ranges against a real server: every `_id`, of every type,
falls in exactly one chunk, and a chunk resumed after any checkpoint reads exactly the rest."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from bson import Binary, Decimal128, Int64, MaxKey, MinKey, ObjectId, Timestamp
from pymongo import MongoClient
from pymongo.collection import Collection
from stagesync.rules.id_ranges import IdRange
from stagesync.rules.identity import encode_id
from stagesync.tasks.full_resync.walk import StagingIds, first_id, plan_chunk

from tests.support.backends import MongoPair

IDS: list[Any] = [
    MinKey(), None, float("nan"), -7, 0, Int64(3), 3.5, Decimal128("4.25"), 10, 11, 200,
    float("inf"), "", "a", "b", "ba", "z", {"k": 1}, {"k": 2}, Binary(b"\x01", 0),
    Binary(b"\x01\x02", 0), *(ObjectId() for _ in range(5)), False, True,
    datetime(1960, 1, 1, tzinfo=UTC), datetime(2024, 5, 1, tzinfo=UTC), Timestamp(7, 1),
    Timestamp(7, 2), MaxKey(),
]


@pytest.fixture
def mixed(mongo_pair: MongoPair) -> Iterator[Collection[dict[str, Any]]]:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_pair.prod_uri, tz_aware=True)
    database = f"walk_{uuid.uuid4().hex[:8]}"
    collection = client[database]["ids"]
    collection.insert_many([{"_id": value, "n": n} for n, value in enumerate(IDS)])
    yield collection
    client.drop_database(database)
    client.close()


def chunks(collection: Collection[dict[str, Any]], span: int, covers_rest: bool = False
           ) -> list[IdRange]:
    index = StagingIds(collection)
    found: list[IdRange] = []
    following = first_id(index)
    while following:
        chunk, following = plan_chunk(index, following[0], span, covers_rest)
        if following is None:
            following = first_id(index, chunk.bracket)
        found.append(chunk)
        assert len(found) <= len(IDS), "the walk does not end"
    return found


@pytest.mark.parametrize("span", [1, 2, 3, 5, 100])
def test_every_id_of_every_type_is_in_exactly_one_chunk(
    mixed: Collection[dict[str, Any]], span: int,
) -> None:
    seen: list[int] = []
    for chunk in chunks(mixed, span):
        read = [doc["n"] for doc in mixed.find(chunk.query(), {"n": 1}).sort("_id", 1)]
        assert 0 < len(read) <= span
        seen += read
    assert sorted(seen) == list(range(len(IDS)))


@pytest.mark.parametrize("span", [1, 100])
def test_a_span_said_to_cover_the_rest_makes_one_chunk_per_bracket_and_misses_nothing(
    mixed: Collection[dict[str, Any]], span: int,
) -> None:
    """Without the walk: whatever the estimate was (span 1 stands for one far too low), each
    chunk runs to the end of its bracket, and every `_id` is in exactly one."""
    seen: list[int] = []
    for chunk in chunks(mixed, span, covers_rest=True):
        seen += [doc["n"] for doc in mixed.find(chunk.query(), {"n": 1})]
    assert sorted(seen) == list(range(len(IDS)))
    assert len(chunks(mixed, span, covers_rest=True)) <= len(chunks(mixed, 100))


def test_a_chunk_resumed_after_any_checkpoint_reads_exactly_the_rest(
    mixed: Collection[dict[str, Any]],
) -> None:
    for chunk in chunks(mixed, 4):
        whole = list(mixed.find(chunk.query(), {"n": 1}).sort("_id", 1))
        for position, document in enumerate(whole):
            rest = [d["n"] for d in mixed.find(
                chunk.query(after=encode_id(document["_id"])), {"n": 1}).sort("_id", 1)]
            assert rest == [d["n"] for d in whole[position + 1:]]
