"""PII masking: the transforms behind `pii: {path: rule}`, applied right after a production read.

Invariant 6 (DESIGN.md): a field configured as PII is transformed the moment it is read from
production, so its raw value never reaches Redis, staging, logs, metrics or the dead-letter
store. Every transform here is a pure function of the document, the rules and the secret (no
I/O, no clock), so every worker in every process masks a value the same way. (The one piece of
state, a strict masker's count of the paths it left out, never changes an output.)

Strict mode (`pii_mode: strict`): the masker also leaves out every path that no rule, `allow`
entry or business key classifies (`rules.pii_strict`), so a field added to production
tomorrow fails closed instead of reaching staging raw.

Rules
    ``drop``    removes the field.
    ``redact``  replaces the value with the constant ``"REDACTED"``.
    ``null``    sets the value to None.
    ``hash``    replaces the value with ``pseudonym(value, secret)``: ``"h:"`` + the hex
                HMAC-SHA256 of the value's canonical Extended JSON, keyed by ``pii_secret``.
                The same value gives the same pseudonym in every collection and process, so
                business keys stay matchable; ``1`` and ``"1"`` differ.
    ``fake``    replaces the value with a realistic, deterministic fake of its kind (email,
                name, phone, address), chosen by a seed derived from the keyed HMAC of the
                value. Emails use reserved domains only (example.com/.org/.net) and phones the
                UK Ofcom drama range ``+44 7700 900000``-``900999``, so a fake can never reach
                a real person.

A null is not personal data and keeps meaning "missing" (business keys rely on it): every rule
but ``drop`` leaves a None value as None.

Paths
    Dotted, through nested documents *and* arrays, like MongoDB's own dotted paths:
    ``addresses.street`` reaches ``street`` in every document of the ``addresses`` array, and
    in arrays of arrays of documents, recursively (scalar elements on the way have no fields
    and are skipped). A segment made of digits, met on an array, is a position
    (``phones.0`` is the first phone), as in MongoDB; ``drop`` then sets that element to None
    instead of removing it, so the positions of the other elements (and of other rules) do not
    shift. Missing paths are skipped silently: production documents vary.

    When a path ends on an array: ``drop``, ``redact`` and ``null`` act on the whole value (the
    field is removed, becomes ``"REDACTED"``, becomes None); ``hash`` and ``fake`` map every
    element (recursively through nested arrays), so ``tags: hash`` keeps one pseudonym per tag.
    A sub-document under ``hash`` is hashed as one value; under ``fake:address`` it becomes a
    sub-document with the same keys, faked key by key (street, city, state, zip/postcode,
    country...; unknown keys are hashed); under the other fake kinds it is faked from its
    canonical encoding.

    Rules are applied in order of path length, then path, so a rule on a field acts on the raw
    value before any rule below it; whatever order they overlap in, every value under some rule
    is transformed by at least one of them.

Never log a raw value, and never put one in an exception: errors here name the rule path and
the value's type only.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from stagesync.rules.paths import Path, split_dotted
from stagesync.rules.pii_digests import PiiError, fake_digest, pseudonym, rules_fingerprint
from stagesync.rules.pii_fakes import (
    address_field_of,
    fake_address,
    fake_address_field,
    fake_email,
    fake_name,
    fake_phone,
)
from stagesync.rules.pii_strict import Classification
from stagesync.settings.pii_rules import FakeKind, PiiRule

if TYPE_CHECKING:
    from stagesync.settings.collection import CollectionSettings

__all__ = [
    "REDACTED",
    "Masker",
    "PiiError",
    "paths_matched",
]

REDACTED = "REDACTED"

# A strict masker counts the unclassified paths it left out until `take_unclassified` collects
# them; beyond this many distinct paths, new ones are still left out but no longer counted.
MAX_PENDING_PATHS = 1000


# --------------------------------------------------------------------------------------------
# Keyed digests
# --------------------------------------------------------------------------------------------


def _map_values(value: Any, scalar: Callable[[Any], Any]) -> Any:
    """`scalar` applied to a value, or to every element of an array (recursively); None kept."""
    if value is None:
        return None
    if isinstance(value, list):
        return [_map_values(element, scalar) for element in value]
    return scalar(value)


class _Transforms:
    """The value transforms bound to one secret (built once per Masker)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def hash(self, value: Any) -> Any:
        return _map_values(value, self._pseudonym)

    def _pseudonym(self, value: Any) -> str:
        return pseudonym(value, self._secret)

    def fake(self, kind: FakeKind) -> Callable[[Any], Any]:
        if kind == "address":
            return lambda value: _map_values(value, self._fake_address_value)
        generate = _FAKE_SCALARS[kind]

        def fake(value: Any) -> Any:
            return _map_values(value, lambda scalar: generate(fake_digest(scalar, self._secret)))

        return fake

    def _fake_address_value(self, value: Any) -> Any:
        if isinstance(value, Mapping):
            return self._fake_address_document(value)
        return fake_address(fake_digest(value, self._secret))

    def _fake_address_document(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """Same keys, each faked as what its name says; unknown keys hashed.

        Each field is seeded by its own value (not by the whole sub-document), so the same
        street fakes to the same street wherever it appears.
        """
        faked: dict[str, Any] = {}
        for key, value in document.items():
            field = address_field_of(str(key))
            part = functools.partial(self._fake_address_part, field)
            faked[key] = _map_values(value, part)
        return faked

    def _fake_address_part(self, field: str | None, value: Any) -> Any:
        if isinstance(value, Mapping):
            return self._fake_address_document(value)
        if field is None:
            return self._pseudonym(value)
        return fake_address_field(field, value, fake_digest(value, self._secret))


_FAKE_SCALARS: dict[str, Callable[[bytes], str]] = {
    "email": fake_email,
    "name": fake_name,
    "phone": fake_phone,
}


# --------------------------------------------------------------------------------------------
# Paths through documents and arrays
# --------------------------------------------------------------------------------------------


class _Owned:
    """The containers copied during one `mask` call, which it may then change in place.

    Copy-on-write: a container of the input is copied the first time a rule changes something
    under it, and later rules reuse that copy instead of copying it again. The copies are kept
    referenced here so their ids cannot be reused while the call runs.
    """

    __slots__ = ("_ids", "_keep")

    def __init__(self, root: dict[str, Any]) -> None:
        self._ids = {id(root)}
        self._keep: list[Any] = [root]

    def dict(self, node: Mapping[str, Any]) -> dict[str, Any]:
        if id(node) in self._ids:
            return node  # type: ignore[return-value]  # our own copy, a dict
        copy = dict(node)
        self._ids.add(id(copy))
        self._keep.append(copy)
        return copy

    def list(self, node: list[Any]) -> list[Any]:
        if id(node) in self._ids:
            return node
        copy = list(node)
        self._ids.add(id(copy))
        self._keep.append(copy)
        return copy


def _position(name: str) -> int | None:
    """The array position a digits-only segment names (on an array, it names nothing else)."""
    return int(name) if name.isascii() and name.isdigit() else None


class _Rule:
    """One rule, compiled: its path as a tuple and its transform bound to the secret."""

    __slots__ = ("dotted", "drop", "path", "positions", "transform")

    def __init__(self, dotted: str, rule: PiiRule, transforms: _Transforms) -> None:
        self.dotted = dotted
        self.path: Path = split_dotted(dotted)
        self.positions = tuple(_position(name) for name in self.path)
        self.drop = rule.kind == "drop"
        self.transform: Callable[[Any], Any]
        if rule.kind in ("drop", "null"):
            self.transform = _to_none
        elif rule.kind == "redact":
            self.transform = _redact
        elif rule.kind == "hash":
            self.transform = transforms.hash
        elif rule.kind == "fake":
            if rule.fake_kind is None:
                raise ValueError(f"pii.{dotted}: a fake rule needs a kind")
            self.transform = transforms.fake(rule.fake_kind)
        else:
            raise ValueError(f"pii.{dotted}: unknown rule kind {rule.kind!r}")

    def apply(self, node: Any, index: int, owned: _Owned) -> Any:
        """`node` with this rule applied at `path[index:]`; the same object when unchanged."""
        name = self.path[index]
        last = index == len(self.path) - 1
        if isinstance(node, Mapping):
            if name not in node:
                return node
            if last and self.drop:
                changed = owned.dict(node)
                del changed[name]
                return changed
            return self._replace(node, name, index, owned)
        if isinstance(node, list):
            position = self.positions[index]
            if position is not None:
                if position >= len(node):
                    return node
                # On an array element, drop sets None: the other positions must not shift.
                return self._replace(node, position, index, owned)
            result = node
            for position, element in enumerate(node):
                if isinstance(element, Mapping | list):
                    replacement = self.apply(element, index, owned)
                    if replacement is not element:
                        if result is node:
                            result = owned.list(node)
                        result[position] = replacement
            return result
        return node


    def _replace(self, node: Any, at: str | int, index: int, owned: _Owned) -> Any:
        """`node` with its child `at` masked (the last step) or walked into; the same object
        when nothing changed, else a copy of our own."""
        child = node[at]
        last = index == len(self.path) - 1
        replacement = self.transform(child) if last else self.apply(child, index + 1, owned)
        if replacement is child:
            return node
        changed: Any = owned.dict(node) if isinstance(at, str) else owned.list(node)
        changed[at] = replacement
        return changed


def _to_none(value: Any) -> None:
    return None


def _redact(value: Any) -> str | None:
    return None if value is None else REDACTED


def _matches(node: Any, path: Path, index: int) -> bool:
    """Whether `path[index:]` reaches at least one value (None included) under `node`."""
    name = path[index]
    last = index == len(path) - 1
    if isinstance(node, Mapping):
        if name not in node:
            return False
        return last or _matches(node[name], path, index + 1)
    if isinstance(node, list):
        position = _position(name)
        if position is not None:
            return position < len(node) and (last or _matches(node[position], path, index + 1))
        return any(
            _matches(element, path, index)
            for element in node
            if isinstance(element, Mapping | list)
        )
    return False


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


class Masker:
    """The PII rules of one collection, compiled once and applied to every document read.

    Build one per collection and keep it: paths are split and transforms bound here, so
    `mask` only walks the paths that have rules. Thread-safe.

    With a `classification` (`pii_mode: strict`, see `rules.pii_strict`), every path it
    does not classify is left out of the result too, right where PII is masked: the stream,
    resync and replay applies all mask what they read, so unclassified values never leave the
    worker. `mask_reporting` returns the paths it left out; `mask` counts them for
    `take_unclassified`, which the apply collects after each production read to record them
    (`state.unclassified_paths`).
    """

    def __init__(
        self,
        rules: Mapping[str, PiiRule],
        secret: bytes,
        classification: Classification | None = None,
    ) -> None:
        if secret == b"" and any(rule.keyed for rule in rules.values()):
            # An unkeyed hash of an email is reversed by hashing a list of emails.
            raise ValueError("pii: 'hash' and 'fake' rules need a non-empty pii_secret")
        self._rules: dict[str, PiiRule] = dict(rules)
        self._secret = secret
        transforms = _Transforms(secret)
        compiled = [_Rule(dotted, rule, transforms) for dotted, rule in rules.items()]
        # A rule on a field sees the raw value before any rule below it.
        compiled.sort(key=lambda rule: (len(rule.path), rule.path))
        self._compiled = tuple(compiled)
        self._classification = classification
        self._pending: Counter[str] = Counter()
        self._pending_lock = threading.Lock()

    @classmethod
    def from_settings(cls, collection: CollectionSettings, secret: bytes) -> Masker:
        """The masker of a configured collection (`secret` is `Settings.secret_bytes()`)."""
        return cls(collection.pii, secret, Classification.from_settings(collection))

    @property
    def strict(self) -> bool:
        """True when unclassified paths are left out (`pii_mode: strict`)."""
        return self._classification is not None

    @property
    def classification(self) -> Classification | None:
        return self._classification

    @property
    def active(self) -> bool:
        """False when the collection has no PII rules and is open: `mask` then only copies the
        top level."""
        return bool(self._compiled) or self._classification is not None

    @property
    def rules(self) -> Mapping[str, PiiRule]:
        return dict(self._rules)

    @functools.cached_property
    def fingerprint(self) -> str:
        """`rules_fingerprint` of this masker's rules, secret and strict classification."""
        strict = self._classification.paths if self._classification else None
        return rules_fingerprint(self._rules, self._secret, strict)

    def mask(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """Return a new document with every rule applied; never mutates the input.

        The result is always a new top-level dict (a plain shallow copy when no rule applies or
        when there are no rules), so callers may add or remove top-level fields. Below the top
        level it is copy-on-write: only the containers along changed paths are copied, and
        everything else is shared with the input. Callers must therefore not mutate nested
        values of either document.

        In strict mode the unclassified paths are left out as well, and counted for
        `take_unclassified`.
        """
        result, dropped = self.mask_reporting(document)
        if dropped:
            self._count(dropped)
        return result

    def mask_reporting(self, document: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
        """`mask`'s document, and the unclassified paths it left out (strict mode; no values).

        Counts nothing: for callers that report the paths themselves (`stagesync check`).
        """
        result = self._apply_rules(document)
        if self._classification is None:
            return result, set()
        return self._classification.filter(result)

    def take_unclassified(self) -> dict[str, int]:
        """The paths `mask` left out since the last call, each with the number of documents.

        Empty in open mode. Collect it after each production read and hand it to
        `state.unclassified_paths.record_unclassified`.
        """
        with self._pending_lock:
            if not self._pending:
                return {}
            taken = dict(self._pending)
            self._pending.clear()
        return taken

    def _count(self, dropped: Iterable[str]) -> None:
        with self._pending_lock:
            for path in dropped:
                if path in self._pending or len(self._pending) < MAX_PENDING_PATHS:
                    self._pending[path] += 1

    def _apply_rules(self, document: Mapping[str, Any]) -> dict[str, Any]:
        result = dict(document)
        if not self._compiled:
            return result
        owned = _Owned(result)
        for rule in self._compiled:
            try:
                rule.apply(result, 0, owned)  # the root is owned: changed in place
            except PiiError as error:
                raise PiiError(f"pii.{rule.dotted}: {error}") from None
        return result

    def __repr__(self) -> str:  # rule paths and kinds only; never the secret
        rules = ", ".join(f"{path}: {rule}" for path, rule in sorted(self._rules.items()))
        mode = ", strict" if self._classification is not None else ""
        return f"Masker({{{rules}}}{mode})"


def paths_matched(document: Mapping[str, Any], rules: Iterable[str]) -> set[str]:
    """The rule paths (a `pii` mapping or its keys) that reach something in `document`.

    `stagesync check` samples production documents and warns about the rules that match
    nothing, which usually means a misspelt path, and so PII copied unmasked. A field present
    with a null value counts as matched; paths go through arrays as in `Masker`.
    """
    return {dotted for dotted in rules if _matches(document, split_dotted(dotted), 0)}
