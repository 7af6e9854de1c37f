"""Leaf paths through nested documents, the unit in which production's ownership is tracked.

A path is a tuple of field names. Arrays are whole values (never descended into), so a
path ends at a scalar, an array or an empty sub-document. Paths are stored in staging as
dotted strings; a dot or backslash inside a field name is escaped with a backslash so every
path round-trips.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from datetime import datetime
from functools import lru_cache
from typing import Any

Path = tuple[str, ...]
_MISSING = object()


# Values that are never sub-documents: most leaves are one of these, and telling them apart
# by type is far cheaper than `isinstance(value, Mapping)`, an ABC check (a planner walks
# every leaf of every document of a batch).
PLAIN_TYPES = frozenset({str, int, float, bool, list, bytes, type(None), datetime})


def is_document(value: Any) -> bool:
    """Whether a value is a sub-document (any Mapping)."""
    kind = type(value)
    return kind is dict or (kind not in PLAIN_TYPES and isinstance(value, Mapping))


def leaf_paths(document: Mapping[str, Any], prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every (path, value) pair whose value is not a non-empty sub-document."""
    for name, value in document.items():
        path = (*prefix, name)
        if is_document(value) and value:
            yield from leaf_paths(value, path)
        else:
            yield path, value


def get_path(document: Mapping[str, Any], path: Path, default: Any = None) -> Any:
    node: Any = document
    for name in path:
        if not isinstance(node, Mapping) or name not in node:
            return default
        node = node[name]
    return node


def has_path(document: Mapping[str, Any], path: Path) -> bool:
    return get_path(document, path, _MISSING) is not _MISSING


def set_path(document: MutableMapping[str, Any], path: Path, value: Any) -> None:
    """Set `path`, replacing any non-document found on the way (the writer owns the path)."""
    node = document
    for name in path[:-1]:
        child = node.get(name)
        if not isinstance(child, MutableMapping):
            child = {}
            node[name] = child
        node = child
    node[path[-1]] = value


def unset_path(document: MutableMapping[str, Any], path: Path) -> None:
    """Remove `path`, then every parent that this removal left empty."""
    trail: list[MutableMapping[str, Any]] = []
    node: Any = document
    for name in path[:-1]:
        if not isinstance(node, MutableMapping) or not isinstance(node.get(name), MutableMapping):
            return
        trail.append(node)
        node = node[name]
    if not isinstance(node, MutableMapping) or path[-1] not in node:
        return
    del node[path[-1]]
    for parent, name in zip(reversed(trail), reversed(path[:-1]), strict=True):
        if parent[name]:
            break
        del parent[name]


def is_prefix(prefix: Path, path: Path) -> bool:
    return path[: len(prefix)] == prefix


def overlaps(a: Path, b: Path) -> bool:
    """True when one path contains the other, so writing one can change the other."""
    return is_prefix(a, b) or is_prefix(b, a)


def split_dotted(dotted: str) -> Path:
    """`customer.name` -> ('customer', 'name'), honouring backslash escapes."""
    if "\\" not in dotted:
        # Nearly every stored path: no escape to honour, and `str.split` is C. (Every
        # staging document's owned paths are split when a plan needs them.)
        return tuple(dotted.split("."))
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in dotted:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return tuple(parts)


def join_dotted(path: Path) -> str:
    joined = ".".join(path)
    if "\\" not in joined and joined.count(".") == len(path) - 1:
        return joined  # no dot or backslash inside a name: nothing to escape
    return ".".join(name.replace("\\", "\\\\").replace(".", "\\.") for name in path)


@lru_cache(maxsize=4096)  # asked for every leaf of every planned write; paths repeat
def addressable(path: Path) -> bool:
    """Whether an update operator can name this path: no field name is empty, holds a dot or
    starts with `$` (MongoDB stores such names since 5.0, but `$set`/`$unset` cannot reach
    them)."""
    return all(name and "." not in name and not name.startswith("$") for name in path)


def update_path(path: Path) -> str:
    """The path as update operators and aggregation field paths spell it (addressable only)."""
    return ".".join(path)
