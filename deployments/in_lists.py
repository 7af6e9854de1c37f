"""`$in` lists of bounded length, for every query that looks documents up by a list of values.

A `$in` of thousands of values is one command, but not one unit of work: MongoDB expands it into
that many index bounds and plans the query with all of them, and SecantusDB, the test server,
spends time quadratic in the list's length (measured on an indexed field of 50k documents:
500 values 141 ms, 1,000 values 535 ms, 2,000 values 2.1 s; the same 2,000 values in lists of
200: 281 ms). Stream batches reach 2,000 changes and resync batches more, so every lookup is
split into lists of at most `IN_LIST_MAX`; on MongoDB that costs one round trip per 200 values,
small beside the writes those values lead to.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

IN_LIST_MAX = 200

T = TypeVar("T")


def in_lists(values: Iterable[T], size: int = IN_LIST_MAX) -> Iterator[list[T]]:
    """The values in consecutive lists of at most `size` (none for no values)."""
    batch: list[T] = []
    for value in values:
        batch.append(value)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
