"""Production's secondary indexes, translated into indexes staging can carry without ever
breaking the sync; and the plan that makes staging's indexes match them. No I/O.

Copying an index as is works for a plain replica, not for staging, which holds more than
production (soft-deleted copies, revived documents, QA fixtures) and less (dropped PII):
- **unique**: unique over live synced copies only. Production's partial filter, if any, is
  ANDed with `{<soft_delete_field>: false, "_sync.pid": {$exists: true}}`, so a value that
  production re-creates never collides with its soft-deleted predecessor and QA fixtures stay
  free. Where that cannot be written as a partial filter (production's filter uses an operator
  that cannot stand inside a top-level `$and` on every server, or a compound sparse index),
  the index is mirrored non-unique, and the note says so;
- **TTL**: mirrored without `expireAfterSeconds` (expiry would hard-delete synced documents
  behind the soft deletes' back), unless `mirror_ttl: true`;
- **PII**: an index on a field under `drop` (or inside a value masked as a whole) is not
  built; one that mixes such a field with others is skipped with the reason. Under `hash`,
  `fake`, `redact` and `null` the index is built on the masked values with production's keys;
  but only `hash` is one-to-one, so a unique index over a field another rule masks is mirrored
  non-unique (two masked values may be equal);
- everything else is copied (compound, multikey, sparse, partial, hidden, collation, wildcard,
  text weights and language, 2dsphere, hashed), and an index without a collation gets the
  simple one explicitly (a staging collection with another default collation must not give it
  that one).

Equivalence decides reuse: an existing staging index with the same definition serves,
whatever its name. `serves` (keys, collation, partial filter, sparseness, TTL) is the one
stagesync's own start-up uses; it is passed in by the caller, this module adds the options
only mirrored indexes carry (uniqueness both ways, text and wildcard options) and the two a
`collMod` changes in place (`hidden`, `expireAfterSeconds`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stagesync.rules.pii_strict import Classification
from stagesync.settings.collection import CollectionSettings

PID_PATH = "_sync.pid"
SIMPLE_COLLATION = {"locale": "simple"}
# Never copied: the index version and namespace are the server's, `background` is ignored
# since MongoDB 4.2, `prepareUnique` is a passing state of a conversion to unique.
NOT_COPIED = frozenset({"v", "ns", "name", "background", "prepareUnique"})
# Compared beside `serves` for equivalence; a change in any of them needs a new index.
COMPARED = ("weights", "default_language", "language_override", "wildcardProjection", "bits",
            "min", "max", "bucketSize")
# Operators a partial filter accepts inside a top-level `$and` on every MongoDB since 3.2.
FIELD_OPERATORS = frozenset({"$eq", "$gt", "$gte", "$lt", "$lte", "$type", "$exists"})
TEXT_KEYS = ("_fts", "_ftsx")

Spec = dict[str, Any]
Serves = Callable[..., bool]


@dataclass(frozen=True)
class Mirrored:
    """A production index as staging carries it: `spec` is a createIndexes entry without
    `name` (chosen when it is built); `notes` say how it differs from production's."""

    production_name: str
    spec: Spec
    notes: tuple[str, ...] = ()

    @property
    def translated(self) -> bool:
        return bool(self.notes)


@dataclass(frozen=True)
class Skipped:
    """A production index staging does not get, and why."""

    production_name: str
    reason: str


def translate(index: Mapping[str, Any], collection: CollectionSettings, mirror_ttl: bool
              ) -> Mirrored | Skipped | None:
    """The staging counterpart of one production `listIndexes` entry (None for `_id_`,
    which every collection has of its own)."""
    name = str(index.get("name", ""))
    key = index.get("key") or {}
    if name == "_id_" or list(_items(key)) == [("_id", 1)]:
        return None
    spec: Spec = {"key": dict(_items(key))}
    spec.update({k: v for k, v in index.items() if k not in NOT_COPIED and k != "key"})
    if "collation" not in spec:
        spec["collation"] = dict(SIMPLE_COLLATION)
    notes: list[str] = []
    fields = index_fields(index)
    gone, many_to_one = _pii_effects(fields, collection)
    if gone:
        kept = [f for f in fields if f not in gone]
        why = "; ".join(f"{f}: {reason}" for f, reason in gone.items())
        if kept:
            return Skipped(name, f"skipped: it mixes fields staging does not have ({why}) "
                                 f"with {', '.join(kept)}; a partial copy would plan queries "
                                 "unlike production's")
        return Skipped(name, f"not indexed: {why}")
    if "expireAfterSeconds" in spec and not mirror_ttl:
        seconds = spec.pop("expireAfterSeconds")
        notes.append(f"TTL dropped (expireAfterSeconds {_number(seconds)} would hard-delete "
                     "synced documents behind the soft deletes; mirror_ttl: true keeps it)")
    if spec.get("unique"):
        notes.extend(_unique(spec, collection, many_to_one))
    return Mirrored(name, spec, tuple(notes))


def translate_all(indexes: Iterable[Mapping[str, Any]], collection: CollectionSettings,
                  mirror_ttl: bool) -> list[Mirrored | Skipped]:
    found = (translate(index, collection, mirror_ttl) for index in indexes)
    return [item for item in found if item is not None]


def index_fields(index: Mapping[str, Any]) -> list[str]:
    """The document fields an index reads: key fields (a wildcard `a.$**` reads `a`), text
    fields from `weights`, the fields a wildcard projection includes."""
    found: list[str] = []
    for path, _ in _items(index.get("key") or {}):
        if path in TEXT_KEYS:
            continue
        if path == "$**":
            projection = index.get("wildcardProjection") or {}
            found += [p for p, v in _items(projection) if v and p != "_id"]
            continue
        found.append(path.removesuffix(".$**"))
    for path in (index.get("weights") or {}):
        if path != "$**":
            found.append(str(path).removesuffix(".$**"))
    return list(dict.fromkeys(found))


def _pii_effects(fields: Sequence[str], collection: CollectionSettings
                 ) -> tuple[dict[str, str], list[str]]:
    """Fields staging does not have (with why), and fields whose masked values may be equal
    where production's differ."""
    gone: dict[str, str] = {}
    many: list[str] = []
    strict = Classification.from_settings(collection)
    for path in fields:
        for rule_path, rule in collection.pii.items():
            if path == rule_path or path.startswith(rule_path + "."):
                keeps_keys = rule.kind == "fake" and rule.fake_kind == "address"
                if rule.kind == "drop":
                    gone[path] = f"pii rule '{rule_path}: drop' removes it"
                elif path != rule_path and not keeps_keys:
                    gone[path] = (f"pii rule '{rule_path}: {rule}' replaces the whole value, "
                                  "so staging has no such field")
                elif rule.kind != "hash":
                    many.append(path)
            elif rule_path.startswith(path + ".") and rule.kind != "hash":
                many.append(path)  # a sub-document with masked or dropped parts
        if path in gone or strict is None or strict.covers(path):
            continue
        if any(p.startswith(path + ".") for p in strict.paths):
            many.append(path)  # only its classified parts reach staging
        else:
            gone[path] = "pii_mode strict leaves it out (no pii rule or allow entry)"
    return gone, list(dict.fromkeys(many))


def _unique(spec: Spec, collection: CollectionSettings, many_to_one: Sequence[str]
            ) -> list[str]:
    """Make a unique spec unique over live synced copies, or non-unique; the notes."""
    if many_to_one:
        del spec["unique"]
        rules = ", ".join(many_to_one)
        return [f"non-unique: PII masking of {rules} can make different production values "
                "equal in staging (only hash keeps them apart)"]
    conjuncts = _conjuncts(spec.get("partialFilterExpression"))
    why_not = None
    was_sparse = False
    if conjuncts is None:
        why_not = ("production's partial filter uses an operator that cannot stand next to "
                   "stagesync's conditions in a partial filter")
    elif spec.get("sparse"):
        key_fields = [p for p, _ in _items(spec["key"])]
        if len(key_fields) != 1:
            why_not = ("a compound sparse index cannot also be partial, and a partial filter "
                       "cannot say 'any of these fields exists'")
        else:
            conjuncts.insert(0, {key_fields[0]: {"$exists": True}})
            del spec["sparse"]
            was_sparse = True
    if why_not is not None or conjuncts is None:
        del spec["unique"]
        return [f"non-unique: {why_not}; production's uniqueness is not enforced in staging"]
    ours = live_synced_filter(collection)
    spec["partialFilterExpression"] = combine([*conjuncts, *({k: v} for k, v in ours.items())])
    notes = [f"unique over live synced copies only: partial filter ANDed with "
             f"{_show(ours)}"]
    if was_sparse:
        notes.append("sparse written as {<field>: {$exists: true}} in the partial filter (an "
                     "index cannot be both)")
    return notes


def live_synced_filter(collection: CollectionSettings) -> Spec:
    """Live documents that came from production: not soft-deleted, with a production `_id`."""
    return {collection.soft_delete_field: False, PID_PATH: {"$exists": True}}


def _conjuncts(expression: Any) -> list[Spec] | None:
    """The filter as a list of one-field conditions, or None when it holds something that
    cannot stand inside a top-level `$and` of a partial filter ($or, $in, $not, nested $and,
    `$exists: false`, ...)."""
    if not expression:
        return []
    if not isinstance(expression, Mapping):
        return None
    found: list[Spec] = []
    for name, value in expression.items():
        if name == "$and":
            if not isinstance(value, list | tuple):
                return None
            for item in value:
                if not isinstance(item, Mapping) or any(str(k).startswith("$") for k in item):
                    return None
                inner = _conjuncts(item)
                if inner is None:
                    return None
                found += inner
        elif str(name).startswith("$") or not _field_condition(value):
            return None
        else:
            found.append({str(name): value})
    return found


def _field_condition(value: Any) -> bool:
    if not isinstance(value, Mapping) or not value:
        return True  # equality with a literal (a document without operators too)
    operators = [str(k) for k in value]
    if not all(k.startswith("$") for k in operators):
        return not any(k.startswith("$") for k in operators)  # a literal sub-document
    if any(k not in FIELD_OPERATORS for k in operators):
        return False
    return "$exists" not in value or value["$exists"] is True


def combine(conjuncts: Sequence[Mapping[str, Any]]) -> Spec:
    """One document when every field appears once (what people write), else a `$and`."""
    names = [name for item in conjuncts for name in item]
    if len(names) == len(set(names)):
        return {name: value for item in conjuncts for name, value in item.items()}
    return {"$and": [dict(item) for item in conjuncts]}


# -- equivalence ------------------------------------------------------------------------------


def same_definition(existing: Mapping[str, Any], wanted: Mapping[str, Any], serves: Serves
                    ) -> bool:
    """The same index but perhaps for `hidden` and the TTL (which `collMod` changes)."""
    if not serves(existing, wanted, ignore_ttl=True):
        return False
    if bool(existing.get("unique")) != bool(wanted.get("unique")):
        return False
    return all(_plain(existing.get(name)) == _plain(wanted.get(name)) for name in COMPARED)


def in_place_changes(existing: Mapping[str, Any], wanted: Mapping[str, Any]
                     ) -> dict[str, Any] | None:
    """What a `collMod` must change on an index of the same definition ({} for nothing), or
    None when it cannot (a TTL to remove)."""
    changes: dict[str, Any] = {}
    if bool(existing.get("hidden")) != bool(wanted.get("hidden")):
        changes["hidden"] = bool(wanted.get("hidden"))
    before, after = existing.get("expireAfterSeconds"), wanted.get("expireAfterSeconds")
    if after is None and before is not None:
        return None
    if after is not None and (before is None or float(before) != float(after)):
        changes["expireAfterSeconds"] = after
    return changes


def equivalent(existing: Mapping[str, Any], wanted: Mapping[str, Any], serves: Serves) -> bool:
    return same_definition(existing, wanted, serves) and in_place_changes(existing, wanted) == {}


# -- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Create:
    name: str
    production_name: str
    spec: Spec  # without the name


@dataclass(frozen=True)
class Modify:
    name: str
    production_name: str
    changes: dict[str, Any]


@dataclass
class MirrorPlan:
    """What to do in staging, and what to report."""

    creates: list[Create] = field(default_factory=list)
    drops: list[str] = field(default_factory=list)  # owned, and not wanted (any more)
    modifies: list[Modify] = field(default_factory=list)
    reused: dict[str, str] = field(default_factory=dict)  # production name -> staging name
    held: dict[str, str] = field(default_factory=dict)  # production name -> failed staging name
    forget: list[str] = field(default_factory=list)  # owned records whose index is gone
    unmanaged: dict[str, str] = field(default_factory=dict)  # prod name -> why it differs


def plan_mirror(
    wanted: Sequence[Mirrored],
    staging: Sequence[Mapping[str, Any]],
    owned: Mapping[str, Mapping[str, Any]],
    failed: Mapping[str, Mapping[str, Any]],
    serves: Serves,
    retry_failed: bool = False,
) -> MirrorPlan:
    """Make staging's indexes match `wanted`.

    `owned`: staging index name -> ownership record (stagesync created it); only those are
    ever dropped or changed. `failed`: production name -> the record of a build that failed
    (`spec`, `name`): not tried again while production's definition stays the same, unless
    `retry_failed` (a resync).
    """
    plan = MirrorPlan()
    present = {str(index.get("name")): index for index in staging}
    used: set[str] = set()
    for name, record in owned.items():
        spec = record.get("spec")
        # Gone, or replaced by someone's own index under the same name: no longer ours.
        if name not in present or (spec is not None and not same_definition(
                present[name], spec, serves)):
            plan.forget.append(name)
    owned = {name: record for name, record in owned.items() if name not in plan.forget}
    # First what staging already has (so that no new index takes a name still in use) ...
    to_build = [item for item in wanted
                if not _served_by_present(item, present, owned, used, serves, plan)]
    # ... then our indexes nothing uses go (their names are free again), then the builds.
    plan.drops = [n for n in owned if n in present and n not in used]
    taken = set(present) - set(plan.drops)
    for item in to_build:
        record = failed.get(item.production_name)
        if record is not None and not retry_failed and \
                _plain(record.get("spec")) == _plain(item.spec):
            plan.held[item.production_name] = str(record.get("name"))
            continue
        name = free_name(item.production_name, taken)
        taken.add(name)
        plan.creates.append(Create(name, item.production_name, item.spec))
    return plan


def _served_by_present(item: Mirrored, present: Mapping[str, Mapping[str, Any]],
                       owned: Mapping[str, Mapping[str, Any]], used: set[str], serves: Serves,
                       plan: MirrorPlan) -> bool:
    """Whether an index staging has already serves `item` (as is, changed in place when it is
    ours, or left alone when it is someone else's); claims it in `used` and notes it in
    `plan`. False: it must be built."""
    spec = item.spec
    match = next((n for n, index in present.items()
                  if n not in used and equivalent(index, spec, serves)), None)
    if match is not None:
        used.add(match)
        plan.reused[item.production_name] = match
        return True
    similar = [n for n, index in present.items()
               if n not in used and same_definition(index, spec, serves)]
    mine = next((n for n in similar if n in owned
                 and in_place_changes(present[n], spec) is not None), None)
    if mine is not None:
        used.add(mine)
        changes = in_place_changes(present[mine], spec) or {}
        plan.modifies.append(Modify(mine, item.production_name, changes))
        return True
    theirs = next((n for n in similar if n not in owned), None)
    if theirs is not None:
        used.add(theirs)
        plan.reused[item.production_name] = theirs
        plan.unmanaged[item.production_name] = (
            f"staging index {theirs!r} differs from production's only in hidden or TTL; "
            "stagesync never changes an index it did not create")
        return True
    return False


def free_name(name: str, taken: set[str]) -> str:
    """Production's name where staging has it free, else `<name>_mirror`, `_mirror_2`..."""
    if name not in taken:
        return name
    candidate, number = f"{name}_mirror", 2
    while candidate in taken:
        candidate, number = f"{name}_mirror_{number}", number + 1
    return candidate


def _items(key: Any) -> list[tuple[str, Any]]:
    items = key.items() if isinstance(key, Mapping) else key
    return [(str(path), direction) for path, direction in items]


def _plain(value: Any) -> Any:
    """Comparable: documents as dicts (order-free), numbers as floats."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    return value


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, int | float) and float(value).is_integer() \
        else str(value)


def _show(filter_: Mapping[str, Any]) -> str:
    parts = []
    for name, value in filter_.items():
        shown = "false" if value is False else ("{$exists: true}" if value == {"$exists": True}
                                                else repr(value))
        parts.append(f"{name}: {shown}")
    return "{" + ", ".join(parts) + "}"
