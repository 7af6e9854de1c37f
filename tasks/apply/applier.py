"""One apply: version, production read, staging read, plan, one bulk write, re-plan the losers.

Shared by stream batches, resync chunks, dead-letter replays and the dry run, so every path
that writes staging takes its version the same way, masks PII the same way and merges by the
same rules.

Rounds: a change can lose a race (another apply wrote the document between our read and our
write), or wait on a business key that another document of this batch frees first. Such
changes are re-planned against a fresh staging read, with the same version (our production
read still happened after the version was taken). A handful of rounds settles every realistic
batch; what remains after that is contention, raised as a transient error so the task retries
with a new version.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import chain
from typing import Any

from stagesync.protocol.names import DUPLICATE_KEY
from stagesync.rules.document import Document
from stagesync.rules.identity import encode_id
from stagesync.rules.plan import plan_batch
from stagesync.rules.plan_types import UNSYNCED, BatchPlan, DeadLetter, PlannedWrite, StagingView
from stagesync.rules.sync_meta import dead_letter_mark
from stagesync.state.dead_letters import DeadLetterEntry
from stagesync.state.versions import dead_letters_possible, peek_version, take_version
from stagesync.tasks.apply.context import (
    ApplyContext,
    ApplyResult,
    ContentionError,
    PlanOnly,
    WriteErrors,
)

MAX_ROUNDS = 6


@dataclass(frozen=True)
class ApplyOptions:
    """How an apply treats what it finds.

    `compare_content` reads the staging documents in full and compares their content itself
    instead of trusting `_sync.fp` (a resync repairs drift made by hand). `staging_known_empty`
    skips the first staging read when the caller has proven that no staging document of these
    pids or keys can exist: the inserts are still safe, since the unique indexes on `_sync.pid`
    and `_sync.key` turn a racing write into a lost race that is re-planned after a real read.
    `write_unchanged=False` leaves copies that already hold production's content untouched
    (see `plan_batch`). `plan_only` collects the writes instead of making them.
    `followers_later`: the collections that follow this one (`subset: {follow}`) are copied
    after it (an environment's fill), against its complete copy: copies entering or leaving
    now need not have their followers applied again (a read of production per batch).
    `confirm_entered=False`: the caller confirms the copies this apply makes live itself
    (`confirm_entered`; the fan-out does it once for every environment of a batch).
    `pid_span`: the pids are the production documents of this span of `_sync.pid` (a
    resync's batch): the first read of their copies is one range query, and the copies it finds
    beside them are the result's `others` (`TargetCollection.read_view`).
    """

    compare_content: bool = False
    staging_known_empty: bool = False
    write_unchanged: bool = True
    plan_only: PlanOnly | None = None
    followers_later: bool = False
    confirm_entered: bool = True
    pid_span: Mapping[str, str] | None = None


@dataclass
class ApplyRound:
    """One apply's state across its planning rounds."""

    version: int
    ops: Mapping[str, str]
    production: dict[str, Document | None]  # masked, as read
    content: dict[str, Document | None]  # what is written: references translated
    keys: dict[str, str | None]  # business keys, from production's own values
    result: ApplyResult
    pending: set[str]
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    done: set[str] = field(default_factory=set)
    dead: dict[str, DeadLetter] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # pid -> why staging refused
    woken: set[str] = field(default_factory=set)  # conflicts this batch's releases woke
    lost: set[str] = field(default_factory=set)  # writes that lost a race this round
    whole: set[str] = field(default_factory=set)  # staging `_id`s to read in full
    taken: set[str] = field(default_factory=set)  # production `_id`s held in staging by others
    retried: set[str] = field(default_factory=set)  # inserts given one more round
    # Present in production, outside the target's subset, and written nowhere without a copy
    # (`plan_batch`).
    outside: frozenset[str] = frozenset()
    # This round's view: the dead-letter marks read (encoded staging `_id` -> `_sync.dl`) and
    # each pending pid's own copy (its `_id`), found by `_sync.pid`.
    marks: dict[str, int] = field(default_factory=dict)
    own: dict[str, Any] = field(default_factory=dict)
    # Pids whose write landed on their own copy with the filter "no dead-letter mark".
    unmarked: set[str] = field(default_factory=set)


def apply_changes(context: ApplyContext, ops: Mapping[str, str],
                  plan_only: PlanOnly | None = None) -> ApplyResult:
    """Apply the changes of these production `_id`s (pid -> operation seen in the stream).

    With `plan_only`, no version is taken (the next one is assumed) and nothing is written."""
    version = _version(context, plan_only)
    production = context.read_production(ops, record=plan_only is None)
    return apply_changes_read(context, version, production, ops, plan_only)


def apply_changes_read(context: ApplyContext, version: int,
                       production: dict[str, Document | None], ops: Mapping[str, str],
                       plan_only: PlanOnly | None = None) -> ApplyResult:
    """`apply_changes` from a production read already made after `version` was taken (the
    target fan-out reads once for every target: `tasks.apply.targets`)."""
    options = ApplyOptions(plan_only=plan_only)
    result = apply_documents(context, version, dict(production), ops, options)
    freed = _conflicts_already_freed(context, result)
    if freed:
        # The holder let the key go after we read it but before our dead letter was recorded,
        # so its apply could not see the entry to wake it: try these once more ourselves.
        retry = apply_documents(
            context, _version(context, plan_only),
            context.read_production(freed, record=plan_only is None),
            {pid: ops.get(pid, "related") for pid in freed}, options,
        )
        result.outcomes["dead_lettered"] -= len(freed)
        result.outcomes.update(retry.outcomes)
        result.dead_letters = [
            letter for letter in result.dead_letters if letter.pid not in freed
        ] + retry.dead_letters
    return result


def _version(context: ApplyContext, plan_only: PlanOnly | None) -> int:
    if plan_only is not None:
        return peek_version(context.state_db, context.name)
    return take_version(context.state_db, context.name)


def apply_documents(
    context: ApplyContext,
    version: int,
    production: dict[str, Document | None],
    ops: Mapping[str, str],
    options: ApplyOptions | None = None,
) -> ApplyResult:
    """Write what production holds for these pids; `production` was read after `version`."""
    options = options or ApplyOptions()
    present = [pid for pid, doc in production.items() if doc is not None]
    unsampled = frozenset(pid for pid in production if not context.sampled(pid))
    # Callers that read production themselves (resync chunks) get the sample applied here.
    production = {pid: None if pid in unsampled else doc for pid, doc in production.items()}
    state = ApplyRound(
        version=version, ops=ops, production=production,
        content=_translated(context, production, options.plan_only),
        keys={pid: context.rules.key_of(doc) for pid, doc in production.items() if doc},
        result=ApplyResult(version), pending=set(production),
    )
    state.outside = _outside(context, unsampled, present, state.content)
    for round_number in range(MAX_ROUNDS):
        state.result.rounds += 1
        if _one_round(context, state, options, first=round_number == 0):
            break
    else:
        _give_up(context, state)
    _settle_dead_letters(context, state, options.plan_only)
    if options.plan_only is not None:
        options.plan_only.content.update(state.content)
    elif context.references is not None:
        result = state.result
        context.references.copies_written(
            result.staging_ids, set() if options.followers_later else result.entered | result.left)
    if (options.plan_only is None and options.confirm_entered
            and context.confirms_entered and state.result.entered):
        confirmed = confirm_entered(context, state.result.entered)
        if confirmed is not None:
            state.result.add_confirmation(confirmed)
    if state.refused:
        raise WriteErrors(state.refused)
    return state.result


def _outside(context: ApplyContext, unsampled: frozenset[str], present: Iterable[str],
             content: Mapping[str, Document | None]) -> frozenset[str]:
    """The pids that this target's subset leaves out and that need no tombstone
    (`plan_batch`): outside the keyed-hash sample (`unsampled`), present or not (no apply
    ever writes those), and, where the creator of a copy confirms it
    (`ApplyContext.confirms_entered`), those production holds outside the followed subset,
    unless an environment's copy is running: its chunks do not confirm what they create
    (`ApplyOptions.confirm_entered`)."""
    if not context.confirms_entered or context.filling:
        return unsampled
    return unsampled | {pid for pid in present if content.get(pid) is None}


def confirm_entered(context: ApplyContext, pids: Iterable[str],
                    production: Mapping[str, Document | None] | None = None
                    ) -> ApplyResult | None:
    """Check, from a read made after our writes, that the documents whose copy this apply
    just made live are still members of the target's subset; apply again, from a newer
    version, those that are not (their copies are then removed as any member that leaves).
    None when all still are: the common case, one production read and one lookup of the
    followed copies.

    Why this closes the race a tombstone closed (`plan_batch`'s `outside`): an apply that
    left a document out read production and the followed copies before it read staging, and
    found no copy there, so our write landed after its reads; our reads come after our write,
    hence after its reads, and see at least as new a production and followed copies.
    `production`: read by the caller after the writes (the fan-out, once for every
    environment of a batch)."""
    references = context.references
    assert references is not None  # only targets that follow a subset confirm
    pids = sorted(pids)
    if production is None:
        production = context.read_production(pids)
    members = references.translate_known({pid: production.get(pid) for pid in pids})
    left = [pid for pid in pids if members.get(pid) is None]
    if not left:
        return None
    version = take_version(context.state_db, context.name)
    return apply_documents(context, version, context.read_production(left),
                           dict.fromkeys(left, "related"), ApplyOptions(write_unchanged=False))


def _one_round(context: ApplyContext, state: ApplyRound, options: ApplyOptions,
               first: bool) -> bool:
    """Plan and write one round; True once nothing is left pending."""
    if options.staging_known_empty and first:
        view = StagingView(by_pid={}, by_key={})
    else:
        view = context.target.read_view(
            sorted(state.pending), _to_write(state),
            True if options.compare_content else state.whole,
            # Later rounds re-read a few lost races: a list, not the whole span again.
            pid_span=options.pid_span if first else None,
        )
        if first:
            state.result.others = None if view.others is None else dict(view.others)
    state.marks = _marks_of(view)
    state.own = {pid: copy["_id"] for pid in state.pending
                 if (copy := view.by_pid.get(pid)) is not None}
    plan = plan_batch(
        version=state.version, now=state.now, pids=state.pending, production=state.content,
        staging=replace(view, taken_ids=frozenset(state.taken)), rules=context.rules,
        keys=state.keys, write_unchanged=options.write_unchanged, outside=state.outside,
    )
    state.whole |= plan.need_content
    if plan.need_production:
        # A live document holds a key we want: decide on its production document's current
        # state, and apply that document's change in the same batch.
        _read_more(context, state, plan.need_production, options.plan_only)
        state.pending |= plan.need_production
        return False
    sink = options.plan_only or context.target
    if plan.releases:
        sink.execute(plan.releases, state.marks)
        state.result.staging_writes += len(plan.releases)
    state.lost = _execute(context, state, plan.writes, options.plan_only)
    _note_settled(state, plan)
    state.pending = set(plan.deferred) | state.lost
    if options.plan_only is not None and state.pending and (plan.writes or plan.releases):
        # The next round would re-read staging as these writes left it, which a plan that
        # writes nothing cannot show: name the changes that would be planned again.
        options.plan_only.replanned |= state.pending
        state.pending = set()
        return True
    waiting = _waiting_on(context, plan.released_keys) - state.woken - state.pending
    if waiting:
        state.woken |= waiting
        _read_more(context, state, waiting, options.plan_only)
        state.pending |= waiting
    return not state.pending


def _to_write(state: ApplyRound) -> dict[str, Document]:
    """The production documents this target may write: the ones whose business key the view
    must look up. A pid outside the target's subset (content None: in a sampled environment,
    nearly every change) is planned from its own copy alone; looking its key up (by `_sync.key`,
    then by the raw key fields for never-synced documents) cost an environment's apply up to
    two more staging queries per list of pids, for nothing."""
    return {pid: document for pid, document in state.production.items()
            if document is not None and state.content.get(pid) is not None}


def _marks_of(view: StagingView) -> dict[str, int]:
    """The dead-letter marks of the copies read, by encoded staging `_id` (mostly none)."""
    marks: dict[str, int] = {}
    for document in chain(view.by_pid.values(), view.by_key.values()):
        mark = dead_letter_mark(document)
        if mark is not None:
            marks[encode_id(document["_id"])] = mark
    return marks


def _note_settled(state: ApplyRound, plan: BatchPlan) -> None:
    """Count what the plan settled without a write: superseded, unchanged, dead letters."""
    state.result.outcomes["superseded"] += len(plan.superseded)
    state.done.update(plan.superseded)
    state.result.outcomes["unchanged"] += len(plan.unchanged)
    state.done.update(plan.unchanged)
    state.result.outcomes["outside"] += len(plan.outside)
    state.done.update(plan.outside)
    state.result.staging_ids.update(plan.unchanged)  # for the references waiting on them
    for letter in plan.dead_letters:
        state.dead[letter.pid] = letter


def _give_up(context: ApplyContext, state: ApplyRound) -> None:
    """Rounds ran out: lost races are contention (retry later); keys still held are
    conflicts (dead letters)."""
    if state.lost:
        raise ContentionError(
            f"{len(state.lost)} change(s) of {context.name} kept losing write races"
        )
    for pid in state.pending:
        document = state.production.get(pid)
        key = context.rules.key_of(document) if document else None
        state.dead[pid] = DeadLetter(
            pid, "key_conflict", "business key still held by another document", key
        )


def _translated(context: ApplyContext, documents: Mapping[str, Document | None],
                plan_only: PlanOnly | None) -> dict[str, Document | None]:
    if context.references is None:
        return dict(documents)
    if plan_only is not None:
        return context.references.translate_known(documents)  # records nothing as pending
    return context.references.translate(documents)


def _read_more(context: ApplyContext, state: ApplyRound, pids: Iterable[str],
               plan_only: PlanOnly | None) -> None:
    """Read more production documents into this apply (key holders, woken conflicts)."""
    more = context.read_production(pids, record=plan_only is None)
    state.production.update(more)
    state.content.update(_translated(context, more, plan_only))
    state.keys.update({pid: context.rules.key_of(doc) for pid, doc in more.items() if doc})


def _execute(context: ApplyContext, state: ApplyRound, writes: list[PlannedWrite],
             plan_only: PlanOnly | None) -> set[str]:
    """Run one round's writes; return the pids whose write lost a race."""
    if not writes:
        return set()
    report = (plan_only or context.target).execute(writes, state.marks)
    state.result.staging_writes += len(writes)
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
                state.taken.add(encode_id(write.staging_id))
        elif code == DUPLICATE_KEY and write.is_insert and write.pid not in state.retried:
            # A duplicate on an index of the user's: the server may check it before ours when
            # another apply inserted this very document first. One more round tells: it finds
            # its own copy then, or refuses again for good.
            state.retried.add(write.pid)
            lost.add(write.pid)
        elif _demoted(context, code, message, write, plan_only):
            lost.add(write.pid)  # the index that refused is gone: written again next round
        else:
            state.refused[write.pid] = f"code {code}: {message}"
    failed = {writes[index].pid for index in report.failed}
    unsure = [w.pid for w in writes if w.pid and not w.is_insert and w.pid not in failed]
    stored = context.target.versions_of(unsure) if not report.matched_all and unsure else {}
    for write in writes:
        if write.pid is not None and write.pid not in failed:
            _count_write(state, write, stored, unsure if not report.matched_all else (), lost)
    return lost


def _demoted(context: ApplyContext, code: int, message: str, write: PlannedWrite,
             plan_only: PlanOnly | None) -> bool:
    """Whether a mirrored index refused the write and the safety net demoted it
    (`tasks.apply.index_guard`: a mirrored index never refuses a write the sync makes)."""
    guard = context.index_guard
    return plan_only is None and guard is not None and \
        guard.demote_refusing(code, message, write) is not None


def _count_write(state: ApplyRound, write: PlannedWrite, stored: Mapping[str, int | None],
                 unsure: Iterable[str], lost: set[str]) -> None:
    """Settle one write the server accepted: landed, superseded, or lost after all (an update
    that matched nothing because another apply moved the version on)."""
    pid = write.pid
    assert pid is not None
    if pid in stored or pid in unsure:
        current = stored.get(pid)
        if current is None or current < state.version:
            lost.add(pid)
            return
        if current > state.version:
            state.result.outcomes["superseded"] += 1
            state.done.add(pid)
            return
    result = state.result
    result.outcomes[write.outcome] += 1
    state.done.add(pid)
    if (not write.is_insert and write.expect is not UNSYNCED
            and write.staging_id is state.own.get(pid)
            and not (state.marks and encode_id(write.staging_id) in state.marks)):
        state.unmarked.add(pid)
    if write.outcome in ("created", "updated", "unchanged"):
        result.staging_ids[pid] = write.staging_id
    if write.enters:
        result.entered.add(pid)
    elif write.outcome == "soft_deleted":
        result.left.add(pid)


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
    return set(context.dead_letters.waiting_on_keys(context.scope, released_keys))


def _settle_dead_letters(context: ApplyContext, state: ApplyRound,
                         plan_only: PlanOnly | None) -> None:
    """Record this apply's dead letters and drop older entries it has made obsolete."""
    result = state.result
    result.dead_letters = list(state.dead.values())
    result.outcomes["dead_lettered"] += len(state.dead)
    if plan_only is not None:
        plan_only.dead_letters.extend(result.dead_letters)
        return
    context.dead_letters.record(
        DeadLetterEntry(
            collection=context.scope, pid=letter.pid, op=state.ops.get(letter.pid, "related"),
            reason=letter.reason, error=letter.detail, key=letter.key, version=state.version,
        )
        for letter in state.dead.values()
    )
    resolved = state.done - set(state.dead)
    if not dead_letters_possible(context.state_db, context.name, state.version):
        # The common path skips the clear. When this apply took its version, no entry of the
        # collection was open (`state.dead_letters`: the signal), so any entry of these pids
        # is recorded after that, in this order: signal, entry, then (when a version as new
        # as ours was already handed out) mark the copy, then read the copy's `_sync.v`. Our
        # write of a pid in `unmarked` required its own copy to be unmarked. If the mark came
        # first, that write lost its race and was planned again, seeing the mark, so the pid
        # is not in `unmarked` and is cleared below; if our write came first, the recorder's
        # read after its mark finds our version and resolves its entry itself. Either way no
        # entry of a document we landed outlives our write. A pid whose copy was not found by
        # `_sync.pid` (created, adopted), was marked, or settled without a write is cleared.
        resolved -= state.unmarked
    if resolved:
        _clear(context, state.version, resolved)


def _clear(context: ApplyContext, version: int, pids: set[str]) -> None:
    """Resolve the entries of these pids older than `version`; mark again the copies of the
    open ones that are newer (a dead letter from a later read than ours): our write dropped
    their mark, or created a copy that their marker could not find."""
    entries = context.dead_letters.versions(context.scope, pids)
    older = [pid for pid, (entry_version, _) in entries.items() if entry_version < version]
    if older:
        context.dead_letters.clear(context.scope, older, older_than=version)
    newer = {pid: entry_version for pid, (entry_version, is_open) in entries.items()
             if is_open and entry_version >= version}
    if newer:
        context.mark_dead_letters(newer)
