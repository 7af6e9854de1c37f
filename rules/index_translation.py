"""Production's secondary indexes, translated into indexes staging can carry without ever
breaking the sync; and the plan that makes staging's indexes match them. No I/O.

The principle: **a mirrored index never refuses a write the sync makes.** Production already
enforced its constraints when it accepted a write; staging's job is to hold production's
current state. Copying an index as is works for a plain replica, not for staging, which holds
more than production (soft-deleted copies, revived documents, QA fixtures), less (dropped PII,
paths in `staging_fields`), other values (masked PII), and receives production's state one
document at a time, in no particular order across documents. So:

- **unique**: mirrored **non-unique**, with a note (`status` and `check` show it). Why, of the
  two routes issue 28 offered: staging applies each document's *current* state, so a value
  production moves between documents (a swap through a temporary value, a rotation, a
  hand-over, a value released by a delete) reaches the copy that takes it while the copy that
  gave it up may not have been applied yet (another batch, a backlog, the watcher's hold-back,
  a retry). A unique index then refuses a write of production's current, valid state. Keeping
  the index unique and resolving in the apply (refresh the stale holder from production in
  the same round, break cycles by a temporary release as the business key's hand-over does)
  is possible for one collection's applies, but every path that writes staging would need it
  (stream, resync chunks, replays, every environment), the holder is found only through the
  server's error (one query and one production read per collision), and a cycle needs a
  staging write of a value production never held. Production's unique index has already
  checked every value staging receives, so the only thing a unique staging index adds is
  refusing a *QA* write that production would refuse: that is the cost of this route (a QA
  fixture may duplicate a production value; QA tooling that relied on E11000 in staging
  must check itself). Queries are planned on the same keys: a non-unique index serves every
  query the unique one serves. stagesync's own business key stays unique (`stagesync_key`,
  with its hand-over in the planner);
- **TTL**: mirrored without `expireAfterSeconds` (expiry would hard-delete synced documents
  behind the soft deletes' back), unless `mirror_ttl: true`;
- **fields staging does not have**: an index on a field under `drop` (or inside a value
  masked as a whole), on a path in `staging_fields` (the sync never writes it: every copy
  lacks it), or one `pii_mode: strict` leaves out, is not built; one that mixes such a field
  with others is skipped with the reason;
- **masked fields** (`hash`, `fake`, `redact`, `null`): the index is built on the masked
  values with production's keys, except where a masked value is something the index refuses:
  - geo (`2dsphere`, `2d`, `geoHaystack`) on a field masked by `hash`, `fake` or `redact`
    (or with such a part): the masked value is a string (or an array of strings), never a
    geometry or a coordinate pair, so every copy would be refused. Skipped, with the reason.
    `null` is harmless (a null geo field is not indexed);
  - text: any value may sit in a text field (non-strings are not indexed), but the language
    override field (`language_override`, default `language`) must name a language: masked
    by `hash`, `fake` or `redact` it does not, so the index is skipped. Masked text fields
    are indexed as masked strings (noted);
  - hashed: refuses only arrays, and masking keeps a value's shape (an array stays an array
    of masked elements), so production already refused what staging would: built, noted;
  - wildcard: takes any value: built, noted (it also indexes staging's own fields);
  - collation: compares the masked strings, never refuses: built, noted;
- **partial filters** on fields staging does not have, or on masked fields (other than
  `{$exists: true}`, which masking keeps), would make the index cover other documents than
  production's (a masked value never equals production's literal): skipped, with the reason;
- everything else is copied (compound, multikey, sparse, partial, hidden, collation, wildcard,
  text weights and language, 2dsphere, hashed), and an index without a collation gets the
  simple one explicitly (a staging collection with another default collation must not give it
  that one).

What this does not foresee, the apply's safety net catches: an index that refuses sync writes
anyway is demoted (`demote`: non-unique, or skipped and recorded) and reported.

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

SIMPLE_COLLATION = {"locale": "simple"}
# Never copied: the index version and namespace are the server's, `background` is ignored
# since MongoDB 4.2, `prepareUnique` is a passing state of a conversion to unique.
NOT_COPIED = frozenset({"v", "ns", "name", "background", "prepareUnique"})
# Compared beside `serves` for equivalence; a change in any of them needs a new index.
COMPARED = ("weights", "default_language", "language_override", "wildcardProjection", "bits",
            "min", "max", "bucketSize")
TEXT_KEYS = ("_fts", "_ftsx")
DUPLICATE_KEY_CODE = 11000
GEO_KINDS = frozenset({"2dsphere", "2d", "geoHaystack"})
# Masking rules whose values are strings whatever production held (`null` gives null).
RETYPING = frozenset({"hash", "fake", "redact"})
UNIQUE_NOTE = ("non-unique: production's unique index already checked every value staging "
               "receives, and a value production moves between documents (a swap, a "
               "hand-over, a value freed by a delete) would collide with a copy not yet "
               "updated; a QA write that duplicates a value is not refused in staging")

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
    fields = index_fields(index)
    gone = _pii_effects(fields, collection)
    if gone:
        kept = [f for f in fields if f not in gone]
        why = "; ".join(f"{f}: {reason}" for f, reason in gone.items())
        if kept:
            return Skipped(name, f"skipped: it mixes fields staging does not have ({why}) "
                                 f"with {', '.join(kept)}; a partial copy would plan queries "
                                 "unlike production's")
        return Skipped(name, f"not indexed: {why}")
    refused = _refuses_masked(index, collection) or _filter_unlike(index, collection)
    if refused:
        return Skipped(name, f"skipped: {refused}")
    notes: list[str] = []
    if "expireAfterSeconds" in spec and not mirror_ttl:
        seconds = spec.pop("expireAfterSeconds")
        notes.append(f"TTL dropped (expireAfterSeconds {_number(seconds)} would hard-delete "
                     "synced documents behind the soft deletes; mirror_ttl: true keeps it)")
    if spec.pop("unique", False):
        notes.append(UNIQUE_NOTE)
    notes.extend(_masked_notes(index, collection))
    return Mirrored(name, spec, tuple(notes))


def translate_all(indexes: Iterable[Mapping[str, Any]], collection: CollectionSettings,
                  mirror_ttl: bool, demoted: Mapping[str, Mapping[str, Any]] | None = None
                  ) -> list[Mirrored | Skipped]:
    """Every production index as staging carries it; `demoted` (production name -> record
    with the `spec` it refused under, `code` and `error`) applies the safety net's
    demotions while production's definition stays the one that refused."""
    found = (translate(index, collection, mirror_ttl) for index in indexes)
    return [demote(item, demoted or {}) for item in found if item is not None]


def demote(item: Mirrored | Skipped, demoted: Mapping[str, Mapping[str, Any]]
           ) -> Mirrored | Skipped:
    """A mirrored index staging refused sync writes on: non-unique if uniqueness refused,
    else not built; as long as production's definition is the one it refused under."""
    record = demoted.get(item.production_name)
    if not isinstance(item, Mirrored) or record is None or \
            _plain(record.get("spec")) != _plain(item.spec):
        return item
    why = (f"staging refused sync writes on it ({record.get('error') or record.get('code')}); "
           "demoted by the safety net until production's definition changes")
    if item.spec.get("unique") and record.get("code") == DUPLICATE_KEY_CODE:
        spec = {k: v for k, v in item.spec.items() if k != "unique"}
        return Mirrored(item.production_name, spec, (*item.notes, f"non-unique: {why}"))
    return Skipped(item.production_name, f"skipped: {why}")


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


def _pii_effects(fields: Sequence[str], collection: CollectionSettings) -> dict[str, str]:
    """Fields staging does not have, with why."""
    gone: dict[str, str] = {}
    strict = Classification.from_settings(collection)
    for path in fields:
        staging_only = _staging_field(path, collection)
        if staging_only is not None:
            gone[path] = (f"staging_fields lists {staging_only!r}: the sync never writes it, "
                          "so no synced copy has it")
            continue
        for rule_path, rule in collection.pii.items():
            if path == rule_path or path.startswith(rule_path + "."):
                keeps_keys = rule.kind == "fake" and rule.fake_kind == "address"
                if rule.kind == "drop":
                    gone[path] = f"pii rule '{rule_path}: drop' removes it"
                elif path != rule_path and not keeps_keys:
                    gone[path] = (f"pii rule '{rule_path}: {rule}' replaces the whole value, "
                                  "so staging has no such field")
        if path in gone or strict is None or strict.covers(path):
            continue
        if not any(p.startswith(path + ".") for p in strict.paths):
            gone[path] = "pii_mode strict leaves it out (no pii rule or allow entry)"
    return gone


def _staging_field(path: str, collection: CollectionSettings) -> str | None:
    """The `staging_fields` entry that holds `path` (the path itself or a parent of it)."""
    return next((f for f in collection.staging_fields
                 if path == f or path.startswith(f + ".")), None)


def _masks(path: str, collection: CollectionSettings, kinds: frozenset[str]) -> str | None:
    """The PII rule (as `path: rule`) of one of `kinds` that changes the value at `path`: on
    the path, on a parent, or on a part of it."""
    for rule_path, rule in collection.pii.items():
        if rule.kind in kinds and (path == rule_path or path.startswith(rule_path + ".")
                                   or rule_path.startswith(path + ".")):
            return f"'{rule_path}: {rule}'"
    return None


def _refuses_masked(index: Mapping[str, Any], collection: CollectionSettings) -> str | None:
    """Why staging would refuse the masked values of a geo or text index, or None."""
    for path, kind in _items(index.get("key") or {}):
        if kind in GEO_KINDS:
            rule = _masks(path, collection, RETYPING)
            if rule is not None:
                return (f"a {kind} index on {path}, which pii rule {rule} turns into a string: "
                        "staging would refuse every copy (no geo keys can be extracted)")
    if any(kind == "text" for _, kind in _items(index.get("key") or {})):
        override = str(index.get("language_override") or "language")
        rule = _masks(override, collection, RETYPING)
        if rule is not None:
            return (f"a text index whose language override field {override!r} pii rule {rule} "
                    "masks: a masked value names no language, and staging would refuse it")
    return None


def _filter_unlike(index: Mapping[str, Any], collection: CollectionSettings) -> str | None:
    """Why the partial filter would select other documents in staging than in production."""
    expression = index.get("partialFilterExpression")
    if not expression:
        return None
    strict = Classification.from_settings(collection)
    for path, condition in filter_conditions(expression):
        if _staging_field(path, collection) is not None:
            return (f"its partial filter reads {path!r}, which staging_fields lists (no synced "
                    "copy has it): the index would cover other documents than production's")
        dropped = _masks(path, collection, frozenset({"drop"}))
        if dropped is not None or (strict is not None and not strict.covers(path)
                                   and not any(p.startswith(path + ".") for p in strict.paths)):
            why = f"pii rule {dropped} removes it" if dropped else "pii_mode strict leaves it out"
            return (f"its partial filter reads {path!r} ({why}): the index would cover other "
                    "documents than production's")
        masked = _masks(path, collection, frozenset({"hash", "fake", "redact", "null"}))
        if masked is not None and condition != {"$exists": True}:
            return (f"its partial filter reads {path!r}, which pii rule {masked} masks: a "
                    "masked value never matches production's condition, so the index would "
                    "cover other documents than production's")
    return None


def filter_conditions(expression: Any) -> list[tuple[str, Any]]:
    """Each (field, condition) of a filter, through `$and`, `$or` and `$nor`."""
    found: list[tuple[str, Any]] = []
    if not isinstance(expression, Mapping):
        return found
    for name, value in expression.items():
        if str(name) in ("$and", "$or", "$nor") and isinstance(value, list | tuple):
            for item in value:
                found += filter_conditions(item)
        elif not str(name).startswith("$"):
            found.append((str(name), value))
    return found


def _masked_notes(index: Mapping[str, Any], collection: CollectionSettings) -> list[str]:
    """How an index of a kind that takes masked values as they are differs from production's."""
    masked = [f for f in index_fields(index)
              if _masks(f, collection, frozenset({"hash", "fake", "redact", "null"}))]
    if not masked:
        return []
    kinds = {str(kind) for _, kind in _items(index.get("key") or {})}
    paths = ", ".join(masked)
    if "text" in kinds:
        what = "text index"
    elif "hashed" in kinds:
        what = "hashed index"
    elif any(str(p).endswith("$**") for p, _ in _items(index.get("key") or {})):
        what = "wildcard index"
    else:
        what = "index"
    notes = [f"{what} built on masked values of {paths}"]
    collation = index.get("collation") or {}
    if collation and collation.get("locale") not in (None, "simple"):
        notes.append("its collation compares the masked strings, not production's values")
    return notes


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
