"""Field ownership: how a production document is merged into the staging document it feeds.

Production owns exactly the leaf paths it sent last time (recorded in `_sync.owned`).
A merge sets every leaf production sends now and removes the leaves it sent before but not
any more; everything else in the staging document (QA notes, flags, fixtures, `staging_fields`
from the configuration) is left exactly as it is. Pure functions, no I/O.

`merge_fields` is the in-memory model of a merge. The apply path writes the same result as
`$set`/`$unset` of production's paths (`rules.field_update`), so a QA edit landing
between its read and its write survives; `merge_fields` itself only writes whole documents
whose field names update operators cannot address.

Exactness: values are compared as BSON bytes (`fingerprint`), never as decoded Python values,
where `1 == 1.0 == True` and dicts ignore field order. A sub-document's field order is part of
its value in MongoDB, so production's fields keep production's relative order in staging.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import bson
from stagesync.rules.paths import (
    PLAIN_TYPES,
    Path,
    get_path,
    is_document,
    leaf_paths,
    overlaps,
    set_path,
    unset_path,
)

RESERVED_ROOTS = ("_id", "_sync")
# Verdicts remembered per path: a collection's documents share their paths, and a plan asks
# for each leaf of each document several times. Bounded for documents whose field names are
# data (a map keyed by ids), where few paths repeat.
_VERDICTS_KEPT = 4096


@dataclass(frozen=True)
class FieldRules:
    """What a merge may never write: staging-owned paths and the soft-delete flag."""

    staging_fields: tuple[Path, ...]
    soft_delete_field: Path
    _verdicts: dict[Path, bool] = field(default_factory=dict, init=False, repr=False,
                                        compare=False, hash=False)

    def syncable(self, path: Path) -> bool:
        verdict = self._verdicts.get(path)
        if verdict is None:
            if len(self._verdicts) >= _VERDICTS_KEPT:
                self._verdicts.clear()
            verdict = self._verdicts[path] = self._judge(path)
        return verdict

    def _judge(self, path: Path) -> bool:
        if path[0] in RESERVED_ROOTS or overlaps(path, self.soft_delete_field):
            return False
        return not any(overlaps(path, protected) for protected in self.staging_fields)

    def syncable_leaves(self, production: Mapping[str, Any]) -> list[tuple[Path, Any]]:
        """Production's (path, value) leaves that the sync writes, in document order: what
        a plan derives the content, the owned paths and the update from, computed once."""
        return [(path, value) for path, value in leaf_paths(production) if self.syncable(path)]

    def syncable_content(self, production: Mapping[str, Any]
                         ) -> tuple[list[tuple[Path, Any]], dict[str, Any]]:
        """`syncable_leaves` and the content they make (`content_of`), from one walk.

        The planner needs both for every document it writes; taking the leaves from a chain
        of generators and then setting each one again, path by path, was a third of a plan's
        CPU (issue 31: a resync's pool children spend most of their time planning)."""
        leaves: list[tuple[Path, Any]] = []
        return leaves, self._collect(production, (), leaves)

    def _collect(self, node: Mapping[str, Any], prefix: Path,
                 leaves: list[tuple[Path, Any]]) -> dict[str, Any]:
        content: dict[str, Any] = {}
        verdicts = self._verdicts
        for name, value in node.items():
            path = (*prefix, name)
            kind = type(value)
            # `is_document`, spelled out: this loop runs for every leaf of every document.
            if (kind is dict or (kind not in PLAIN_TYPES and is_document(value))) and value:
                inner = self._collect(value, path, leaves)
                if inner:  # a sub-document none of whose leaves is synced is not written
                    content[name] = inner
            elif verdicts.get(path) or (path not in verdicts and self.syncable(path)):
                leaves.append((path, value))
                content[name] = value
        return content


def owned_paths(production: Mapping[str, Any], rules: FieldRules) -> list[Path]:
    """The leaf paths production owns in this document, in its document order."""
    return [path for path, _ in rules.syncable_leaves(production)]


def production_content(production: Mapping[str, Any], rules: FieldRules) -> dict[str, Any]:
    """The part of a (masked) production document that the sync writes, in its own order."""
    return rules.syncable_content(production)[1]


def content_of(leaves: Iterable[tuple[Path, Any]]) -> dict[str, Any]:
    """The document these syncable leaves make, in their order."""
    content: dict[str, Any] = {}
    for path, value in leaves:
        set_path(content, path, value)
    return content


def fingerprint(content: Mapping[str, Any]) -> str:
    """An exact digest of content: its BSON bytes, so types and field order count."""
    return content_digest(bson.encode(content))


def content_digest(encoded: bytes) -> str:
    """`fingerprint` of content already encoded (the planner needs the bytes' size too)."""
    return hashlib.blake2b(encoded, digest_size=16).hexdigest()


def production_view(document: Mapping[str, Any], owned: Iterable[Path]) -> dict[str, Any]:
    """The part of a staging document that production owns, in the staging document's order.

    An owned leaf that holds a sub-document in staging was an empty sub-document in production
    with staging's own fields put inside since: production's part of it is `{}`.
    """
    wanted, prefixes = owned_sets(tuple(owned))
    return _view(document, (), wanted, prefixes)


def owned_sets(owned: tuple[Path, ...]) -> tuple[frozenset[Path], frozenset[Path]]:
    """The owned paths as a set, and the set of their proper prefixes (the sub-documents on
    the way). Remembered per shape, as `_sync.owned` is decoded (`rules.sync_meta`): a
    resync into a staging that already holds production asks for them for every copy."""
    if len(owned) > _SHAPE_KEPT_MAX_PATHS:
        return _owned_sets(owned)
    return _remembered_owned_sets(owned)


def _owned_sets(owned: tuple[Path, ...]) -> tuple[frozenset[Path], frozenset[Path]]:
    return frozenset(owned), frozenset(path[:i] for path in owned for i in range(1, len(path)))


# Owned-path shapes whose sets are remembered, and the most paths one may have.
_SHAPES_KEPT = 512
_SHAPE_KEPT_MAX_PATHS = 256
_remembered_owned_sets = lru_cache(maxsize=_SHAPES_KEPT)(_owned_sets)


def _view(node: Mapping[str, Any], prefix: Path, wanted: AbstractSet[Path],
          prefixes: AbstractSet[Path]) -> dict[str, Any]:
    view: dict[str, Any] = {}
    for name, value in node.items():
        path = (*prefix, name)
        if path in wanted:
            view[name] = {} if is_document(value) else value
        elif path in prefixes and is_document(value):
            inner = _view(value, path, wanted, prefixes)
            if inner:
                view[name] = inner
    return view


def shared_parents(document: Mapping[str, Any], owned: Iterable[Path]) -> set[Path]:
    """The sub-documents of a staging document that hold production's fields and staging's own.

    Such a sub-document stays where staging put it: update operators leave an existing field
    in place, and a merge never removes one that still holds staging's content.
    """
    wanted, prefixes = owned_sets(tuple(owned))
    shared: set[Path] = set()
    _find_shared(document, (), wanted, prefixes, shared)
    # A sub-document around a shared one cannot move either.
    return shared | {path[:i] for path in shared for i in range(1, len(path))}


def _find_shared(node: Mapping[str, Any], prefix: Path, wanted: AbstractSet[Path],
                 prefixes: AbstractSet[Path], shared: set[Path]) -> None:
    """Walks the owned paths and the sub-documents on their way, nothing else: an owned leaf
    that holds a non-empty sub-document, or a sub-document on the way with a field of
    staging's own, is shared."""
    for name, value in node.items():
        path = (*prefix, name)
        if not is_document(value) or not value:
            continue
        if path in wanted:
            shared.add(path)
        elif path in prefixes:
            if any((*path, child) not in wanted and (*path, child) not in prefixes
                   for child in value):
                shared.add(path)
            _find_shared(value, path, wanted, prefixes, shared)


def shared_last(view: Mapping[str, Any], shared: set[Path], prefix: Path = ()) -> dict[str, Any]:
    """`view` with each shared sub-document moved after its siblings, in name order.

    Production decides the order of its own fields, not where staging's sub-documents stand
    among them; comparisons of production's part of a staging document (verify, the tests)
    use this form so that a sub-document QA put fields into never counts as a reorder.
    """
    fixed: dict[str, Any] = {}
    moved: dict[str, Any] = {}
    for name, value in view.items():
        path = (*prefix, name)
        if isinstance(value, Mapping):
            value = shared_last(value, shared, path)
        (moved if path in shared else fixed)[name] = value
    return {**fixed, **dict(sorted(moved.items()))}


def merge_fields(
    current: Mapping[str, Any] | None,
    production: Mapping[str, Any],
    owned_before: Iterable[Path],
    rules: FieldRules,
) -> tuple[dict[str, Any], list[Path]]:
    """Return the merged body (without `_id` and `_sync`) and the paths production now owns.

    Staging's own fields keep their places; production's fields follow them in production's
    order, which is where `$unset` followed by `$set` puts them too. (A sub-document that
    also holds staging's own fields keeps its place among its siblings.)
    """
    body = {k: copy.deepcopy(v) for k, v in (current or {}).items() if k not in RESERVED_ROOTS}
    owned_now = owned_paths(production, rules)
    values = dict(leaf_paths(production))
    # Take production's paths out (with parents this leaves empty), then put them back in
    # production's order.
    for path in dict.fromkeys([*owned_before, *owned_now]):
        if not rules.syncable(path):
            continue  # the configuration now protects it: staging owns it from here on
        existing = get_path(body, path)
        if (isinstance(existing, Mapping) and existing
                and isinstance(values.get(path, {}), Mapping)):
            # Production owns an empty sub-document here (or did): what is inside is staging's.
            continue
        unset_path(body, path)
    for path in owned_now:
        value = values[path]
        if isinstance(value, Mapping) and isinstance(get_path(body, path), Mapping):
            continue
        set_path(body, path, copy.deepcopy(value))
    return body, owned_now
