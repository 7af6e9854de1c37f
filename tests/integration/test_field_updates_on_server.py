"""The write form of a merge, checked on a real server against its in-memory model.

`plan_field_update` turns a merge into `$set`/`$unset` (or an update pipeline) computed
without staging's content; `merge_fields` computes the merged document in memory. For random
production documents and random staging-only fields, the server's result of the update must
be the in-memory merge: the same fields with the same BSON types, production's fields in
production's order (where staging's own fields stand among them may differ: update operators
leave a field in place, the in-memory merge moves it to the end; so may a sub-document that
holds fields of both, see `shared_last`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import bson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pymongo import MongoClient
from pymongo.collection import Collection
from stagesync.rules.field_update import plan_field_update
from stagesync.rules.merge import merge_fields, production_view, shared_last, shared_parents
from stagesync.rules.paths import Path

from tests.support.backends import MongoPair
from tests.unit.test_merge import (
    RULES,
    documents,
    sorted_keys,
    staging_entries,
    staging_only_fields,
    with_fields,
)

IDS = itertools.count()


@pytest.fixture(scope="module")
def scratch(mongo_pair: MongoPair) -> Iterator[Collection[dict[str, Any]]]:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_pair.staging_uri)
    collection = client["stagesync_field_updates"]["documents"]
    yield collection
    client.drop_database("stagesync_field_updates")
    client.close()


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(documents, documents, staging_entries, st.booleans())
# Production starts writing into a sub-document QA created: it stays where QA put it.
@example({"c": {"a": None}}, {"c": {"a": 0}, "qa": {"a": 0}}, [(("qa",), "qa1", None)], True)
def test_the_update_writes_exactly_the_in_memory_merge(
    scratch: Collection[dict[str, Any]],
    first: dict[str, Any],
    second: dict[str, Any],
    entries: list[tuple[Path, str, Any]],
    qa_edits_after_first: bool,
) -> None:
    staging_fields = staging_only_fields(entries, first, second)
    start = {} if qa_edits_after_first else with_fields({}, staging_fields)
    body, owned = merge_fields(start, first, (), RULES)
    if qa_edits_after_first:
        body = with_fields(body, staging_fields)
    expected, owned_now = merge_fields(body, second, owned, RULES)

    document_id = next(IDS)
    scratch.insert_one({"_id": document_id, **body})
    field_update = plan_field_update(owned, RULES.syncable_leaves(second), RULES,
                                     {"_sync": {"v": 2}})
    assert field_update is not None
    scratch.update_one({"_id": document_id}, field_update.update)

    stored = scratch.find_one({"_id": document_id})
    assert stored is not None
    del stored["_id"]
    assert stored.pop("_sync") == {"v": 2}
    assert bson.encode(sorted_keys(stored)) == bson.encode(sorted_keys(expected)), (
        field_update.update, stored, expected)
    shared = shared_parents(expected, owned_now)
    assert shared == shared_parents(stored, owned_now)
    assert bson.encode(shared_last(production_view(stored, owned_now), shared)) == bson.encode(
        shared_last(production_view(expected, owned_now), shared))


def test_names_update_operators_cannot_address_have_no_update_form() -> None:
    assert plan_field_update((), RULES.syncable_leaves({"a.b": 1}), RULES, {}) is None
    assert plan_field_update((), RULES.syncable_leaves({"x": {"$weird": 1}}), RULES, {}) is None
    assert plan_field_update((("gone.name",),), RULES.syncable_leaves({"x": 1}), RULES, {}) is None


def test_plain_changes_use_update_operators_and_keep_order() -> None:
    owned = (("a",), ("c", "x"), ("c", "y"))
    production = {"a": 2, "c": {"x": 1.0}, "d": 1, "e": 2}
    update = plan_field_update(owned, RULES.syncable_leaves(production), RULES, {"_sync": 1})
    assert update is not None and isinstance(update.update, dict)
    assert update.update == {"$set": {"a": 2, "c.x": 1.0, "d": 1, "e": 2, "_sync": 1},
                             "$unset": {"c.y": ""}}


def test_reorders_and_structure_changes_use_a_pipeline() -> None:
    for owned, production in [
        ((("a",), ("b",)), {"b": 1, "a": 1}),        # production reordered its fields
        ((("a",),), {"z": 1, "a": 1}),               # a new field before an old one
        ((("a",),), {"a": 1, "z": 1, "b": 1}),       # new fields MongoDB would sort
        ((("a",),), {"a": {"b": 1}}),                # a leaf becomes a parent
        ((("a", "b"),), {"a": 1}),                   # and back
        ((("a", "b"), ("c",)), {"c": 1}),            # a parent left empty
        ((), {"a": {}}),                             # an empty sub-document
    ]:
        update = plan_field_update(owned, RULES.syncable_leaves(production), RULES, {"_sync": 1})
        assert update is not None and isinstance(update.update, list), (owned, production)
