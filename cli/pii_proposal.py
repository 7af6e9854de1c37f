"""Classify every leaf path of a production sample and propose `pii` rules and `allow` entries.

The logic of `stagesync pii scan` without its I/O: it reads documents already fetched (read
only) and returns findings and a YAML block. Values never leave this module: a finding holds
counts, a kind and a *shape* (`rules.pii_detect.shape`), never a value.

A path is personal when
- enough of its values are of one kind (`MIN_SHARE`: any single email or IBAN counts, while
  phone, card and IP shapes must make up half of the values, since ids and references can look
  like them one at a time), or
- some of its texts contain personal data (free text: any one counts), or
- its name says so (dates of birth, person names, government ids; emails, phones and
  addresses for fields the sample only shows empty).

Proposals: a personal field gets the rule of its kind (`RULES`), a business-key field `hash`
(the only rule keys may use). Every other path is proposed for `allow`, flagged for review
when the sample held no value for it. Rules and `allow` entries already configured are kept
when the sample agrees with them; an `allow` entry with personal data under it is replaced
by its harmless leaves. The result passes the configuration's own validation.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml
from stagesync.rules.paths import Path, is_prefix, join_dotted, split_dotted
from stagesync.rules.pii_detect import (
    Kind,
    find_in_text,
    name_kind,
    segment_looks_personal,
    shape,
    value_kind,
)

if TYPE_CHECKING:
    from stagesync.settings.collection import CollectionSettings

__all__ = ["MIN_SHARE", "RULES", "PathFinding", "ScanResult", "kind_label", "scan_documents"]

# The smallest share of a path's values that makes it personal, by kind found in the values.
MIN_SHARE: dict[str, float] = {
    "email": 0.0, "iban": 0.0, "card_number": 0.5, "ip_address": 0.5, "phone": 0.5,
    "street_address": 0.3, "personal_keys": 0.0,
}
RULES: dict[Kind, str] = {
    "email": "fake:email",
    "phone": "fake:phone",
    "person_name": "fake:name",
    "street_address": "fake:address",
    "card_number": "hash",
    "iban": "hash",
    "ip_address": "hash",
    "government_id": "hash",
    "date_of_birth": "null",
    "free_text": "redact",
    "personal_keys": "redact",  # a map keyed by emails or phones: its field names are the data
}
# Values kept per path: enough for shares over a sample, bounded for arrays of thousands.
MAX_VALUES_PER_PATH = 5000
_EMPTY = object()  # an empty document or array: a leaf that holds no value


class _PersonalKeys:
    """Stands for the fields of a document whose names are personal data (never descended)."""

    __slots__ = ("shape",)

    def __init__(self, example: str) -> None:
        self.shape = example


@dataclass
class PathFinding:
    """What the sample shows of one leaf path (dotted, no array positions). No values."""

    path: str
    documents: int = 0
    values: int = 0
    kind: Kind | None = None
    share: float | None = None  # of the non-null values matching `kind`; None when by name
    by_name: bool = False
    example: str | None = None  # a shape
    inside: tuple[str, ...] = ()  # free text: the kinds found inside
    decision: str = "allow"  # rule | allow | configured | allowed | key | id | unsupported
    rule: str | None = None
    note: str = ""


@dataclass
class ScanResult:
    collection: str
    source: str
    sampled: int
    findings: list[PathFinding]
    pii: dict[str, str]
    allow: list[str]
    review: set[str] = field(default_factory=set)  # allow entries without values to judge
    warnings: list[str] = field(default_factory=list)

    def proposal_yaml(self) -> str:
        """The `pii` and `allow` keys to paste into the collection's configuration."""
        lines = [
            f"# stagesync pii scan {self.collection}: {self.sampled} document(s) sampled "
            f"from {self.source}.",
            f"# Review, then paste into collection '{self.collection}' in place of its pii "
            "and allow keys.",
        ]
        kinds = {f.path: f for f in self.findings}
        entries = [(f"  {_scalar(path)}: {_scalar(rule)}", _rule_comment(kinds.get(path)))
                   for path, rule in sorted(self.pii.items())]
        allowed = [(f"  - {_scalar(path)}",
                    "no values in the sample: review" if path in self.review else "")
                   for path in self.allow]
        width = max((len(text) for text, _ in entries + allowed), default=0) + 2
        lines.append("pii:" if entries else "pii: {}")
        lines += [_with_comment(text, comment, width) for text, comment in entries]
        lines.append("allow:" if allowed else "allow: []")
        lines += [_with_comment(text, comment, width) for text, comment in allowed]
        lines += ["# Then fail closed: paths added to production later wait for a rule or allow.",
                  "# pii_mode: strict"]
        return "\n".join(lines) + "\n"


class _Tally:
    """Counts for one path while the sample is read."""

    def __init__(self) -> None:
        self.documents = 0
        self.values = 0
        self.strings = 0
        self.booleans = 0
        self.kinds: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.inside: Counter[str] = Counter()

    def add(self, value: Any) -> None:
        if value is None or value is _EMPTY or self.values >= MAX_VALUES_PER_PATH:
            return
        self.values += 1
        if isinstance(value, _PersonalKeys):
            self.kinds["personal_keys"] += 1
            self.examples.setdefault("personal_keys", f"{{{value.shape}: …}}")
            return
        if isinstance(value, bool):
            self.booleans += 1
            return
        if not isinstance(value, str):
            return
        self.strings += 1
        kind = value_kind(value)
        if kind is not None:
            self.kinds[kind] += 1
            self.examples.setdefault(kind, shape(value))
            return
        found = find_in_text(value)
        if found:
            self.kinds["free_text"] += 1
            self.inside.update(found)
            first = next(iter(found.values()))
            self.examples.setdefault("free_text", f"…{shape(first)}…")


def scan_documents(
    documents: Iterable[Mapping[str, Any]], collection: CollectionSettings
) -> ScanResult:
    """Classify the leaf paths of `documents` (a production sample) and propose settings."""
    tallies: dict[Path, _Tally] = {}
    sampled = 0
    for document in documents:
        sampled += 1
        seen: set[Path] = set()
        for path, value in leaf_values(document):
            tally = tallies.setdefault(path, _Tally())
            if path not in seen:
                seen.add(path)
                tally.documents += 1
            tally.add(value)
    findings = [_finding(join_dotted(path), tallies[path]) for path in sorted(tallies)]
    return _propose(collection, sampled, findings)


def leaf_values(document: Mapping[str, Any], prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    """(path, value) for every leaf value, through documents and arrays (no positions)."""
    if document:
        yield from _leaves(document, prefix)


def _leaves(value: Any, path: Path) -> Iterator[tuple[Path, Any]]:
    if isinstance(value, Mapping):
        if not value:
            yield path, _EMPTY
        for name, child in value.items():
            if segment_looks_personal(str(name)):
                # A map keyed by emails: the names are values; report the map, not the keys.
                yield (path or ("*",)), _PersonalKeys(shape(str(name)))
                continue
            yield from _leaves(child, (*path, name))
    elif isinstance(value, list):
        if not value:
            yield path, _EMPTY
        for element in value:
            yield from _leaves(element, path)
    else:
        yield path, value


def _finding(path: str, tally: _Tally) -> PathFinding:
    finding = PathFinding(path, tally.documents, tally.values)
    kinds = [(count, kind) for kind, count in tally.kinds.items()
             if kind != "free_text" and count / tally.values >= MIN_SHARE[kind] and count]
    if kinds:
        count, kind = max(kinds)
        finding.kind, finding.share = kind, count / tally.values  # type: ignore[assignment]
        finding.example = tally.examples[kind]
    elif tally.kinds["free_text"]:
        finding.kind, finding.share = "free_text", tally.kinds["free_text"] / tally.values
        finding.example = tally.examples["free_text"]
        finding.inside = tuple(kind for kind, _ in tally.inside.most_common())
    else:
        by_name = _by_name(path, tally)
        if by_name is not None:
            finding.kind, finding.by_name = by_name, True
    return finding


def _by_name(path: str, tally: _Tally) -> Kind | None:
    kind = name_kind(path)
    if kind is None or (tally.values and tally.booleans == tally.values):
        return None  # `notifications.email: true` is a setting, not an address
    if tally.values and not tally.strings and kind not in ("date_of_birth", "government_id"):
        return None  # numbers are not names, emails or streets
    return kind


@dataclass
class _Proposal:
    """What the configuration already says, and what the scan proposes so far."""

    configured: dict[Path, str]
    keys: list[Path]
    kept_as_is: list[Path]
    allowed: list[Path]
    proposed: dict[Path, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, collection: CollectionSettings) -> _Proposal:
        return cls(
            configured={split_dotted(path): str(rule) for path, rule in collection.pii.items()},
            keys=[split_dotted(path) for path in collection.business_key],
            kept_as_is=[split_dotted(collection.schema_version_field)]
            if collection.schema_version_field else [],
            allowed=[split_dotted(path) for path in collection.allow],
        )


def _propose(collection: CollectionSettings, sampled: int,
             findings: list[PathFinding]) -> ScanResult:
    proposal = _Proposal.of(collection)
    for finding in findings:
        _decide(finding, proposal)
    rules = _rules(proposal, findings)
    allow, review = _allow_list(proposal, findings, rules)
    return ScanResult(
        collection=collection.name, source=collection.source, sampled=sampled,
        findings=findings, pii={join_dotted(p): r for p, r in sorted(rules.items())},
        allow=sorted(allow), review=review, warnings=proposal.warnings,
    )


def _decide(finding: PathFinding, proposal: _Proposal) -> None:
    """One path's first decision: unsupported, id, configured, key, rule or allow."""
    path = split_dotted(finding.path)
    rule_path = _covering(path, proposal.configured)
    personal = finding.kind is not None
    if path == ("*",):
        finding.decision = "unsupported"
        finding.note = "field names at the top level are personal data"
        proposal.warnings.append(
            "top-level field names look like personal data (emails, phones): no rule masks a "
            "field name, and strict mode leaves them out; keep personal data out of field names")
    elif path[0] == "_id":
        finding.decision = "id"
        if personal:
            finding.note = "_id is copied as is and cannot be masked"
            proposal.warnings.append(f"_id looks like {_label(finding)}: it is copied as is and "
                                     "cannot be masked; keep personal data out of _id")
    elif rule_path is not None:
        finding.decision, finding.rule = "configured", proposal.configured[rule_path]
        finding.note = f"pii rule on {join_dotted(rule_path)}"
    elif any(is_prefix(key, path) for key in proposal.keys):
        if personal:
            finding.decision, finding.rule = "rule", "hash"
            finding.note = "business key: hash keeps it matchable"
            proposal.proposed[path] = "hash"
        else:
            finding.decision = "key"
    elif any(is_prefix(kept, path) for kept in proposal.kept_as_is):
        finding.decision, finding.note = "key", "schema_version_field"
    elif personal:
        finding.decision = "rule"
        finding.rule = RULES[finding.kind]  # type: ignore[index]
        proposal.proposed[path] = finding.rule
        if any(is_prefix(entry, path) for entry in proposal.allowed):
            finding.note = "listed in allow, but looks personal"
    else:
        finding.decision = "allow"
        if not finding.values:
            finding.note = "no values in the sample"


def _rules(proposal: _Proposal, findings: list[PathFinding]) -> dict[Path, str]:
    """The configured rules plus the proposed ones that a business key does not block."""
    proposed = dict(proposal.proposed)
    for path in list(proposed):
        blocked = next((key for key in proposal.keys if is_prefix(path, key) and key != path),
                       None)
        if blocked is not None:
            del proposed[path]
            proposal.warnings.append(
                f"{join_dotted(path)}: holds business-key field {join_dotted(blocked)}; "
                "give each field under it a rule instead")
    rules = {**proposal.configured, **proposed}
    # A rule under another rule's path adds nothing: the parent masks it whole.
    rules = {path: rule for path, rule in rules.items()
             if path in proposal.configured or not any(is_prefix(other, path) and other != path
                                                       for other in rules)}
    for finding in findings:
        if finding.decision == "rule" and split_dotted(finding.path) not in rules:
            finding.decision, finding.rule = "configured", None
            finding.note = "masked by the rule on a parent path"
    return rules


def _allow_list(proposal: _Proposal, findings: list[PathFinding], rules: dict[Path, str]
                ) -> tuple[list[str], set[str]]:
    """The `allow` entries to propose, and the ones to review (no values sampled)."""
    personal_paths = [split_dotted(f.path) for f in findings if f.decision == "rule"]
    kept_allow = [entry for entry in proposal.allowed
                  if not any(is_prefix(entry, path) for path in personal_paths)
                  and not any(is_prefix(rule, entry) for rule in rules)]
    allow: list[str] = [join_dotted(entry) for entry in kept_allow]
    review: set[str] = set()
    for finding in findings:
        path = split_dotted(finding.path)
        if finding.decision != "allow" or any(is_prefix(entry, path) for entry in kept_allow):
            if finding.decision == "allow":
                finding.decision = "allowed"
            continue
        covering = _covering(path, rules)
        if covering is not None:
            finding.decision = "configured"
            finding.note = f"masked with {join_dotted(covering)}"
            continue
        allow.append(finding.path)
        if not finding.values:
            review.add(finding.path)
    return allow, review


def _covering(path: Path, candidates: Mapping[Path, Any]) -> Path | None:
    return next((c for c in sorted(candidates, key=len) if is_prefix(c, path)), None)


def kind_label(kind: str) -> str:
    """`date_of_birth` -> `date of birth`, as tables and comments show a kind."""
    return "names of fields" if kind == "personal_keys" else kind.replace("_", " ")


def _label(finding: PathFinding | None) -> str:
    if finding is None or finding.kind is None:
        return ""
    label = kind_label(finding.kind)
    if finding.inside:
        label += " (" + ", ".join(kind_label(kind) for kind in finding.inside) + ")"
    return label


def _rule_comment(finding: PathFinding | None) -> str:
    if finding is None:
        return "configured"
    label = _label(finding)
    if finding.decision == "configured":
        return "configured"
    return f"{label}, by name" if finding.by_name else label


def _with_comment(text: str, comment: str, width: int) -> str:
    return f"{text.ljust(width)}# {comment}" if comment else text


def _scalar(text: str) -> str:
    """`text` as a YAML scalar that reads back as the same string (plain when it can be)."""
    plain = "#" not in text and not text.startswith(("&", "*", "!", "%", "@", "`", "-", "?"))
    if plain:
        try:
            plain = yaml.safe_load(f"{text}: {text}") == {text: text}
        except yaml.YAMLError:
            plain = False
    return text if plain else json.dumps(text, ensure_ascii=False)
