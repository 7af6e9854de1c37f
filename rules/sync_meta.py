"""The `_sync` sub-document every synced staging document carries (documented in the README).

    _sync.pid        production `_id`, canonical Extended JSON (indexed, unique)
    _sync.key        business-key digest (unique among documents that hold one)
    _sync.v          version of the apply that last wrote it (see DESIGN: versions order reads)
    _sync.at         when its content last changed
    _sync.owned      leaf paths production owns, in production's order, compressed (below)
    _sync.fp         fingerprint of production's masked content as last written (exact BSON)
    _sync.deletedAt  when production deleted it (soft delete); absent while live
    _sync.tombstone  true on a marker for a production document deleted before it was synced
    _sync.expireAt   when such a marker may go (TTL index)
    _sync.dl         version of a dead letter recorded for it while an apply may have been
                     about to skip the dead-letter clear (`state.dead_letters`); the next
                     write of the document expects it as read, and drops it

`owned` is stored compactly: the escaped dotted paths, each behind a NUL (a byte no field name
can hold), zlib-compressed into one binary value. Listing every leaf path as its own string
made documents with many small fields up to twice their production size, so some were
refused by staging although production held them fine. Documents written before this format
hold a list of strings, which is still read.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property, lru_cache
from typing import Any

from bson import Binary
from stagesync.rules.paths import Path, join_dotted, split_dotted

SYNC = "_sync"
PID = "pid"
KEY = "key"
VERSION = "v"
CHANGED_AT = "at"
OWNED = "owned"
FINGERPRINT = "fp"
DELETED_AT = "deletedAt"
TOMBSTONE = "tombstone"
EXPIRE_AT = "expireAt"
DEAD_LETTER = "dl"

# Dotted names for queries, updates and indexes.
PID_FIELD = f"{SYNC}.{PID}"
KEY_FIELD = f"{SYNC}.{KEY}"
VERSION_FIELD = f"{SYNC}.{VERSION}"
CHANGED_AT_FIELD = f"{SYNC}.{CHANGED_AT}"
DELETED_AT_FIELD = f"{SYNC}.{DELETED_AT}"
EXPIRE_AT_FIELD = f"{SYNC}.{EXPIRE_AT}"
DEAD_LETTER_FIELD = f"{SYNC}.{DEAD_LETTER}"

_SEPARATOR = "\x00"
# Shapes of owned paths whose encoding is remembered (`encode_owned`), and the most leaves one
# may have.
_SHAPES_KEPT = 512
_SHAPE_KEPT_MAX_LEAVES = 256
_SHAPE_KEPT_MAX_BYTES = 4096  # compressed: a few hundred leaves


@dataclass(frozen=True)
class SyncMeta:
    pid: str | None
    key: str | None
    version: int | None
    # `_sync.owned` as stored: decoded only when asked for (`owned`). Most plans never need
    # it (an unchanged fingerprint, a delete, a superseded read), and decompressing and
    # splitting every staging document's paths was a sixth of a worker's CPU.
    stored_owned: Any
    deleted_at: datetime | None
    tombstone: bool
    fingerprint: str | None = None

    @cached_property
    def owned(self) -> tuple[Path, ...]:
        """The leaf paths production owns, in production's document order."""
        return decode_owned(self.stored_owned)

    @property
    def synced(self) -> bool:
        return self.version is not None

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None


def encode_owned(paths: Iterable[Path]) -> Binary:
    """`_sync.owned` of a document whose owned leaves are `paths`, in this order.

    Remembered by the paths themselves: a collection's documents mostly share their shape, and
    escaping, joining and compressing the same paths again was a quarter of the CPU of
    planning a created copy (issue 31). Documents with very many leaves are not remembered:
    those whose field names are data (a map keyed by ids) seldom repeat a shape, and would
    make the remembered ones large."""
    shape = tuple(paths)
    if len(shape) > _SHAPE_KEPT_MAX_LEAVES:
        return _compressed(shape)
    return _compressed_shape(shape)


def _compressed(paths: tuple[Path, ...]) -> Binary:
    # Each path behind its separator, so that a path with one empty field name differs from
    # no path at all.
    joined = "".join(_SEPARATOR + join_dotted(path) for path in paths)
    return Binary(zlib.compress(joined.encode(), 6))


# Binary is immutable (a bytes subclass), so one value can serve every document of a shape.
_compressed_shape = lru_cache(maxsize=_SHAPES_KEPT)(_compressed)


def _decompressed(raw: bytes) -> tuple[Path, ...]:
    text = zlib.decompress(raw).decode()
    return tuple(split_dotted(p) for p in text.split(_SEPARATOR)[1:])


_decompressed_shape = lru_cache(maxsize=_SHAPES_KEPT)(_decompressed)


def decode_owned(raw: Any) -> tuple[Path, ...]:
    if isinstance(raw, bytes):  # Binary subtype 0 decodes as bytes
        if len(raw) > _SHAPE_KEPT_MAX_BYTES:
            return _decompressed(bytes(raw))
        # The copies of one shape store the same bytes (`encode_owned`).
        return _decompressed_shape(bytes(raw))
    if isinstance(raw, list):  # the earlier format: one string per path
        return tuple(split_dotted(p) for p in raw if isinstance(p, str))
    return ()


def read_meta(document: Mapping[str, Any] | None) -> SyncMeta:
    raw = document.get(SYNC) if document else None
    if not isinstance(raw, Mapping):
        return SyncMeta(None, None, None, None, None, False)
    version = raw.get(VERSION)
    fingerprint = raw.get(FINGERPRINT)
    return SyncMeta(
        pid=raw.get(PID),
        key=raw.get(KEY),
        version=int(version) if isinstance(version, int) else None,
        stored_owned=raw.get(OWNED),
        deleted_at=raw.get(DELETED_AT),
        tombstone=bool(raw.get(TOMBSTONE)),
        fingerprint=fingerprint if isinstance(fingerprint, str) else None,
    )


def dead_letter_mark(document: Mapping[str, Any]) -> int | None:
    """`_sync.dl` of a staging document as read (None: unmarked), without decoding the rest."""
    raw = document.get(SYNC)
    mark = raw.get(DEAD_LETTER) if isinstance(raw, Mapping) else None
    return mark if isinstance(mark, int) else None
