"""What one collection's applies need (built once per worker process) and what an apply
returns; the errors an apply raises; and the plan-only sink of `stagesync watch --dry-run`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database
from stagesync.deployments.failures import TransientError
from stagesync.deployments.production import ReadOnlyCollection, read_documents
from stagesync.protocol.names import scoped_name
from stagesync.rules.document import Document
from stagesync.rules.identity import decode_id, encode_id
from stagesync.rules.pii import Masker
from stagesync.rules.plan_types import CollectionRules, DeadLetter, PlannedWrite
from stagesync.rules.subset import in_sample
from stagesync.settings.collection import CollectionSettings
from stagesync.state.dead_letters import DeadLetterStore, register_marker
from stagesync.state.index_mirror_records import IndexMirrorRecords
from stagesync.state.unclassified_paths import held_count, record_unclassified
from stagesync.tasks.apply.index_guard import MirroredIndexGuard
from stagesync.tasks.apply.references import ReferenceResolver
from stagesync.tasks.apply.staging_io import TargetCollection, WriteReport
from stagesync.tasks.metrics import UNCLASSIFIED_PATHS


class ContentionError(TransientError):
    """Writes kept losing races for several rounds; retry the task with a new version."""


class WriteErrors(RuntimeError):
    """Staging refused some writes for good reasons of its own (a user's unique index, a
    validator, a size limit). Raised after the rest of the batch is done, so the task can
    retry and isolate the failing changes before they are dead-lettered."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        super().__init__(f"{len(errors)} write(s) refused by staging: "
                         + "; ".join(sorted(set(errors.values()))[:3]))
        self.errors = dict(errors)


@dataclass
class PlanOnly:
    """Where a plan-only apply puts what it would write, instead of writing it.

    The dry run goes through the real apply path (same reads, reference translation, rounds
    and key hand-overs), so it prints the writes an apply would make; every write is taken as
    landed, since nothing races a plan that writes nothing. Where a real apply would re-read
    staging after its first writes (a key handed over within the batch), the plan stops and
    names those changes in `replanned`.
    """

    writes: list[PlannedWrite] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # Changes the apply would plan again after its writes (a business key handed over).
    replanned: set[str] = field(default_factory=set)
    # What the writes were planned from: masked, references translated, by pid.
    content: dict[str, Document | None] = field(default_factory=dict)

    def execute(self, writes: Sequence[PlannedWrite],
                marks: Mapping[str, int] | None = None) -> WriteReport:
        """Taken as landed; `marks` shape only real writes' filters."""
        self.writes.extend(writes)
        return WriteReport()


@dataclass
class ApplyContext:
    """Everything one collection's applies need, built once per worker process."""

    settings: CollectionSettings
    rules: CollectionRules
    masker: Masker
    production: ReadOnlyCollection
    target: TargetCollection
    state_db: Database[Document]
    dead_letters: DeadLetterStore
    references: ReferenceResolver | None = None
    secret: bytes = b""  # keys the `subset: {percent}` sample
    # The safety net under mirrored indexes (None: `indexes: none`).
    index_guard: MirroredIndexGuard | None = None
    # The environment whose copies `target` holds; None for the main staging. Versions and
    # masking belong to the collection (`name`); what the state database keeps per target
    # (dead letters, pending references, index-mirror records) is keyed by `scope`.
    environment: str | None = None
    # The environment is being copied (created, reset, or thawed by a resync): its copy's
    # creates are not confirmed, so no apply may leave a document out untombstoned
    # (`applier._outside`).
    filling: bool = False

    def __post_init__(self) -> None:
        # Dead letters of this scope recorded in this process, whoever records them, mark
        # their copies here (`state.dead_letters`: the signal).
        register_marker(self.scope, self.mark_dead_letters)

    @classmethod
    def build(
        cls,
        settings: CollectionSettings,
        masker: Masker,
        production: ReadOnlyCollection,
        staging: MongoClient[Document],
        state_db: Database[Document],
        references: ReferenceResolver | None = None,
        secret: bytes = b"",
    ) -> ApplyContext:
        rules = CollectionRules.from_settings(settings)
        target = TargetCollection(staging, settings, rules)
        guard = MirroredIndexGuard(settings.name, target.collection,
                                   IndexMirrorRecords(state_db, settings.name)) \
            if settings.indexes == "mirror" else None
        return cls(settings, rules, masker, production, target, state_db,
                   DeadLetterStore(state_db), references, secret, guard)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def scope(self) -> str:
        """`orders` for the main staging, `orders@pr-1` for an environment's copies."""
        return scoped_name(self.settings.name, self.environment)

    def mark_dead_letters(self, versions: Mapping[str, int]) -> None:
        """Mark the copies of these dead-lettered pids (pid -> the entry's version), then
        resolve the entries whose copy a newer apply has written meanwhile: that apply may have
        skipped its clear, having taken its version before this dead letter was signalled."""
        stored = self.target.mark_dead_lettered(versions)
        newer: dict[int, list[str]] = {}
        for pid, version in versions.items():
            current = stored.get(pid)
            if current is not None and current > version:
                newer.setdefault(current, []).append(pid)
        for current, pids in newer.items():
            self.dead_letters.clear(self.scope, pids, older_than=current)

    @property
    def confirms_entered(self) -> bool:
        """Whether this target's subset follows another subset (`SubsetLinks.follows_subset`):
        its applies then tombstone none of the many documents outside it, and every copy an
        apply makes live is confirmed afterwards (`applier.confirm_entered`)."""
        return self.references is not None and self.references.follows_subset

    def sampled(self, pid: str) -> bool:
        """In the `subset: {percent}` sample (always, without one)."""
        subset = self.settings.subset
        return subset is None or subset.percent is None or in_sample(
            pid, subset.percent, self.secret)

    def read_production(self, pids: Iterable[str], record: bool = True,
                        keep: Callable[[str], bool] | None = None
                        ) -> dict[str, Document | None]:
        """Current production documents, masked the moment they are read; None when gone.
        `record=False` (a plan-only apply) leaves the strict mode's record alone. Only the
        documents `keep` takes are masked (default: those in this target's sample); the others
        read as gone."""
        keep = keep or self.sampled
        wanted = list(dict.fromkeys(pids))
        found: dict[str, Document | None] = dict.fromkeys(wanted)
        documents = read_documents(
            self.production, [decode_id(pid) for pid in wanted], self.settings.filter
        )
        for document in documents:
            pid = encode_id(document["_id"])
            if not keep(pid):
                continue  # outside the sample: for staging, as if production had none
            if pid in found:
                found[pid] = self.masker.mask(document)
        if record:
            self.record_unclassified()
        else:
            self.masker.take_unclassified()
        return found

    def record_unclassified(self) -> None:
        """Strict PII mode: record the paths the masking left out, never their values."""
        paths = self.masker.take_unclassified()
        if paths:
            record_unclassified(self.state_db, self.name, paths)
            UNCLASSIFIED_PATHS.labels(self.name).set(held_count(self.state_db, self.name))


@dataclass
class ApplyResult:
    version: int
    outcomes: Counter[str] = field(default_factory=Counter)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    rounds: int = 0
    staging_writes: int = 0
    # The staging `_id` of every document this apply wrote or found up to date, by pid.
    staging_ids: dict[str, Any] = field(default_factory=dict)
    # Pids whose copy became live (created, adopted, revived) or stopped being live.
    entered: set[str] = field(default_factory=set)
    left: set[str] = field(default_factory=set)
    # Copies the first read found beside the batch's (`ApplyOptions.pid_span`): pid -> copy;
    # None: too many to keep (`TargetCollection.read_view`).
    others: dict[str, Mapping[str, Any]] | None = field(default_factory=dict)

    def add_confirmation(self, confirmed: ApplyResult) -> None:
        """Count what confirming the entered copies wrote (those it removed, mostly none)."""
        self.outcomes.update({outcome: count for outcome, count in confirmed.outcomes.items()
                              if outcome not in ("unchanged", "outside")})
        self.staging_writes += confirmed.staging_writes
        self.left |= confirmed.left
