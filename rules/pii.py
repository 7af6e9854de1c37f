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
import hashlib
import hmac
import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, overload

from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS

from rules.paths import Path, split_dotted
from rules.pii_strict import Classification
from settings.pii_rules import FakeKind, PiiRule

if TYPE_CHECKING:
    from faker import Faker

    from settings.model import CollectionSettings

__all__ = [
    "FAKE_EMAIL_DOMAINS",
    "FAKE_PHONE_PREFIX",
    "MASK_VERSION",
    "REDACTED",
    "Masker",
    "PiiError",
    "paths_matched",
    "pseudonym",
    "rules_fingerprint",
]

REDACTED = "REDACTED"
# Bump when the output of any transform changes for the same value and secret, so that
# `rules_fingerprint` tells staging documents masked the old way from the new.
MASK_VERSION = 1
HASH_PREFIX = "h:"
# RFC 2606 reserved domains: mail to them can never reach anybody.
FAKE_EMAIL_DOMAINS: tuple[str, ...] = ("example.com", "example.org", "example.net")
# Ofcom's drama range: +44 7700 900000 to +44 7700 900999 are never allocated to subscribers.
FAKE_PHONE_PREFIX = "+44 7700 900"
FAKER_LOCALE = "en_US"

# Separates the fake seeds from the pseudonyms: a fake email's hex tag then cannot be matched
# against a `hash` pseudonym of the same value elsewhere in staging.
_FAKE_DOMAIN = b"stagesync.pii.fake\x00"
_FINGERPRINT_DOMAIN = b"stagesync.pii.rules\x00"
# A strict masker counts the unclassified paths it left out until `take_unclassified` collects
# them; beyond this many distinct paths, new ones are still left out but no longer counted.
MAX_PENDING_PATHS = 1000
_NOT_LETTERS = re.compile(r"[^a-z]+")
_KEY_NOISE = re.compile(r"[\s_\-]+")


class PiiError(ValueError):
    """A value could not be masked. The message names a rule path and a type, never a value."""


# --------------------------------------------------------------------------------------------
# Keyed digests
# --------------------------------------------------------------------------------------------


def _canonical(value: Any) -> bytes:
    """The type-preserving encoding every digest is taken of (`1`, `1.0`, `"1"` all differ).

    The same spelling as `rules.identity`, so key digests and pseudonyms agree on what
    "the same value" means.
    """
    try:
        return json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS).encode()
    except (TypeError, ValueError, OverflowError):
        # The original message may quote the value; keep only its type.
        raise PiiError(f"a value of type {type(value).__name__} cannot be encoded") from None


@overload
def pseudonym(value: None, secret: bytes) -> None: ...
@overload
def pseudonym(value: Any, secret: bytes) -> str: ...
def pseudonym(value: Any, secret: bytes) -> str | None:
    """The `hash` rule's output for one value: ``"h:" + hex HMAC-SHA256(secret, canonical)``.

    Deterministic across collections, processes and Python's hash randomization, so a hashed
    business key still matches its other occurrences. None stays None: a null is not personal
    data and must keep meaning "missing". Arrays and sub-documents are hashed as one value here;
    the rule itself maps arrays element by element (see `Masker`).
    """
    if value is None:
        return None
    return HASH_PREFIX + hmac.new(secret, _canonical(value), hashlib.sha256).hexdigest()


def _fake_digest(value: Any, secret: bytes) -> bytes:
    return hmac.new(secret, _FAKE_DOMAIN + _canonical(value), hashlib.sha256).digest()


# --------------------------------------------------------------------------------------------
# Fakes
# --------------------------------------------------------------------------------------------

_faker: Faker | None = None
_faker_lock = threading.Lock()


def _get_faker() -> Faker:
    """One Faker for the process, created on first use (creating one is slow).

    `use_weighting=False` draws names uniformly instead of by frequency: still real names, but
    ~15x faster per value (the weighted draw re-sums thousands of weights on every call).
    """
    global _faker
    if _faker is None:
        with _faker_lock:
            if _faker is None:
                from faker import Faker

                _faker = Faker(FAKER_LOCALE, use_weighting=False)
    return _faker


def _faker_version() -> str:
    import faker

    return str(faker.VERSION)


def _seed(digest: bytes) -> int:
    """The Faker seed of a value: from its keyed digest, never from Python's `hash()`."""
    return int.from_bytes(digest[:8], "big")


def _letters(text: str) -> str:
    return _NOT_LETTERS.sub("", text.lower()) or "user"


def _fake_name_parts(digest: bytes) -> tuple[str, str]:
    faker = _get_faker()
    with _faker_lock:  # seed and draw as one step: the Faker is shared between threads
        faker.seed_instance(_seed(digest))
        return faker.first_name(), faker.last_name()


def _fake_email(digest: bytes) -> str:
    first, last = _fake_name_parts(digest)
    domain = FAKE_EMAIL_DOMAINS[digest[8] % len(FAKE_EMAIL_DOMAINS)]
    # A few digest characters keep two people with the same fake name apart.
    return f"{_letters(first)}.{_letters(last)}.{digest[9:12].hex()}@{domain}"


def _fake_name(digest: bytes) -> str:
    first, last = _fake_name_parts(digest)
    return f"{first} {last}"


def _fake_phone(digest: bytes) -> str:
    return f"{FAKE_PHONE_PREFIX}{int.from_bytes(digest[8:10], 'big') % 1000:03d}"


def _fake_address(digest: bytes) -> str:
    faker = _get_faker()
    with _faker_lock:
        faker.seed_instance(_seed(digest))
        street = faker.street_address()
        city = faker.city()
        state = faker.state_abbr(include_territories=False)
        zipcode = faker.zipcode()
    return f"{street}, {city}, {state} {zipcode}"


# Fields of an address sub-document, by normalised key (lower case, no `_`, `-` or spaces).
_ADDRESS_FIELDS: dict[str, str] = {
    **dict.fromkeys(
        (
            "street",
            "street1",
            "streetaddress",
            "address",
            "address1",
            "addressline1",
            "line1",
            "line",
        ),
        "street",
    ),
    **dict.fromkeys(("street2", "address2", "addressline2", "line2"), "secondary"),
    **dict.fromkeys(("city", "town", "locality"), "city"),
    **dict.fromkeys(("state", "region", "province", "county"), "state"),
    **dict.fromkeys(("zip", "zipcode", "postcode", "postalcode"), "zip"),
    "country": "country",
    "countrycode": "country_code",
}


def _fake_address_field(field: str, value: Any, digest: bytes) -> Any:
    faker = _get_faker()
    with _faker_lock:
        faker.seed_instance(_seed(digest))
        if field == "street":
            return faker.street_address()
        if field == "secondary":
            return faker.secondary_address()
        if field == "city":
            return faker.city()
        if field == "state":
            short = isinstance(value, str) and len(value) <= 3
            return faker.state_abbr(include_territories=False) if short else faker.state()
        if field == "zip":
            zipcode = faker.zipcode()
            # Keep a numeric zip numeric, so staging's queries and indexes keep their types.
            numeric = isinstance(value, int) and not isinstance(value, bool)
            return int(zipcode) if numeric else zipcode
        if field == "country":
            return faker.country()
        return faker.country_code()


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
            return _map_values(value, lambda scalar: generate(_fake_digest(scalar, self._secret)))

        return fake

    def _fake_address_value(self, value: Any) -> Any:
        if isinstance(value, Mapping):
            return self._fake_address_document(value)
        return _fake_address(_fake_digest(value, self._secret))

    def _fake_address_document(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """Same keys, each faked as what its name says; unknown keys hashed.

        Each field is seeded by its own value (not by the whole sub-document), so the same
        street fakes to the same street wherever it appears.
        """
        faked: dict[str, Any] = {}
        for key, value in document.items():
            field = _ADDRESS_FIELDS.get(_KEY_NOISE.sub("", str(key).lower()))
            part = functools.partial(self._fake_address_part, field)
            faked[key] = _map_values(value, part)
        return faked

    def _fake_address_part(self, field: str | None, value: Any) -> Any:
        if isinstance(value, Mapping):
            return self._fake_address_document(value)
        if field is None:
            return self._pseudonym(value)
        return _fake_address_field(field, value, _fake_digest(value, self._secret))


_FAKE_SCALARS: dict[str, Callable[[bytes], str]] = {
    "email": _fake_email,
    "name": _fake_name,
    "phone": _fake_phone,
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
            child = node[name]
            if last and self.drop:
                changed = owned.dict(node)
                del changed[name]
                return changed
            replacement = self.transform(child) if last else self.apply(child, index + 1, owned)
            if replacement is child:
                return node
            changed = owned.dict(node)
            changed[name] = replacement
            return changed
        if isinstance(node, list):
            position = self.positions[index]
            if position is not None:
                if position >= len(node):
                    return node
                child = node[position]
                # On an array element, drop sets None: the other positions must not shift.
                replacement = self.transform(child) if last else self.apply(child, index + 1, owned)
                if replacement is child:
                    return node
                changed_list = owned.list(node)
                changed_list[position] = replacement
                return changed_list
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


def rules_fingerprint(
    rules: Mapping[str, PiiRule], secret: bytes, strict: Iterable[str] | None = None
) -> str:
    """A short, stable hex digest of how documents are masked: the rules and the secret.

    Stored next to masked data, it tells when staging documents were masked under other rules
    or another secret (their pseudonyms would no longer match new ones). It does not depend on
    the order the rules were written in. When some rule is keyed (hash, fake), it is an HMAC
    keyed by the secret, so it reveals nothing about the secret; when none is, the secret does
    not change any output and is left out. It also covers `MASK_VERSION` and, when a fake rule
    exists, the Faker version, whose data sets decide the fake values. In strict mode
    (`strict`: the classified paths) it covers those paths too, so that allowing a path, or
    turning strict mode on, asks for the resync that copies or removes what changed; in open
    mode it is what it was before strict mode existed.
    """
    description: dict[str, Any] = {
        "version": MASK_VERSION,
        "rules": sorted([path, str(rule)] for path, rule in rules.items()),
    }
    if strict is not None:
        description["strict"] = sorted(set(strict))
    if any(rule.kind == "fake" for rule in rules.values()):
        description["faker"] = [_faker_version(), FAKER_LOCALE]
    payload = json.dumps(description, sort_keys=True, separators=(",", ":")).encode()
    if any(rule.keyed for rule in rules.values()):
        digest = hmac.new(secret, _FINGERPRINT_DOMAIN + payload, hashlib.sha256).hexdigest()
    else:
        digest = hashlib.sha256(_FINGERPRINT_DOMAIN + payload).hexdigest()
    return digest[:16]


def paths_matched(document: Mapping[str, Any], rules: Iterable[str]) -> set[str]:
    """The rule paths (a `pii` mapping or its keys) that reach something in `document`.

    `stagesync check` samples production documents and warns about the rules that match
    nothing, which usually means a misspelt path, and so PII copied unmasked. A field present
    with a null value counts as matched; paths go through arrays as in `Masker`.
    """
    return {dotted for dotted in rules if _matches(document, split_dotted(dotted), 0)}
