"""Field ownership: how a production document is merged into the staging document it feeds.

Production owns exactly the leaf paths it sent last time (recorded in `_sync.owned`).
A merge sets every leaf production sends now and removes the leaves it sent before but not
any more; everything else in the staging document (QA notes, flags, fixtures, `staging_fields`
from the configuration) is left exactly as it is. Pure functions, no I/O.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tasks.rules.paths import Path, get_path, leaf_paths, overlaps, set_path, unset_path

RESERVED_ROOTS = ("_id", "_sync")


@dataclass(frozen=True)
class FieldRules:
    """What a merge may never write: staging-owned paths and the soft-delete flag."""

    staging_fields: tuple[Path, ...]
    soft_delete_field: Path

    def syncable(self, path: Path) -> bool:
        if path[0] in RESERVED_ROOTS or overlaps(path, self.soft_delete_field):
            return False
        return not any(overlaps(path, protected) for protected in self.staging_fields)


def owned_paths(production: Mapping[str, Any], rules: FieldRules) -> set[Path]:
    return {path for path, _ in leaf_paths(production) if rules.syncable(path)}


def merge_fields(
    current: Mapping[str, Any] | None,
    production: Mapping[str, Any],
    owned_before: Iterable[Path],
    rules: FieldRules,
) -> tuple[dict[str, Any], set[Path]]:
    """Return the merged body (without `_id` and `_sync`) and the paths production now owns."""
    body = {k: copy.deepcopy(v) for k, v in (current or {}).items() if k not in RESERVED_ROOTS}
    owned_now = owned_paths(production, rules)
    for path in set(owned_before) - owned_now:
        if not rules.syncable(path):
            continue  # the configuration now protects it: staging owns it from here on
        existing = get_path(body, path)
        if isinstance(existing, Mapping) and existing:
            # Production owned an empty sub-document here; what is inside now is staging's.
            continue
        unset_path(body, path)
    for path, value in leaf_paths(production):
        if path not in owned_now:
            continue
        if isinstance(value, Mapping) and isinstance(get_path(body, path), Mapping):
            continue  # an empty sub-document from production keeps staging's content
        set_path(body, path, copy.deepcopy(value))
    return body, owned_now


def production_view(document: Mapping[str, Any], owned: Iterable[Path]) -> dict[str, Any]:
    """The part of a staging document that production owns, for comparisons (verify)."""
    view: dict[str, Any] = {}
    for path in owned:
        marker = object()
        value = get_path(document, path, marker)
        if value is not marker:
            set_path(view, path, value)
    return view
