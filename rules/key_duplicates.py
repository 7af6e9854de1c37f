"""Which copies give way when a bulk load left several holding one business key.

A resync into an empty target loads without the unique `_sync.key` index and builds it after
(`tasks.full_resync.indexes_after`). Had the index been there, exactly one copy would have
taken the key and the others' writes would have been refused, then planned again through the
apply's key-conflict path. Before the build the load does the same after the fact: one copy of
each key stays, the others are removed and applied again through the normal path, which finds
the key held and decides as for any conflict (a dead letter while the holder keeps it).

The one that stays is the one the index would most likely have let in: a live copy before a
deleted one (which has no claim worth keeping), then the earliest version (the first written),
then the smallest `_id` spelling, so that two workers building at once remove the same ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from stagesync.rules.identity import encode_id
from stagesync.rules.sync_meta import read_meta


def surplus_copies(copies: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The copies of one business key that give way: all but the one that keeps it."""
    ranked = sorted(copies, key=_claim)
    return ranked[1:]


def _claim(copy: Mapping[str, Any]) -> tuple[bool, int, str]:
    meta = read_meta(copy)
    return (meta.deleted or meta.tombstone,
            meta.version if meta.version is not None else 0,
            encode_id(copy["_id"]))
