"""Chunk bounds of a resync, found by a bounded walk of the `_id` index.

The next bound after `lo` is the `_id` `span` places further, asked with one query:
`find({_id: {$gte: lo}}, {_id: 1}).sort({_id: 1}).skip(span).limit(1)`. On MongoDB that is a
covered scan of `span` index keys, and the worker receives one `_id`, never the ids in between.
When a bracket (see `rules.id_ranges`) ends inside a chunk, the chunk ends with it and the
next one starts at the smallest `_id` of the following non-empty bracket (one query too).

The walk is done lazily, one chunk ahead of need (see `tasks.resync`): no process ever holds
the list of bounds, let alone of ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from pymongo.collection import Collection
from stagesync.deployments.production import ReadOnlyCollection
from stagesync.rules.id_ranges import (
    IdRange,
    UnsupportedIdType,
    any_bracket_after,
    brackets_after,
    is_single,
    type_bracket,
)

ID_ONLY = {"_id": 1}
BY_ID = [("_id", 1)]
# A span: one chunk, for a copy that reads by something else than `_id` ranges (by parents,
# `tasks.full_resync.by_parents`), so that planning it walks nothing.
WHOLE_COLLECTION = 0


class IdIndex(Protocol):
    """The `_id` index of one collection (production or staging), read a few keys at a time."""

    def ids(self, query: Mapping[str, Any], *, skip: int, limit: int,
            descending: bool = False) -> list[Any]:
        """`_id`s matching `query`, in `_id` order (or the reverse), after skipping `skip`."""

    def estimated_count(self) -> int:
        """The collection's size from its metadata."""


class ProductionIds:
    def __init__(self, collection: ReadOnlyCollection) -> None:
        self.collection = collection

    def ids(self, query: Mapping[str, Any], *, skip: int, limit: int,
            descending: bool = False) -> list[Any]:
        cursor = self.collection.find(query, ID_ONLY, sort=_order(descending), skip=skip,
                                      limit=limit, hint=_hint(query))
        return _ids(cursor)

    def estimated_count(self) -> int:
        return self.collection.estimated_count()


class StagingIds:
    def __init__(self, collection: Collection[dict[str, Any]]) -> None:
        self.collection = collection

    def ids(self, query: Mapping[str, Any], *, skip: int, limit: int,
            descending: bool = False) -> list[Any]:
        return _ids(self.collection.find(query, ID_ONLY, sort=_order(descending), skip=skip,
                                         limit=limit, hint=_hint(query)))

    def estimated_count(self) -> int:
        return int(self.collection.estimated_document_count())


def _ids(documents: Iterable[Mapping[str, Any]]) -> list[Any]:
    return [document["_id"] for document in documents]


def _order(descending: bool) -> list[tuple[str, int]]:
    return [("_id", -1)] if descending else BY_ID


def _hint(query: Mapping[str, Any]) -> list[tuple[str, int]] | None:
    """The `_id` index for a walk on one range (the plan MongoDB picks anyway; some servers
    otherwise sort every matching document); an `$or` over brackets is left to the planner,
    which runs it as one bounded index scan per bracket."""
    return None if "$or" in query else BY_ID


def first_id(index: IdIndex, after_bracket: str | None = None) -> list[Any]:
    """The smallest `_id` in a bracket after `after_bracket` (any bracket for None), as a
    list of zero or one value (an `_id` can be null)."""
    # The very first `_id` needs no filter: the index's first key, whatever its type.
    query = {} if after_bracket is None else any_bracket_after(after_bracket)
    if query is None:
        return []
    if after_bracket is not None:
        # Usually the bracket just finished is the last one: the index's last key tells, at
        # the cost of one key, before a query over every later bracket.
        last = index.ids({}, skip=0, limit=1, descending=True)
        if not last or type_bracket(last[0]) == after_bracket:
            return []
    found = index.ids(query, skip=0, limit=1)
    if found and type_bracket(found[0]) not in brackets_after(after_bracket):
        # The walk would never end: refuse rather than loop or skip documents.
        raise UnsupportedIdType(
            f"an _id of bracket {type_bracket(found[0])} matched a query for brackets after "
            f"{after_bracket}: the server does not bracket _id types as MongoDB does"
        )
    return found


def plan_chunk(index: IdIndex, lo: Any, span: int, covers_rest: bool = False
               ) -> tuple[IdRange, list[Any] | None]:
    """The chunk that starts at the `_id` `lo`, and where the next chunk starts: `[_id]`, or
    None when the chunk runs to the end of `lo`'s bracket. The next start is then
    `first_id(index, chunk.bracket)`, which the caller asks once this chunk is on its way:
    on the test server that query reads the whole collection, and the chunk need not wait.

    `covers_rest`: the span is at least the collection's estimated size, so the walk would
    find no `_id` `span` places further: the chunk runs to the end of `lo`'s bracket without
    it. (A low estimate only makes that chunk larger, never wrong.) It saves a scan of the
    whole `_id` index per resync of a small collection or sample: milliseconds on MongoDB, a
    read of the whole collection on the test server."""
    if span == WHOLE_COLLECTION:
        return IdRange.of(lo), []
    bracket = type_bracket(lo)
    if not is_single(bracket) and not covers_rest:
        found = index.ids({"_id": {"$gte": lo}}, skip=span, limit=1)
        if found:
            return IdRange.of(lo, found[0]), found
    return IdRange.of(lo), None
