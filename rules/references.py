"""References between collections: production `_id`s found at declared paths, translated to the
staging `_id`s of their copies. Pure functions, no I/O (lookups live in `tasks.apply.references`).

A path runs through nested documents and arrays, like MongoDB's dotted paths: `customerId`
holds one `_id`, `productIds` an array of them, `lines.productId` one in every element of the
`lines` array (a digits-only segment on an array names a position). A DBRef at the path counts
by its `$id`. Values are recognised by their canonical Extended JSON spelling (the same
`encode_id` the rest of the sync uses), so `1` and `1.0` never stand for each other.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from bson.dbref import DBRef
from stagesync.rules.identity import encode_id
from stagesync.rules.paths import Path, split_dotted

Lookup = Mapping[tuple[str, str], Any]  # (referenced collection, encoded production _id) -> id


@dataclass(frozen=True)
class Reference:
    """A declared reference: `dotted` holds `_id`s of the configured collection `collection`."""

    dotted: str
    collection: str

    @property
    def path(self) -> Path:
        return split_dotted(self.dotted)


def references_of(declared: Mapping[str, str]) -> tuple[Reference, ...]:
    return tuple(Reference(path, name) for path, name in sorted(declared.items()))


def referenced_ids(document: Mapping[str, Any], reference: Reference) -> list[str]:
    """The encoded production `_id`s this document points at through `reference`."""
    return [encode_id(value) for value in reference_values(document, reference)]


def reference_values(document: Mapping[str, Any], reference: Reference) -> list[Any]:
    """The `_id` values found at the reference's path (a DBRef's `$id`)."""
    return list(_values(document, reference.path))


def translate(
    document: Mapping[str, Any], references: tuple[Reference, ...], lookup: Lookup
) -> dict[str, Any]:
    """A copy of `document` with every referenced `_id` that `lookup` knows replaced by the
    staging `_id` of its copy; the others keep production's value (right by itself once the
    copy is created under production's `_id`)."""
    result = copy.deepcopy(dict(document))
    for reference in references:
        def swap(value: Any, name: str = reference.collection) -> Any:
            if isinstance(value, DBRef):
                found = lookup.get((name, encode_id(value.id)))
                if found is None:
                    return value
                extra = {k: v for k, v in value.as_doc().items()
                         if k not in ("$ref", "$id", "$db")}
                return DBRef(value.collection, found, value.database, **extra)
            return lookup.get((name, encode_id(value)), value)

        _replace(result, reference.path, swap)
    return result


def _values(node: Any, path: Path) -> Iterator[Any]:
    if not path:
        if isinstance(node, list):
            for item in node:
                yield from _values(item, ())
        elif isinstance(node, DBRef):
            yield node.id
        elif node is not None and not isinstance(node, Mapping):
            yield node
        return
    name, rest = path[0], path[1:]
    if isinstance(node, list):
        if name.isdigit():
            if int(name) < len(node):
                yield from _values(node[int(name)], rest)
            return
        for item in node:
            yield from _values(item, path)
    elif isinstance(node, Mapping) and name in node:
        yield from _values(node[name], rest)


def _replace(node: Any, path: Path, swap: Callable[[Any], Any]) -> Any:
    """Replace, in place, the values at `path` below `node`; return the (new) node."""
    if not path:
        if isinstance(node, list):
            return [_replace(item, (), swap) for item in node]
        if node is None or (isinstance(node, Mapping) and not isinstance(node, DBRef)):
            return node
        return swap(node)
    name, rest = path[0], path[1:]
    if isinstance(node, list):
        if name.isdigit():
            if int(name) < len(node):
                node[int(name)] = _replace(node[int(name)], rest, swap)
            return node
        for index, item in enumerate(node):
            node[index] = _replace(item, path, swap)
    elif isinstance(node, dict) and name in node:
        node[name] = _replace(node[name], rest, swap)
    return node
