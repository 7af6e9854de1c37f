"""What `stagesync init` proposes, without its I/O: business-key candidates and the starter file.

Business keys identify a document across production and staging, so a good one is unique and
present in every document. Candidates, best first:
1. production's unique indexes (not partial, not sparse, not `_id`): the database already
   guarantees uniqueness, and the shorter key wins among them;
2. single fields that every sampled document holds, with a scalar value unique in the sample
   (a hint only: a sample proves nothing about the whole collection).
The starter text is YAML with comments; every value is written as JSON (valid YAML flow), so
it reads back as exactly what was proposed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Index keys whose kind (text, 2dsphere, hashed) cannot stand for a field's value.
_PLAIN_DIRECTIONS = (1, -1)
_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]")


@dataclass
class Candidate:
    """One business-key proposal and why."""

    fields: list[str]
    reason: str  # "unique index NAME" | "unique in the sample"


@dataclass
class ProposedCollection:
    """Everything the starter file says about one production collection."""

    name: str
    source: str
    target: str
    documents: int  # an estimate
    sampled: int
    candidates: list[Candidate]
    pii: dict[str, str] = field(default_factory=dict)
    allow: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def key_candidates(indexes: Iterable[Mapping[str, Any]],
                   sample: Sequence[Mapping[str, Any]]) -> list[Candidate]:
    """Unique indexes first (shortest first, then by name), then fields unique in the sample."""
    from_indexes: list[Candidate] = []
    for index in indexes:
        keys = list(index.get("key", {}).items())
        if not index.get("unique") or index.get("partialFilterExpression") \
                or index.get("sparse") or not keys:
            continue
        if any(direction not in _PLAIN_DIRECTIONS for _, direction in keys):
            continue
        fields = [name for name, _ in keys]
        if fields == ["_id"] or any(name.startswith("_sync") for name in fields):
            continue
        from_indexes.append(Candidate(fields, f"unique index {index.get('name', '?')}"))
    from_indexes.sort(key=lambda c: (len(c.fields), c.reason))
    seen = [c.fields for c in from_indexes]
    from_sample = [Candidate([name], "unique in the sample") for name in _unique_in(sample)
                   if [name] not in seen]
    return from_indexes + from_sample


def _unique_in(sample: Sequence[Mapping[str, Any]]) -> list[str]:
    """Top-level fields every sampled document holds with a distinct string or integer
    (at least two documents: one document makes every field look unique)."""
    if len(sample) < 2:
        return []
    names = [n for n in sample[0] if n != "_id" and not n.startswith("_sync")]
    unique = []
    for name in names:
        values = [doc.get(name) for doc in sample]
        if all(isinstance(v, str | int) and not isinstance(v, bool) for v in values) \
                and len(set(values)) == len(values):
            unique.append(name)
    return unique


def collection_name(database: str, collection: str, taken: set[str]) -> str:
    """A configuration name (letters, digits, `_`, `-`; it names the queues): the
    collection's own name, prefixed with its database when another database has one alike."""
    base = _NAME_CHARACTERS.sub("_", collection).strip("_-") or "collection"
    if not base[0].isalpha():
        base = "c_" + base
    name = base[:63]
    if name in taken:
        name = f"{_NAME_CHARACTERS.sub('_', database)}_{base}"[:63]
    number = 2
    while name in taken:
        name = f"{base[:60]}_{number}"
        number += 1
    taken.add(name)
    return name


def starter_yaml(prod_uri: str, staging_uri: str, redis_url: str, secret: str,
                 collections: Sequence[ProposedCollection], reached: str | None) -> str:
    """The commented starter configuration. `reached`: None when production was sampled,
    else why it was not (the file then holds an example collection to edit)."""
    lines = [
        "# stagesync configuration, written by `stagesync init`. Review every line, then run",
        "# `stagesync check`. Every key is described in the README, Configuration.",
        "",
        "# Production is only ever read (a user with the read role is enough; see README,",
        "# Privileges). Staging is written: it must be another deployment.",
        f"prod: {{uri: {_flow(prod_uri)}}}",
        f"staging: {{uri: {_flow(staging_uri)}}}",
        "# The Celery broker: watcher and workers meet here.",
        f"redis_url: {_flow(redis_url)}",
        "# Keys the hash and fake PII rules. Keep it secret and the same everywhere; better:",
        "# delete this line and set STAGESYNC_PII_SECRET in the environment.",
        f"pii_secret: {_flow(secret)}",
        "",
    ]
    if reached is not None:
        lines += [
            f"# Production was not sampled ({reached}): the collection below is an example",
            "# to replace. `stagesync init --prod-uri URI` proposes them from production.",
            "collections:",
            "  - name: orders                  # names the queues: stagesync.orders",
            '    source: "shop.orders"          # database.collection in production',
            '    target: "shop_staging.orders"  # database.collection in staging (never equal)',
            '    business_key: ["orderNo"]      # fields that identify a document in both',
            "    # pii: {email: hash, name: \"fake:name\"}   # see `stagesync pii scan orders`",
        ]
        return "\n".join(lines) + "\n"
    usable = [c for c in collections if c.candidates]
    lines.append("collections:" if usable else "collections: []  # no collection has a "
                                                  "business key candidate: see below")
    for proposed in collections:
        lines += _collection_lines(proposed, commented=not proposed.candidates)
    lines += [
        "",
        "# Optional keys, each with its default: watcher, worker, status, metrics, schedule.",
        "# metrics: {watcher_port: 9101, worker_port_base: 9102}   # Prometheus (0: off)",
    ]
    return "\n".join(lines) + "\n"


def _collection_lines(proposed: ProposedCollection, commented: bool) -> list[str]:
    mark = "# " if commented else ""
    lines = ["", f"  # {proposed.source}: about {proposed.documents} document(s), "
                 f"{proposed.sampled} sampled"]
    if commented:
        lines.append("  # No unique index and no field unique in the sample: choose a business "
                     "key, then uncomment.")
    lines += [
        f"  {mark}- name: {proposed.name}",
        f"  {mark}  source: {_flow(proposed.source)}",
        f"  {mark}  target: {_flow(proposed.target)}",
    ]
    if proposed.candidates:
        best, *others = proposed.candidates
        lines.append(f"  {mark}  business_key: {_flow(best.fields)}   # {best.reason}")
        lines += [f"  {mark}  # or: business_key: {_flow(c.fields)}   # {c.reason}"
                  for c in others[:3]]
    else:
        lines.append(f'  {mark}  business_key: ["FIELD"]')
    if proposed.pii:
        lines.append(f"  {mark}  # From `stagesync pii scan {proposed.name}` on the sample: "
                     "review each rule.")
        lines.append(f"  {mark}  pii:")
        lines += [f"  {mark}    {_flow(path)}: {_flow(rule)}"
                  for path, rule in sorted(proposed.pii.items())]
    else:
        lines.append(f"  {mark}  # pii: {{}}   # the scan found no personal data in the sample")
    lines += [f"  {mark}  # warning: {warning}" for warning in proposed.warnings]
    lines.append(f"  {mark}  # staging_fields: [qaNotes]   # fields only staging writes")
    return lines


def _flow(value: Any) -> str:
    """JSON is YAML: a scalar or list that reads back exactly."""
    return json.dumps(value, ensure_ascii=False)
