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
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from bson import Binary, json_util
from bson.json_util import CANONICAL_JSON_OPTIONS

from rules.paths import Path, get_path, split_dotted

_ABSENT = object()


def encode_id(value: Any) -> str:
    """A production `_id` as a type-preserving string.

    A UUID arrives as `uuid.UUID` or as a subtype-4 `Binary`, depending on the client's
    `uuidRepresentation`; both are the same BSON value and get the same spelling.
    """
    if isinstance(value, uuid.UUID):
        value = Binary.from_uuid(value)
    return json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS)


def decode_id(encoded: str) -> Any:
    return json_util.loads(encoded, json_options=CANONICAL_JSON_OPTIONS)


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
    canonical = json_util.dumps(list(values), json_options=CANONICAL_JSON_OPTIONS)
    return hashlib.sha256(canonical.encode()).hexdigest()
