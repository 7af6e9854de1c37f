"""`$in` lists of bounded length, for every query that looks documents up by a list of values.

A `$in` of thousands of values is one command, but not one unit of work: MongoDB expands it into
that many index bounds and plans the query with all of them, and SecantusDB, the test server,
spends time quadratic in the list's length (measured on an indexed field of 50k documents:
500 values 141 ms, 1,000 values 535 ms, 2,000 values 2.1 s; the same 2,000 values in lists of
200: 281 ms). Stream batches reach 2,000 changes and resync batches more, so every lookup is
split into lists of at most `in_list_max`; on MongoDB that costs one round trip per list,
small beside the writes those values lead to.

The length is the top-level setting `in_list_max` (MongoDB's right value, 1,000, by default: a
list of 1,000-2,000 `_id`s is one round trip there); the tests and the benchmark set the test
server's 200. Every process applies it once, where it loads its configuration (`configure`,
called by the CLI and by the workers' runtime), because the lookups run deep in code that is
handed collections, not the configuration.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

IN_LIST_MAX = 1000  # the default of the `in_list_max` setting

T = TypeVar("T")

_configured = IN_LIST_MAX


def configure(size: int) -> None:
    """Make `size` this process's list length (the `in_list_max` setting)."""
    global _configured
    if size < 1:
        raise ValueError(f"in_list_max must be at least 1, not {size}")
    _configured = size


def configured() -> int:
    """This process's list length."""
    return _configured


def in_lists(values: Iterable[T], size: int | None = None) -> Iterator[list[T]]:
    """The values in consecutive lists of at most `size` (default: the configured
    `in_list_max`), none for no values."""
    size = _configured if size is None else size
    batch: list[T] = []
    for value in values:
        batch.append(value)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
