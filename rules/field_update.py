"""How a merge is written: `$set`/`$unset` of production's paths, never a whole document.

A sync must not touch staging's own fields, even ones a QA engineer edits between the apply's
read and its write; so the write names only the paths production owns (plus the soft-delete
flag and `_sync`), under the version compare-and-swap of its filter, and computes nothing
from staging's content (which the apply does not even read).

Two forms, both from the same inputs (paths production owned before, the masked production
document):
- update operators, when they give the exact result: no parent of a path turns into a leaf
  or back, no parent is left empty, no empty sub-document to keep staging content in, and
  field order comes out as production's. MongoDB 5.0+ applies `$set` to new fields in
  lexicographic order (numeric names in numeric order), so new fields must already be in
  that order and follow the fields production sent before;
- otherwise an update pipeline: `$unset` production's old and new paths, remove the
  sub-documents this left empty, then `$set` the new paths in production's order (values as
  `$literal`), keeping a sub-document that production sends empty when staging put fields
  of its own in it. `rules.merge.merge_fields` is the same merge, in memory.

None means no update form can address the paths (a field name with a dot or a leading `$`):
the caller writes the merged document whole (`$replaceWith` of a `$literal`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from stagesync.rules.merge import FieldRules
from stagesync.rules.paths import Path, addressable, is_document, update_path

Update = dict[str, Any] | list[dict[str, Any]]


@dataclass(frozen=True)
class FieldUpdate:
    """An update document (`$set`/`$unset`) or pipeline, ready for `UpdateOne`."""

    update: Update


def plan_field_update(
    owned_before: Sequence[Path],
    leaves: Sequence[tuple[Path, Any]],
    rules: FieldRules,
    also_set: Mapping[str, Any],
) -> FieldUpdate | None:
    """The write that turns production's part of a staging document into the one whose
    syncable leaves (`FieldRules.syncable_leaves`) are `leaves`.

    `also_set` (the soft-delete flag, `_sync`) is written with it, by top-level-safe paths.
    """
    shape = _shape_of(tuple(owned_before), tuple(path for path, _ in leaves), rules)
    if shape.names is None:
        return None
    if shape.exact and not any(is_document(value) for _, value in leaves):
        # An empty sub-document among the values (non-empty ones are walked into leaves)
        # needs the pipeline: it keeps staging's content in it (`$cond`).
        update: dict[str, Any] = {
            "$set": {**dict(zip(shape.names, [value for _, value in leaves], strict=True)),
                     **also_set}
        }
        if shape.removed:
            update["$unset"] = dict.fromkeys(shape.removed, "")
        return FieldUpdate(update)
    return FieldUpdate(_pipeline(shape.before, leaves, also_set))


@dataclass(frozen=True)
class _Shape:
    """What the update between two shapes of a document (its owned paths before and now)
    is, whatever the values: an update of a collection's documents mostly keeps their shape,
    and deciding it again for each one was a third of planning an update (issue 31)."""

    before: tuple[Path, ...]  # the paths owned before that the sync still writes
    names: tuple[str, ...] | None  # the update paths of the leaves now; None: not addressable
    exact: bool  # update operators give the exact result (unless a value is an empty document)
    removed: tuple[str, ...]  # update paths owned before and not now, sorted


def _shape_of(owned_before: tuple[Path, ...], owned_now: tuple[Path, ...],
              rules: FieldRules) -> _Shape:
    if len(owned_before) + len(owned_now) > _SHAPE_KEPT_MAX_PATHS:
        return _shape(owned_before, owned_now, rules)
    return _remembered_shape(owned_before, owned_now, rules)


def _shape(owned_before: tuple[Path, ...], owned_now: tuple[Path, ...],
           rules: FieldRules) -> _Shape:
    before = tuple(path for path in owned_before if rules.syncable(path))
    if not all(addressable(path) for path in [*owned_now, *before]):
        return _Shape(before, None, False, ())
    removed = sorted(set(before) - set(owned_now))
    return _Shape(before, tuple(update_path(path) for path in owned_now),
                  _operators_exact(before, owned_now),
                  tuple(update_path(path) for path in removed))


# Shapes remembered, and the most paths (before and now) one may have: documents whose field
# names are data (a map keyed by ids) seldom repeat a shape, and would make the cache large.
_SHAPES_KEPT = 512
_SHAPE_KEPT_MAX_PATHS = 512
_remembered_shape = lru_cache(maxsize=_SHAPES_KEPT)(_shape)


def _operators_exact(before: Sequence[Path], now: Sequence[Path]) -> bool:
    """Whether `$set`/`$unset` give the exact result, for values none of which is a
    sub-document (the caller checks those)."""
    now_set, before_set = set(now), set(before)
    now_parents = _parents(now)
    for path in before_set ^ now_set:
        # A leaf that becomes a parent or the reverse: `$set` of `a.b` fails on a scalar `a`.
        if path in now_parents or path in _parents(before):
            return False
    for path in before_set - now_set:
        # Removing the last path under a parent would leave it behind as `{}`.
        if any(path[:i] not in now_parents for i in range(1, len(path))):
            return False
    return _order_kept(before, now)


def _parents(paths: Sequence[Path]) -> set[Path]:
    return {path[:i] for path in paths for i in range(1, len(path))}


def _children(paths: Sequence[Path]) -> dict[Path, list[str]]:
    """For each parent (the root is `()`), its child names in first-seen order."""
    children: dict[Path, dict[str, None]] = {}  # dicts: ordered sets, O(1) membership
    for path in paths:
        for i in range(len(path)):
            children.setdefault(path[:i], {})[path[i]] = None
    return {parent: list(names) for parent, names in children.items()}


def _order_kept(before: Sequence[Path], now: Sequence[Path]) -> bool:
    """Whether `$set` leaves production's fields in production's order under every parent."""
    if list(before) == list(now):
        return True  # the same fields in the same order: most updates
    old = _children(before)
    for parent, names in _children(now).items():
        previous = old.get(parent, [])
        kept = [name for name in names if name in previous]
        if kept != [name for name in previous if name in names]:
            return False  # production reordered fields that staging already holds
        added = names[len(kept):]
        if names[: len(kept)] != kept:
            return False  # a new field in the middle: `$set` would append it at the end
        if any(name.isdigit() for name in added) or added != sorted(added):
            return False  # MongoDB would append new fields in another order than production's
    return True


def _pipeline(
    before: Sequence[Path], leaves: Sequence[tuple[Path, Any]], also_set: Mapping[str, Any]
) -> list[dict[str, Any]]:
    now = [path for path, _ in leaves]
    keep_empty = {path for path, value in leaves if isinstance(value, Mapping)}
    unset = [path for path in dict.fromkeys([*before, *now]) if path not in keep_empty]
    unset = [path for path in unset if not any(path[:i] in unset for i in range(1, len(path)))]
    assign: dict[str, Any] = {}
    for path, value in leaves:
        name = update_path(path)
        if path in keep_empty:
            field = f"${name}"
            assign[name] = {"$cond": [{"$eq": [{"$type": field}, "object"]}, field,
                                      {"$literal": {}}]}
        else:
            assign[name] = {"$literal": value}
    assign.update({name: {"$literal": value} for name, value in also_set.items()})
    stages: list[dict[str, Any]] = []
    if unset:
        stages.append({"$unset": [update_path(path) for path in unset]})
    # Sub-documents left empty go, deepest first, so `$set` puts them back in production's
    # order; those that hold staging's own fields stay where they are.
    emptied = _parents([*before, *now]) | keep_empty
    for depth in sorted({len(path) for path in emptied}, reverse=True):
        level = sorted(path for path in emptied if len(path) == depth)
        stages.append({"$set": {
            update_path(path): _kept_if_filled(path) if path in keep_empty
            else _removed_if_empty(path)
            for path in level
        }})
    stages.append({"$set": assign})
    return stages


def _removed_if_empty(path: Path) -> dict[str, Any]:
    field = f"${update_path(path)}"
    return {"$cond": [{"$eq": [field, {}]}, "$$REMOVE", field]}


def _kept_if_filled(path: Path) -> dict[str, Any]:
    """A sub-document with staging's own fields in it stays; anything else goes (and is set
    again, in order)."""
    field = f"${update_path(path)}"
    filled = {"$and": [{"$eq": [{"$type": field}, "object"]}, {"$ne": [field, {}]}]}
    return {"$cond": [filled, field, "$$REMOVE"]}
