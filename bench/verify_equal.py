"""Does staging equal production? A direct, whole-collection comparison for benchmark runs.

Why its own code and not `stagesync verify`: the baselines are not stagesync, and a benchmark
must be able to check them with nothing but two direct connections. It connects directly, never
through the delay proxy. (The product's runs may use the product's own `stagesync verify`.)

Equality is strict on BSON types (an `int` is not a `float`, a datetime stored as a string is a
mismatch), on every field production has, recursively. A staging field production does not have
is a mismatch too, unless its dotted path is listed in `ignore_fields` (sync metadata,
soft-delete markers, staging-owned fields such as `customer.qaTag`). Staging documents marked
soft-deleted are not compared: they stand for production documents that no longer exist.

For a system that copies only part of production, `include` says which production documents
it copies (the others must have no live staging document: one counts as extra); `expected`
turns a production document into what staging must hold, e.g. references translated to the
staging `_id`s of the referenced copies.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from collections.abc import Collection as Fields
from dataclasses import dataclass, field
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection


@dataclass
class VerifyResult:
    production: int = 0  # documents in production
    compared: int = 0  # production documents matched to a live staging document
    missing: int = 0  # production documents with no live staging counterpart
    extra: int = 0  # live staging documents with no (or a duplicate) production counterpart
    different: int = 0  # matched documents that differ
    seconds: float = 0.0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.missing == self.extra == self.different == 0

    def summary(self) -> str:
        verdict = "PASS" if self.ok else "FAIL"
        return (f"{verdict}: {self.production} production docs, {self.compared} compared, "
                f"{self.missing} missing, {self.extra} extra, {self.different} different "
                f"({self.seconds:.1f}s)")

    def _note(self, text: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(text)

    def add(self, other: VerifyResult, label: str) -> None:
        """Count `other` (another collection of the same run) in this result; its examples are
        prefixed with `label` so a row's notes say which collection differs."""
        for name in ("production", "compared", "missing", "extra", "different"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.seconds += other.seconds
        self.examples.extend(f"{label}: {example}" for example in other.examples)


def same(a: Any, b: Any) -> bool:
    """Equal values of the same BSON types, recursively (key order ignored)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def verify_equal(
    prod: Collection[Any],
    staging: Collection[Any],
    match_on: tuple[str, ...] = ("_id",),
    ignore_fields: Fields[str] = (),
    soft_delete_field: str | None = None,
    include: Callable[[dict[str, Any]], bool] | None = None,
    expected: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> VerifyResult:
    """Compare every production document with its staging counterpart, matched on `match_on`
    (`("_id",)`, or business key fields when staging `_id`s differ). Only the production
    documents `include` accepts are compared (default: all), as `expected` rewrites them."""
    started = time.monotonic()
    result = VerifyResult()
    by_id = match_on == ("_id",)
    ignored = set(ignore_fields) | ({soft_delete_field} if soft_delete_field else set())
    live: dict[tuple[Any, ...], dict[str, Any]] = {}
    for doc in staging.find({}):
        if soft_delete_field and doc.get(soft_delete_field):
            continue
        key = _key(doc, match_on)
        if key in live:
            result.extra += 1
            result._note(f"duplicate live staging documents for {key}")
        live[key] = doc
    for doc in prod.find({}):
        if include is not None and not include(doc):
            continue  # not copied: a live staging document for it stays in `live`, as extra
        result.production += 1
        if expected is not None:
            doc = expected(doc)
        key = _key(doc, match_on)
        twin = live.pop(key, None)
        if twin is None:
            result.missing += 1
            result._note(f"missing in staging: {key}")
            continue
        result.compared += 1
        problem = _difference(doc, twin, ignored, compare_id=by_id)
        if problem:
            result.different += 1
            result._note(f"{key}: {problem}")
    result.extra += len(live)
    for key in list(live)[:3]:
        result._note(f"extra in staging: {key}")
    result.seconds = time.monotonic() - started
    return result


def _key(doc: dict[str, Any], fields: tuple[str, ...]) -> tuple[Any, ...]:
    out = []
    for path in fields:
        value: Any = doc
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        out.append(repr(value))  # repr keeps ObjectId("ab") and "ab" apart; hashable
    return tuple(out)


def _difference(
    prod: dict[str, Any], staging: dict[str, Any], ignored: set[str], compare_id: bool,
    path: str = "",
) -> str | None:
    """The first difference, as text; `ignored` holds dotted paths of staging-only fields."""
    for name, value in prod.items():
        if name == "_id" and not path and not compare_id:
            continue
        dotted = f"{path}{name}"
        if name not in staging:
            return f"field {dotted!r} missing"
        other = staging[name]
        if isinstance(value, dict) and isinstance(other, dict):
            problem = _difference(value, other, ignored, compare_id, f"{dotted}.")
            if problem:
                return problem
        elif not same(value, other):
            return f"field {dotted!r}: production {value!r} != staging {other!r}"
    for name in staging:
        dotted = f"{path}{name}"
        if name not in prod and dotted != "_id" and dotted not in ignored:
            return f"field {dotted!r} only in staging"
    return None


def verify_uris(
    prod_uri: str, staging_uri: str, source: str, target: str, **options: Any
) -> VerifyResult:
    """`verify_equal` over fresh direct connections; `source`/`target` are `db.collection`."""
    prod_client: MongoClient[Any] = MongoClient(prod_uri, serverSelectionTimeoutMS=10000)
    staging_client: MongoClient[Any] = MongoClient(staging_uri, serverSelectionTimeoutMS=10000)
    try:
        return verify_equal(_collection(prod_client, source), _collection(staging_client, target),
                            **options)
    finally:
        prod_client.close()
        staging_client.close()


def _collection(client: MongoClient[Any], namespace: str) -> Collection[Any]:
    db, _, coll = namespace.partition(".")
    return client[db][coll]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare production and staging documents.")
    parser.add_argument("--prod", required=True, help="production URI (direct, not proxied)")
    parser.add_argument("--staging", required=True, help="staging URI (direct, not proxied)")
    parser.add_argument("--source", default="production.orders")
    parser.add_argument("--target", default="staging.orders")
    parser.add_argument("--match-on", default="_id", help="_id, or comma-separated key fields")
    parser.add_argument("--ignore", default="", help="comma-separated staging-only fields")
    parser.add_argument("--soft-delete-field", default=None)
    args = parser.parse_args(argv)
    result = verify_uris(
        args.prod, args.staging, args.source, args.target,
        match_on=tuple(args.match_on.split(",")),
        ignore_fields=[f for f in args.ignore.split(",") if f],
        soft_delete_field=args.soft_delete_field,
    )
    print(result.summary())
    for example in result.examples:
        print(f"  {example}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
