"""How a document is recognised across deployments: encoded production `_id`s and business keys.

Production `_id`s travel through Redis and are stored in staging (`_sync.pid`) as canonical
Extended JSON strings. One spelling everywhere (messages, dead letters, done reports, the
pending references, staging) means no decoding on the hot path and one index type. Canonical
Extended JSON keeps apart what MongoDB's comparisons would merge: `1`, `NumberLong(1)` and
`1.0` are equal to a query and to a unique index, but each gets its own spelling here, so a
copy is found by exactly the `_id` it came from. (Strings compare under collations; stagesync
reads `_sync.pid` with the simple collation, and its index has it.)
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from bson import Binary, ObjectId, json_util
from bson.json_util import CANONICAL_JSON_OPTIONS
from stagesync.rules.paths import Path, get_path, split_dotted

_ABSENT = object()


_INT32 = range(-(2**31), 2**31)
_INT64 = range(-(2**63), 2**63)
_SPELT = (ObjectId, str, int)  # the types `encode_id` spells itself (ints within int64)
_OID_PREFIX = '{"$oid": "'
_INT_PREFIX = '{"$numberInt": "'


def encode_id(value: Any) -> str:
    """A production `_id` as a type-preserving string.

    A UUID arrives as `uuid.UUID` or as a subtype-4 `Binary`, depending on the client's
    `uuidRepresentation`; both are the same BSON value and get the same spelling.

    ObjectIds, strings and plain ints (nearly every `_id`) are spelt here directly, exactly
    as `json_util` spells them (a property test holds the two together): this runs several
    times per change on every side, and `json_util` costs about fifteen times as much.
    """
    kind = type(value)
    if kind is ObjectId:
        return f'{_OID_PREFIX}{value}"}}'
    if kind is str:
        return json.dumps(value)
    if kind is int and value in _INT64:
        name = "numberInt" if value in _INT32 else "numberLong"
        return f'{{"${name}": "{value}"}}'
    if isinstance(value, uuid.UUID):
        value = Binary.from_uuid(value)
    return json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS)


def decode_id(encoded: str) -> Any:
    """The `_id` `encode_id` spelt (the common spellings read directly, like `encode_id`)."""
    if len(encoded) == 36 and encoded.startswith(_OID_PREFIX) and encoded.endswith('"}'):
        return ObjectId(encoded[10:34])
    if encoded.startswith('"'):
        return json.loads(encoded)
    if encoded.startswith(_INT_PREFIX) and encoded.endswith('"}'):
        return int(encoded[len(_INT_PREFIX):-2])
    return json_util.loads(encoded, json_options=CANONICAL_JSON_OPTIONS)


# The first and the last spelling of an ObjectId. Every ObjectId is spelt between them, and
# their spellings (24 hex digits in one frame) sort as the ObjectIds do: the copies of a range
# of production's ObjectIds are a range of `_sync.pid`, which a resync reads with one query.
# (Ints, say, do not sort so: spelt as strings, 10 comes between 1 and 9.)
FIRST_OBJECT_ID = f'{_OID_PREFIX}{"0" * 24}"}}'
LAST_OBJECT_ID = f'{_OID_PREFIX}{"f" * 24}"}}'


def spells_object_id(pid: str) -> bool:
    return FIRST_OBJECT_ID <= pid <= LAST_OBJECT_ID


def key_paths(business_key: Sequence[str]) -> list[Path]:
    return [split_dotted(field) for field in business_key]


def business_key(document: Mapping[str, Any], paths: Sequence[Path]) -> list[Any] | None:
    """The values of the business-key fields, or None when any is missing or null.

    A null key cannot tell two records apart, so it counts as missing.
    """
    values = []
    for path in paths:
        value = get_path(document, path, _ABSENT)
        if value is _ABSENT or value is None:
            return None
        values.append(value)
    return values


def key_digest(values: Sequence[Any]) -> str:
    """A fixed-size, type-preserving digest of a business key, held in `_sync.key`.

    The unique index sits on this digest instead of the raw fields so that a compound key of
    any size and type costs one short indexed string.
    """
    values = list(values)
    if all(type(value) in _SPELT for value in values):
        # `json_util` writes a list as its elements' spellings joined by ", ": the same text,
        # at a fraction of the cost (a property test holds the two together).
        canonical = "[" + ", ".join(encode_id(value) for value in values) + "]"
    else:
        canonical = json_util.dumps(values, json_options=CANONICAL_JSON_OPTIONS)
    return hashlib.sha256(canonical.encode()).hexdigest()
