"""`_id` ranges that a resync chunk reads, for collections whose `_id`s mix BSON types.

MongoDB range operators use type bracketing: `{_id: {$gte: 5}}` matches numbers only, never a
string or an ObjectId (MongoDB manual, "Type Bracketing in Query Predicates"). A chunk is
therefore a range inside one bracket, and the brackets are visited in BSON comparison order
(MinKey, null, numbers, strings, objects, binary data, ObjectId, booleans, dates, timestamps,
code, MaxKey). NaN sorts below every other number yet no range matches it, so it is a bracket
of its own, matched by equality (as are MinKey, null and MaxKey: each holds at most one `_id`).

Everything here is pure: it builds filters, it never queries.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Timestamp
from bson.datetime_ms import DatetimeMS
from stagesync.rules.identity import decode_id, encode_id

# Brackets in BSON comparison order, with the smallest value of each type, or the single value
# of the brackets that hold one. Dates start at 0001-01-01: the smallest date pymongo decodes
# by default, so a date `_id` below it could not be read by stagesync anyway.
_SMALLEST_DATE = datetime(1, 1, 1, tzinfo=UTC)
BRACKETS: tuple[str, ...] = (
    "minkey", "null", "nan", "number", "string", "object", "binary", "objectid", "bool",
    "date", "timestamp", "code", "code_with_scope", "maxkey",
)
_SMALLEST: dict[str, Any] = {
    "number": float("-inf"),
    "string": "",
    "object": {},
    "binary": Binary(b"", 0),
    "objectid": ObjectId(b"\x00" * 12),
    "bool": False,
    "date": _SMALLEST_DATE,
    "timestamp": Timestamp(0, 0),
    "code": Code(""),
    "code_with_scope": Code("", {}),
}
_SINGLE: dict[str, Any] = {
    "minkey": MinKey(),
    "null": None,
    "nan": float("nan"),
    "maxkey": MaxKey(),
}


class UnsupportedIdType(ValueError):
    """An `_id` of a type a range cannot address (deprecated BSON types)."""


def type_bracket(value: Any) -> str:
    """The comparison bracket of an `_id` value (see module doc)."""
    if isinstance(value, MinKey):
        return "minkey"
    if isinstance(value, MaxKey):
        return "maxkey"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else "number"
    if isinstance(value, Decimal128):
        return "nan" if value.to_decimal().is_nan() else "number"
    if isinstance(value, int | Int64):
        return "number"
    if isinstance(value, Code):  # before str: Code is a str subclass
        return "code" if value.scope is None else "code_with_scope"
    if isinstance(value, str):
        return "string"
    if isinstance(value, ObjectId):
        return "objectid"
    if isinstance(value, Binary | bytes | uuid.UUID):
        return "binary"
    if isinstance(value, Timestamp):
        return "timestamp"
    if isinstance(value, DatetimeMS | datetime):
        return "date"
    if isinstance(value, dict):
        return "object"
    raise UnsupportedIdType(f"an _id of type {type(value).__name__} cannot be ranged over")


def is_single(bracket: str) -> bool:
    """Whether the bracket holds a single value (matched by equality, never by a range)."""
    return bracket in _SINGLE


def whole_bracket(bracket: str) -> dict[str, Any]:
    """A filter on `_id` matching every value of the bracket."""
    if bracket in _SINGLE:
        return {"_id": _SINGLE[bracket]}
    return {"_id": {"$gte": _SMALLEST[bracket]}}


def brackets_after(bracket: str | None) -> tuple[str, ...]:
    """The brackets that sort after `bracket` (all of them for None)."""
    if bracket is None:
        return BRACKETS
    return BRACKETS[BRACKETS.index(bracket) + 1:]


def any_bracket_after(bracket: str | None) -> dict[str, Any] | None:
    """A filter matching every `_id` in a later bracket; None when there is none."""
    later = brackets_after(bracket)
    if not later:
        return None
    clauses = [whole_bracket(b) for b in later]
    return clauses[0] if len(clauses) == 1 else {"$or": clauses}


@dataclass(frozen=True)
class IdRange:
    """A chunk: `_id`s from `lo` (inclusive) up to `hi` (exclusive; None: to the end of
    `lo`'s bracket), both in `lo`'s bracket, kept as canonical Extended JSON so the types
    survive Redis and the state database."""

    lo: str
    hi: str | None = None

    @classmethod
    def of(cls, lo: Any, hi: Any = None) -> IdRange:
        if hi is not None and type_bracket(hi) != type_bracket(lo):
            raise ValueError("a chunk's bounds must share one type bracket")
        return cls(encode_id(lo), None if hi is None else encode_id(hi))

    @property
    def bracket(self) -> str:
        return type_bracket(decode_id(self.lo))

    def query(self, after: str | None = None) -> dict[str, Any]:
        """The filter on `_id` of this range, or of its part after the `_id` `after`."""
        lo = decode_id(self.lo)
        bracket = type_bracket(lo)
        if is_single(bracket):
            # One value: nothing follows it inside the bracket.
            return {"_id": {"$in": []}} if after is not None else {"_id": lo}
        bounds: dict[str, Any] = (
            {"$gt": decode_id(after)} if after is not None else {"$gte": lo}
        )
        if self.hi is not None:
            bounds["$lt"] = decode_id(self.hi)
        return {"_id": bounds}


def with_filter(query: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    """A range combined with a collection's configured `filter` (a read, never a write)."""
    return {"$and": [query, dict(extra)]} if extra else query
