"""The PII parts of `stagesync check`: strict collections' unclassified paths, and masking
rules that would make staging's unique indexes collide.

- A strict collection with production paths that nothing classifies is an error (exit 1):
  those fields are left out of staging until someone gives them a rule or lists them in
  `allow`. The paths come from a sample of production (the newest documents, where new fields
  appear first) and from what the workers recorded while streaming (`state.unclassified_paths`).
- A rule that maps many values to one (`redact`, `null`, `drop`) on a field that a unique index
  covers in staging makes the second masked document collide with the first: a warning that
  names the index.
"""

from __future__ import annotations

from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import PyMongoError
from stagesync.deployments.production import ProductionReader
from stagesync.rules.document import Document
from stagesync.rules.paths import overlaps, split_dotted
from stagesync.rules.pii_strict import Classification
from stagesync.settings.collection import CollectionSettings
from stagesync.state.unclassified_paths import safe_path, unclassified_report

STRICT_SAMPLE = 200
SHOWN_PATHS = 20
MANY_TO_ONE = ("redact", "null", "drop")



def unclassified_problems(
    production: ProductionReader, state_db: Database[Document], collection: CollectionSettings
) -> list[str]:
    """One error naming the paths a strict collection leaves out; none in open mode."""
    classification = Classification.from_settings(collection)
    if classification is None:
        return []
    found: set[str] = set()
    try:
        sample = production.collection(collection).find(
            collection.filter or {}, sort=[("_id", -1)], limit=STRICT_SAMPLE
        )
        for document in sample:
            found |= {safe_path(path) for path in classification.filter(document)[1]}
    except PyMongoError as error:
        return [f"{collection.name}: cannot sample {collection.source}: {error}"]
    report = unclassified_report(state_db, collection)
    found |= {entry["path"] for entry in report["paths"]}
    if not found:
        return []
    paths = sorted(found)
    shown = ", ".join(paths[:SHOWN_PATHS])
    more = len(paths) - SHOWN_PATHS + int(report["more"])
    if more > 0:
        shown += f" and {more} more"
    return [
        f"{collection.name}: pii_mode strict leaves {len(paths)} unclassified path(s) out of "
        f"staging: {shown}; give each a pii rule or list it in allow "
        f"(`stagesync pii scan {collection.name}` proposes both)"
    ]


def unique_index_warnings(
    staging: MongoClient[Document], collection: CollectionSettings
) -> list[str]:
    """A warning per many-to-one rule on a field that a unique staging index covers."""
    rules = {path: rule for path, rule in collection.pii.items() if rule.kind in MANY_TO_ONE}
    if not rules:
        return []
    try:
        indexes = staging[collection.target_db][collection.target_collection].index_information()
    except PyMongoError as error:
        return [f"{collection.name}: cannot list the indexes of {collection.target}: {error}"]
    warnings: list[str] = []
    for name, spec in sorted(indexes.items()):
        if not spec.get("unique") or name == "_id_":
            continue
        fields = [str(field) for field, _ in spec.get("key", [])]
        if any(field.split(".")[0] == "_sync" for field in fields):
            continue  # stagesync's own indexes hold digests, never masked values
        for path, rule in sorted(rules.items()):
            if any(overlaps(split_dotted(path), split_dotted(field)) for field in fields):
                warnings.append(
                    f"{collection.name}: pii rule '{path}: {rule}' maps many values to one, "
                    f"but unique index '{name}' ({', '.join(fields)}) covers it in staging: "
                    "the second masked document will collide; use hash or fake instead"
                )
    return warnings
