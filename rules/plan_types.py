"""What a batch plan is made of: the collection's merge rules in path form, the staging view
a plan reads, and the planned writes and dead letters it returns. Pure data, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bson import ObjectId
from stagesync.rules.field_update import Update
from stagesync.rules.identity import business_key, decode_id, key_digest, key_paths
from stagesync.rules.merge import FieldRules
from stagesync.rules.paths import Path, split_dotted
from stagesync.settings.collection import CollectionSettings

Outcome = Literal["created", "updated", "unchanged", "soft_deleted", "tombstoned", "released"]
Reason = Literal[
    "missing_business_key", "key_conflict", "schema_version", "document_too_large"
]


class Unsynced:
    """Expectation for a document that has never been synced (no `_sync`)."""

    def __repr__(self) -> str:
        return "UNSYNCED"


UNSYNCED = Unsynced()


@dataclass(frozen=True)
class CollectionRules:
    """The merge-relevant part of a collection's configuration, in path form."""

    key_paths: tuple[Path, ...]
    fields: FieldRules
    schema_version_field: Path | None = None
    accepted_schema_versions: frozenset[Any] | None = None
    # New copies take production's `_id` where staging has it free (`staging_ids: production`).
    keep_production_ids: bool = True

    @classmethod
    def from_settings(cls, settings: CollectionSettings) -> CollectionRules:
        accepted = settings.accepted_schema_versions
        return cls(
            key_paths=tuple(key_paths(settings.business_key)),
            fields=FieldRules(
                staging_fields=tuple(split_dotted(f) for f in settings.staging_fields),
                soft_delete_field=split_dotted(settings.soft_delete_field),
            ),
            schema_version_field=(
                split_dotted(settings.schema_version_field)
                if settings.schema_version_field else None
            ),
            accepted_schema_versions=frozenset(accepted) if accepted is not None else None,
            keep_production_ids=settings.staging_ids == "production",
        )

    @property
    def soft_delete_field(self) -> Path:
        return self.fields.soft_delete_field

    def key_of(self, document: Mapping[str, Any]) -> str | None:
        values = business_key(document, self.key_paths)
        return key_digest(values) if values is not None else None


@dataclass(frozen=True)
class StagingView:
    """The staging documents a batch can touch, as read just now.

    Normally only their `_sync` and soft-delete flag are read: a plan needs no more, since
    `_sync.fp` tells whether production's content changed. Documents in `whole` (staging
    `_id`s) were read in full: an exact comparison of their content (resync repairs drift made
    by hand), or a merge that update operators cannot address.
    """

    by_pid: Mapping[str, Mapping[str, Any]]
    by_key: Mapping[str, Mapping[str, Any]]
    # Documents that never went through a sync, matched on the raw business-key fields.
    unsynced_by_key: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    whole: frozenset[str] = frozenset()  # encoded staging `_id`s (any BSON type)
    # Encoded production `_id`s that a staging document of another origin already holds (an
    # insert under that `_id` failed): their copies get a new ObjectId.
    taken_ids: frozenset[str] = frozenset()
    # Copies that a read by a span of `_sync.pid` found beside the batch's (a resync's, see
    # `TargetCollection.read_view`): pid -> copy; None: too many to keep. The plan leaves
    # them; the resync sweeps them.
    others: Mapping[str, Mapping[str, Any]] | None = field(default_factory=dict)

    def new_id(self, pid: str, rules: CollectionRules) -> Any:
        """The `_id` of a new copy: production's where that is free, else a new ObjectId."""
        if rules.keep_production_ids and pid not in self.taken_ids:
            return decode_id(pid)
        return ObjectId()


@dataclass(frozen=True)
class PlannedWrite:
    """One conditional write. `expect` is the `_sync.v` the document must still hold (None for
    an insert, UNSYNCED for a document without `_sync`). An insert carries `document`; any
    other write carries `update` (an update document or pipeline) or is a `delete`."""

    pid: str | None
    staging_id: Any
    expect: int | Unsynced | None
    outcome: Outcome
    document: dict[str, Any] | None = None
    update: Update | None = None
    delete: bool = False
    # The document becomes a live copy (created, adopted, revived): relevant to subsets.
    enters: bool = False

    @property
    def is_insert(self) -> bool:
        return self.expect is None


@dataclass(frozen=True)
class DeadLetter:
    pid: str
    reason: Reason
    detail: str
    key: str | None = None


@dataclass
class BatchPlan:
    writes: list[PlannedWrite] = field(default_factory=list)
    # Writes on other documents that must land before some of this batch's writes can
    # (freeing a business key); the changes waiting on them are in `deferred`.
    releases: list[PlannedWrite] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    # Already exactly as production has them, and left as they are (`write_unchanged=False`):
    # pid -> staging `_id`.
    unchanged: dict[str, Any] = field(default_factory=dict)
    deferred: list[str] = field(default_factory=list)
    # Outside the target's subset, with no copy: nothing written (see `plan_batch`).
    outside: list[str] = field(default_factory=list)
    # Production documents whose current state decides a key conflict: read them, re-plan.
    need_production: set[str] = field(default_factory=set)
    # Business keys this batch stops holding live: dead-lettered conflicts on them can retry.
    released_keys: set[str] = field(default_factory=set)
    # Staging documents (by `_id`) to read in full and re-plan: their merge needs content.
    need_content: set[str] = field(default_factory=set)  # encoded staging `_id`s


