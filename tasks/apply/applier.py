"""One apply: version, production read, staging read, plan, one bulk write, re-plan the losers.

Shared by stream batches, resync chunks and dead-letter replays, so every path that writes
staging takes its version the same way, masks PII the same way and merges by the same rules.

Rounds: a change can lose a race (another apply wrote the document between our read and our
write), or wait on a business key that another document of this batch frees first. Such
changes are re-planned against a fresh staging read, with the same version (our production
read still happened after the version was taken). A handful of rounds settles every realistic
batch; what remains after that is contention, raised as a transient error so the task retries
with a new version.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database

from deployments.failures import TransientError
from deployments.production import ReadOnlyCollection, read_documents
from protocol.names import DUPLICATE_KEY
from rules.document import Document
from rules.identity import decode_id, encode_id
from rules.pii import Masker
from rules.plan import CollectionRules, DeadLetter, PlannedWrite, StagingView, plan_batch
from rules.subset import in_sample
from settings.model import CollectionSettings
from state.dead_letters import DeadLetterEntry, DeadLetterStore
from state.unclassified_paths import held_count, record_unclassified
from state.versions import take_version
from tasks.apply.references import ReferenceResolver
from tasks.apply.staging_io import TargetCollection
from tasks.metrics import UNCLASSIFIED_PATHS

MAX_ROUNDS = 6



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

    @classmethod
    def build(
        cls,
        settings: CollectionSettings,
        masker: Masker,
        production: ReadOnlyCollection,
        staging: MongoClient[Document],
        state_db: Database[Document],
        dead_letters: DeadLetterStore,
        references: ReferenceResolver | None = None,
        secret: bytes = b"",
    ) -> ApplyContext:
        rules = CollectionRules.from_settings(settings)
        return cls(settings, rules, masker, production,
                   TargetCollection(staging, settings, rules), state_db, dead_letters,
                   references, secret)

    @property
    def name(self) -> str:
        return self.settings.name

    def sampled(self, pid: str) -> bool:
        """In the `subset: {percent}` sample (always, without one)."""
        subset = self.settings.subset
        return subset is None or subset.percent is None or in_sample(
            pid, subset.percent, self.secret)

    def read_production(self, pids: Iterable[str]) -> dict[str, Document | None]:
        """Current production documents, masked the moment they are read; None when gone."""
        wanted = list(dict.fromkeys(pids))
        found: dict[str, Document | None] = dict.fromkeys(wanted)
        documents = read_documents(
            self.production, [decode_id(pid) for pid in wanted], self.settings.filter
        )
        for document in documents:
            pid = encode_id(document["_id"])
            if not self.sampled(pid):
                continue  # outside the sample: for staging, as if production had none
            if pid in found:
                found[pid] = self.masker.mask(document)
        self.record_unclassified()
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


def apply_changes(context: ApplyContext, ops: Mapping[str, str]) -> ApplyResult:
    """Apply the changes of these production `_id`s (pid -> operation seen in the stream)."""
    version = take_version(context.state_db, context.name)
    production = context.read_production(ops)
    result = apply_documents(context, version, production, ops)
    freed = _conflicts_already_freed(context, result)
    if freed:
        # The holder let the key go after we read it but before our dead letter was recorded,
        # so its apply could not see the entry to wake it: try these once more ourselves.
        retry = apply_documents(
            context, take_version(context.state_db, context.name),
            context.read_production(freed), {pid: ops.get(pid, "related") for pid in freed},
        )
        result.outcomes["dead_lettered"] -= len(freed)
        result.outcomes.update(retry.outcomes)
        result.dead_letters = [
            letter for letter in result.dead_letters if letter.pid not in freed
        ] + retry.dead_letters
    return result


def apply_documents(
    context: ApplyContext,
    version: int,
    production: dict[str, Document | None],
    ops: Mapping[str, str],
    *,
    compare_content: bool = False,
    staging_known_empty: bool = False,
    write_unchanged: bool = True,
) -> ApplyResult:
    """Write what production holds for these pids; `production` was read after `version`.

    `compare_content` reads the staging documents in full and compares their content itself
    instead of trusting `_sync.fp` (a resync repairs drift made by hand). `staging_known_empty`
    skips the first staging read when the caller has proven that no staging document of these
    pids or keys can exist: the inserts are still safe, since the unique indexes on `_sync.pid`
    and `_sync.key` turn a racing write into a lost race that is re-planned after a real read.
    `write_unchanged=False` leaves copies that already hold production's content untouched
    (see `plan_batch`).
    """
    result = ApplyResult(version)
    now = datetime.now(UTC)
    # Callers that read production themselves (resync chunks) get the sample applied here.
    production = {pid: doc if doc is not None and context.sampled(pid) else None
                  for pid, doc in production.items()}
    pending = set(production)
    done: set[str] = set()
    dead: dict[str, DeadLetter] = {}
    refused: dict[str, str] = {}
    woken: set[str] = set()
    lost: set[str] = set()
    whole: set[str] = set()
    taken: set[str] = set()
    retried: set[str] = set()
    # Keys come from production's values; what is written has its references translated.
    keys = {pid: context.rules.key_of(doc) for pid, doc in production.items() if doc}
    content = _translated(context, production)
    for round_number in range(MAX_ROUNDS):
        result.rounds += 1
        if staging_known_empty and round_number == 0:
            view = StagingView(by_pid={}, by_key={})
        else:
            view = context.target.read_view(
                sorted(pending), production, True if compare_content else whole
            )
        view = replace(view, taken_ids=frozenset(taken))
        plan = plan_batch(
            version=version, now=now, pids=pending, production=content, staging=view,
            rules=context.rules, keys=keys, write_unchanged=write_unchanged,
        )
        whole |= plan.need_content
        if plan.need_production:
            # A live document holds a key we want: decide on its production document's
            # current state, and apply that document's change in the same batch.
            _read_more(context, plan.need_production, production, content, keys)
            pending |= plan.need_production
            continue
        if plan.releases:
            context.target.execute(plan.releases)
            result.staging_writes += len(plan.releases)
        lost = _execute(context, plan.writes, version, result, refused, done, taken, retried)
        result.outcomes["superseded"] += len(plan.superseded)
        done.update(plan.superseded)
        result.outcomes["unchanged"] += len(plan.unchanged)
        done.update(plan.unchanged)
        result.staging_ids.update(plan.unchanged)  # for the references waiting on them
        for letter in plan.dead_letters:
            dead[letter.pid] = letter
        pending = set(plan.deferred) | lost
        waiting = _waiting_on(context, plan.released_keys) - woken - pending
        if waiting:
            woken |= waiting
            _read_more(context, waiting, production, content, keys)
            pending |= waiting
        if not pending:
            break
    else:
        if lost:
            raise ContentionError(
                f"{len(lost)} change(s) of {context.name} kept losing write races"
            )
        for pid in pending:
            document = production.get(pid)
            key = context.rules.key_of(document) if document else None
            dead[pid] = DeadLetter(
                pid, "key_conflict", "business key still held by another document", key
            )
    _settle_dead_letters(context, version, ops, dead, done, result)
    if context.references is not None:
        context.references.copies_written(result.staging_ids, result.entered | result.left)
    if refused:
        raise WriteErrors(refused)
    return result


def _translated(context: ApplyContext, documents: Mapping[str, Document | None]
                ) -> dict[str, Document | None]:
    if context.references is None:
        return dict(documents)
    return context.references.translate(documents)


def _read_more(
    context: ApplyContext,
    pids: Iterable[str],
    production: dict[str, Document | None],
    content: dict[str, Document | None],
    keys: dict[str, str | None],
) -> None:
    """Read more production documents into this apply (key holders, woken conflicts)."""
    more = context.read_production(pids)
    production.update(more)
    content.update(_translated(context, more))
    keys.update({pid: context.rules.key_of(doc) for pid, doc in more.items() if doc})


def _execute(
    context: ApplyContext,
    writes: list[PlannedWrite],
    version: int,
    result: ApplyResult,
    refused: dict[str, str],
    done: set[str],
    taken: set[str],
    retried: set[str],
) -> set[str]:
    """Run one round's writes; return the pids whose write lost a race."""
    if not writes:
        return set()
    report = context.target.execute(writes)
    result.staging_writes += len(writes)
    lost: set[str] = set()
    for index, (code, message) in report.failed.items():
        write = writes[index]
        if write.pid is None:
            continue
        if index in report.raced:
            lost.add(write.pid)  # an insert raced another apply for the same pid or key
            if index in report.id_taken:
                # Or production's `_id` is held by a staging document of another origin:
                # the next round gives the copy a new one unless it finds its own copy.
                taken.add(encode_id(write.staging_id))
        elif code == DUPLICATE_KEY and write.is_insert and write.pid not in retried:
            # A duplicate on an index of the user's: the server may check it before ours when
            # another apply inserted this very document first. One more round tells: it finds
            # its own copy then, or refuses again for good.
            retried.add(write.pid)
            lost.add(write.pid)
        else:
            refused[write.pid] = f"code {code}: {message}"
    failed = {writes[index].pid for index in report.failed}
    unsure = [w.pid for w in writes if w.pid and not w.is_insert and w.pid not in failed]
    stored = context.target.versions_of(unsure) if not report.matched_all and unsure else {}
    for write in writes:
        pid = write.pid
        if pid is None or pid in failed:
            continue
        if pid in stored or (not report.matched_all and pid in unsure):
            current = stored.get(pid)
            if current is None or current < version:
                lost.add(pid)
                continue
            if current > version:
                result.outcomes["superseded"] += 1
                done.add(pid)
                continue
        result.outcomes[write.outcome] += 1
        done.add(pid)
        if write.outcome in ("created", "updated", "unchanged"):
            result.staging_ids[pid] = write.staging_id
        if write.enters:
            result.entered.add(pid)
        elif write.outcome == "soft_deleted":
            result.left.add(pid)
    return lost


def _conflicts_already_freed(context: ApplyContext, result: ApplyResult) -> set[str]:
    """Key-conflict dead letters of this apply whose key no live document holds any more."""
    conflicts = {letter.key: letter.pid for letter in result.dead_letters
                 if letter.reason == "key_conflict" and letter.key}
    if not conflicts:
        return set()
    held = context.target.live_holders(conflicts)
    return {pid for key, pid in conflicts.items() if key not in held}


def _waiting_on(context: ApplyContext, released_keys: set[str]) -> set[str]:
    """Changes dead-lettered on a key conflict that this batch's writes just resolved."""
    if not released_keys:
        return set()
    return set(context.dead_letters.waiting_on_keys(context.name, released_keys))


def _settle_dead_letters(
    context: ApplyContext,
    version: int,
    ops: Mapping[str, str],
    dead: dict[str, DeadLetter],
    done: set[str],
    result: ApplyResult,
) -> None:
    """Record this apply's dead letters and drop older entries it has made obsolete."""
    result.dead_letters = list(dead.values())
    result.outcomes["dead_lettered"] += len(dead)
    context.dead_letters.record(
        DeadLetterEntry(
            collection=context.name, pid=letter.pid, op=ops.get(letter.pid, "related"),
            reason=letter.reason, error=letter.detail, key=letter.key, version=version,
        )
        for letter in dead.values()
    )
    resolved = done - set(dead)
    if resolved:
        context.dead_letters.clear(context.name, resolved, older_than=version)
