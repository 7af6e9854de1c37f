"""Strict PII mode: copy a production path only when the configuration classifies it.

With `pii_mode: strict` a collection fails closed. A new production field (`ssn`, `notes`,
`customer.dateOfBirth`) is not copied until someone says what it is; the day a developer adds
it, staging simply goes without it and the path is reported (`status`, `check`, a log line).

A leaf path is *classified* when
- a `pii` rule covers it (the rule's path is the leaf or one of its parents): it is masked;
- it, or one of its parents, is listed in `allow`;
- it is a declared reference (it holds `_id`s of another collection), or
- it is a business-key field (or under one), or the `schema_version_field` (both are read
  from the masked document by the merge rules, which would dead-letter every change without
  them), or it is `_id`.

Paths run through nested documents *and* arrays, like MongoDB's dotted paths and like the
`pii` rules (`rules.pii`): `lines.sku` classifies `sku` in every document of the `lines`
array, and a digits-only segment met on an array names a position (`phones.0`). What is not
classified is left out:
- a field of a document is removed (a document emptied that way is removed as well);
- an element of an array is replaced (a scalar by None, a document by what remains of it, an
  empty document at worst), so the positions of the other elements do not move;
- a scalar or an array of scalars found where only deeper paths are classified (`allow:
  [address.city]` but production's `address` is a string) is removed: its leaf path is
  `address`, which nothing classifies.
Empty documents and arrays are kept where their own path is classified (they hold no value).

The filter reports each unclassified leaf path it removed, dotted, without positions
(`lines.serial`), never a value. Everything here is a pure function of the document and the
classified paths.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from stagesync.rules.paths import Path, join_dotted, split_dotted

if TYPE_CHECKING:
    from stagesync.settings.collection import CollectionSettings

__all__ = ["Classification", "classified_paths"]

_DROP = object()


class _Node:
    """One segment of the classified paths; `whole` when everything below it is copied."""

    __slots__ = ("children", "whole")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.whole = False


Nodes = tuple[_Node, ...]


def classified_paths(collection: CollectionSettings) -> list[str]:
    """The dotted paths a strict collection copies: `_id`, keys, pii rules, `allow` and
    references."""
    paths = ["_id", *collection.business_key, *collection.pii, *collection.allow,
             *collection.references]
    if collection.schema_version_field:
        paths.append(collection.schema_version_field)
    return list(dict.fromkeys(paths))


class Classification:
    """The classified paths of one collection, compiled into a trie of path segments."""

    def __init__(self, paths: Iterable[str]) -> None:
        self._root = _Node()
        self._paths = tuple(sorted(set(paths)))
        for dotted in self._paths:
            node = self._root
            for name in split_dotted(dotted):
                node = node.children.setdefault(name, _Node())
            node.whole = True

    @classmethod
    def from_settings(cls, collection: CollectionSettings) -> Classification | None:
        """The classification of a strict collection; None for `pii_mode: open`."""
        if collection.pii_mode != "strict":
            return None
        return cls(classified_paths(collection))

    @property
    def paths(self) -> tuple[str, ...]:
        return self._paths

    def covers(self, dotted: str) -> bool:
        """Whether a reported leaf path (no positions) is classified now.

        `status` and `check` use it to stop showing paths recorded before the configuration
        classified them.
        """
        node = self._root
        for name in split_dotted(dotted):
            if node.whole:
                return True
            child = node.children.get(name)
            if child is None:
                return False
            node = child
        return node.whole

    def filter(self, document: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
        """`document` without its unclassified paths, and those paths (dotted).

        Never mutates the input. The result is a new top-level dict; containers below it that
        needed no change are shared with the input.
        """
        dropped: set[Path] = set()
        result = _filter_mapping(document, (self._root,), (), dropped)
        kept = dict(result) if result is document else result
        return kept, {join_dotted(path) for path in dropped}


def _child(nodes: Nodes, name: str) -> Nodes:
    return tuple(child for node in nodes if (child := node.children.get(name)) is not None)


def _whole(nodes: Nodes) -> bool:
    return any(node.whole for node in nodes)


def _filter_mapping(
    document: Mapping[str, Any], nodes: Nodes, prefix: Path, dropped: set[Path]
) -> Any:
    """The document filtered (the same object when nothing changed)."""
    result: dict[str, Any] = {}
    changed = False
    for name, value in document.items():
        path = (*prefix, name)
        child = _child(nodes, name)
        if not child:
            _collect(value, path, dropped)
            changed = True
            continue
        if _whole(child):
            result[name] = value
            continue
        kept = _filter_value(value, child, path, dropped)
        if kept is _DROP:
            changed = True
            continue
        result[name] = kept
        changed = changed or kept is not value
    return result if changed else document


def _filter_value(value: Any, nodes: Nodes, path: Path, dropped: set[Path]) -> Any:
    """A value whose path is on the way to classified paths, but not classified itself."""
    if isinstance(value, Mapping):
        if not value:
            return value  # an empty document holds nothing
        filtered = _filter_mapping(value, nodes, path, dropped)
        return filtered if filtered else _DROP
    if isinstance(value, list):
        return _filter_list(value, nodes, path, dropped)
    # A scalar (None included) where only deeper paths are classified: its leaf path is this.
    dropped.add(path)
    return _DROP


def _filter_list(values: list[Any], nodes: Nodes, path: Path, dropped: set[Path]) -> list[Any]:
    result: list[Any] | None = None
    for position, element in enumerate(values):
        at_position = _child(nodes, str(position))
        if _whole(at_position):
            continue  # a positional path (`phones.0`) classifies this element whole
        if isinstance(element, list):
            kept = _filter_list(element, nodes, path, dropped)  # same segment, as in MongoDB
        elif isinstance(element, Mapping):
            kept = _filter_mapping(element, nodes + at_position, path, dropped)
        elif element is None:
            kept = None
        else:
            dropped.add(path)
            kept = None  # keep the positions of the other elements
        if kept is not element:
            if result is None:
                result = list(values)
            result[position] = kept
    return values if result is None else result


def _collect(value: Any, path: Path, dropped: set[Path]) -> None:
    """Every leaf path of a subtree that is left out (through arrays, without positions)."""
    if isinstance(value, Mapping) and value:
        for name, child in value.items():
            _collect(child, (*path, name), dropped)
    elif isinstance(value, list) and any(isinstance(e, Mapping | list) for e in value):
        for element in value:
            if isinstance(element, Mapping | list):
                _collect(element, path, dropped)
            elif element is not None:
                dropped.add(path)
    else:
        dropped.add(path)
