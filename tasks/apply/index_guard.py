"""The safety net under the index mirror: a mirrored index never refuses a write the sync makes.

The translation (`rules.index_translation`) keeps out of staging every index it knows would
refuse production's state (uniqueness, geo and text indexes on masked values, fields staging
does not have). What it did not foresee is caught here: when staging refuses a write of the
apply because of an index stagesync mirrored (recorded as owned in the state database), that
index is **demoted**: the demotion is recorded first (so no mirror pass builds it again), then
the index is dropped; the next mirror pass builds it non-unique where uniqueness refused, or
leaves it out with the reason (`status`, `check`, `stagesync_index_drift{kind="demoted"}`),
until production's definition changes. The refused write is planned again in the same apply,
so no copy is dead-lettered for it.

An index someone made in staging by hand is never touched: its refusals stay write errors.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import OperationFailure
from stagesync.deployments.index_mirror import cut_values
from stagesync.protocol.names import DUPLICATE_KEY
from stagesync.rules.index_translation import GEO_KINDS
from stagesync.rules.plan_types import PlannedWrite
from stagesync.state.index_mirror_records import IndexMirrorRecords
from stagesync.tasks import metrics

log = logging.getLogger("stagesync.indexes")

# Refusals that only an index of one kind makes (MongoDB's error codes, and the test server's
# where it uses another one for the same refusal).
GEO_CODES = frozenset({16755, 16572, 16804, 13026, 13027, 13068, 16433})
TEXT_CODES = frozenset({17261, 17262, 17263})
HASHED_CODES = frozenset({16766})
MESSAGE_MAX = 300


class MirroredIndexGuard:
    """One collection's safety net: which mirrored index refused a write, and its demotion."""

    def __init__(self, collection: str, target: Collection[dict[str, Any]],
                 records: IndexMirrorRecords) -> None:
        self.collection = collection
        self.target = target
        self.records = records

    def demote_refusing(self, code: int, message: str, write: PlannedWrite) -> str | None:
        """Demote the mirrored index that refused `write`; its staging name, or None when the
        refusal is not one of a mirrored index (a write error as before)."""
        owned = self.records.owned()
        if not owned:
            return None
        name = refusing_index(owned, code, message, written_paths(write))
        if name is None:
            return None
        record = owned[name]
        text = cut(code, message)
        self.records.demotion(str(record.get("production") or name), name, record.get("spec"),
                              code, text)
        try:
            self.target.drop_index(name)
        except OperationFailure as error:
            if error.code != 27:  # IndexNotFound: another worker demoted it first
                raise
        self.records.gone(name)
        metrics.INDEX_DEMOTIONS.labels(self.collection).inc()
        log.warning("mirrored index refused a sync write: demoted", extra={
            "collection": self.collection, "index": name, "error": text})
        return name


def refusing_index(owned: Mapping[str, Mapping[str, Any]], code: int, message: str,
                   paths: Iterable[str] | None) -> str | None:
    """Which owned index refused: the one the message names, else the one index of the kind
    the code belongs to that reads a written path (None: not ours, or not sure)."""
    named = re.search(r"index: (\S+)", message)
    if named and named.group(1) in owned:
        return named.group(1)
    if code == DUPLICATE_KEY:
        return None  # a duplicate names its index: not one of the mirror's
    kinds = (GEO_KINDS if code in GEO_CODES or "geo" in message.lower()
             else {"text"} if code in TEXT_CODES or "language" in message.lower()
             else {"hashed"} if code in HASHED_CODES else None)
    if kinds is None:
        return None
    written = None if paths is None else list(paths)
    candidates = []
    for name, record in owned.items():
        key = dict((record.get("spec") or {}).get("key") or {})
        of_kind = [str(path) for path, kind in key.items() if str(kind) in kinds]
        if of_kind and ("text" in kinds or written is None
                        or any(_overlaps(p, w) for p in of_kind for w in written)):
            candidates.append(name)
    return candidates[0] if len(candidates) == 1 else None


def written_paths(write: PlannedWrite) -> list[str] | None:
    """The paths a write sets: an insert's fields, an update's `$set` and `$unset` (None: not
    known, a pipeline)."""
    if write.is_insert:
        return [str(name) for name in write.document or {}] or None
    update = write.update
    if not isinstance(update, Mapping):
        return None
    paths: list[str] = []
    for operator in ("$set", "$unset"):
        paths += [str(p) for p in (update.get(operator) or {})]
    return paths


def _overlaps(index_path: str, written: str) -> bool:
    return index_path == written or index_path.startswith(written + ".") or \
        written.startswith(index_path + ".")


def cut(code: int, message: str) -> str:
    """The code and the message, documents and duplicate values cut out (personal data)."""
    return f"{code}: {cut_values(message)}"[:MESSAGE_MAX]
