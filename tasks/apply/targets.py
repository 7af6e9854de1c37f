"""The target fan-out: one production read per batch, planned and written per target.

DESIGN calls an environment a *target*: where a collection's copies live. The main staging is
the first target; each environment that the stream writes into (`state.environments`,
STREAMED) is one more, with an ApplyContext of its own:

- its own `TargetCollection` (the environment's database from `environments.database`, the
  same collection name) and its own reference resolver, whose lookups and pending records stay
  inside the environment (`orders@pr-1` waits for `users@pr-1`);
- its own sample: the collection's settings with `subset: {percent: P}` for `--sample P` when
  the collection has no `follow` subset (the same keyed hash, `rules.subset.in_sample`, so the
  sample is stable across creates, resyncs and workers; P combines with a configured percent by
  taking the smaller); `follow` subsets are decided by the same rules against the environment's
  own copies, so every reference of a sampled environment resolves inside it;
- its own dead letters and pending references, under the scoped name `orders@pr-1`
  (`dlq list --collection orders@pr-1`; `dlq replay` of such entries applies them to that
  environment only). Scoping by the collection key, rather than a new field, keeps every
  query of those stores as it is, and the main staging's entries exactly as they were.

What a batch shares across targets, and why: the version (taken once, before the one
production read: every target's writes come from that read, so the version orders them in
each target exactly as in the main staging), the production read itself, and the masking
(PII rules belong to the collection). Production's read load per change therefore does not
grow with the number of environments: the read takes every document that any target's
sample wants, masks each once, and each target plans from that same dict (the planner is
pure and never changes its inputs). Only rare follow-ups read production per target (a
business key held by another document, a key conflict woken), as they do for the main
staging.

Frozen environments are targets too (`FrozenTarget`): the batch's documents are remembered for
their thaw (`state.environment_backlog`), per production `_id`, and never written. Which
environments are written, remembered or skipped is asked again just before they are applied
(the workers' cache, which asks Redis whether the store changed), not only when the batch
began: an apply can take long, and a freeze must hold once its SETTLE_SECONDS have passed.
An environment frozen since the batch began is remembered, not written; one thawed since is
written from a read of its own (the batch's read kept only the documents of the targets
written then); one created since is written from the batch's read, which holds every document
it wants (an environment's sample lies within the main staging's: the same keyed hash, the
smaller percent), so that its copy need only start after the environment was announced to
every worker's next check (`state.environments`), not wait for the applies under way to end.

Containment: the main staging is applied first, exactly as before (its failures retry, split
and dead-letter as the task decides). The environments are applied after it, each in its own
`try`: an environment that fails records dead letters scoped to it (reason
`environment_error`, or the refused writes as `write_error`; after a passing failure their
replay starts at once and retries until the environment takes them) and never fails the batch
(unless even its dead letters cannot be recorded: then the message is retried whole); the
task reports the batch done before it applies the environments, so a slow environment never
holds back the watcher's checkpoint. A worker that dies between the report and the
environments' writes leaves the message unacknowledged (acks_late): it is delivered again and
applied again, harmlessly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from celery.exceptions import SoftTimeLimitExceeded
from pymongo.database import Database
from stagesync.deployments.failures import describe_error, is_transient
from stagesync.protocol.names import scoped_name
from stagesync.rules.document import Document
from stagesync.state.dead_letters import DeadLetterEntry, DeadLetterStore
from stagesync.state.environment_backlog import EnvironmentBacklog
from stagesync.state.environments import EnvironmentStore
from stagesync.state.versions import take_version
from stagesync.tasks.apply.applier import (
    ApplyOptions,
    apply_changes_read,
    apply_documents,
    confirm_entered,
)
from stagesync.tasks.apply.context import ApplyContext, ApplyResult, WriteErrors

log = logging.getLogger("stagesync.apply")

# The environments' applies leave confirming their entered copies to the batch (`_confirm`).
CONFIRMED_HERE = ApplyOptions(confirm_entered=False)


@dataclass(frozen=True)
class BrokenTarget:
    """An environment whose apply context could not be built (its deployment refused by the
    same-deployment guard, or unreachable): its changes are contained like a failed apply."""

    name: str  # the collection
    environment: str
    state_db: Database[Document]
    dead_letters: DeadLetterStore
    error: Exception

    @property
    def scope(self) -> str:
        return scoped_name(self.name, self.environment)


@dataclass(frozen=True)
class FrozenTarget:
    """An environment that holds still: what the stream would write is remembered instead."""

    name: str  # the collection
    environment: str
    overflowed: bool  # past `environments.freeze_backlog`: its thaw resyncs, nothing to keep
    backlog: EnvironmentBacklog
    store: EnvironmentStore
    limit: int
    state_db: Database[Document]
    dead_letters: DeadLetterStore

    @property
    def scope(self) -> str:
        return scoped_name(self.name, self.environment)

    def remember(self, ops: Mapping[str, str]) -> None:
        if not self.overflowed:
            added = self.backlog.remember(self.environment, self.name, ops)
            self.store.count_backlog(self.environment, added, self.limit)


EnvironmentTarget = ApplyContext | BrokenTarget | FrozenTarget


def environment_of(target: EnvironmentTarget) -> str:
    return (target.environment or "") if isinstance(target, ApplyContext) else \
        target.environment


@dataclass
class TargetBatch:
    """One batch of one collection, applied to the main staging and then to every
    environment, from one version and one production read."""

    main: ApplyContext
    environments: Sequence[EnvironmentTarget]
    ops: Mapping[str, str]
    # The environments' targets as the process sees them now (asked again before they are
    # applied); None: those the batch began with.
    refresh: Callable[[], Sequence[EnvironmentTarget]] | None = None
    # Starts the replay of an environment's dead letters (scope, pids) after a passing
    # failure; None: they wait for `stagesync dlq replay`.
    replay: Callable[[str, list[str]], None] | None = None
    version: int | None = None
    production: dict[str, Document | None] = field(default_factory=dict)
    applied: bool = False  # environments done (at most once per batch)

    def apply_main(self) -> ApplyResult:
        """Version, the one production read, and the main staging's apply. Raises as the
        main apply does; the version and the documents read stay for the environments."""
        self.version = take_version(self.main.state_db, self.main.name)
        targets = (self.main, *(target for target in self.environments
                                if isinstance(target, ApplyContext)))
        self.production = self.main.read_production(
            self.ops, keep=lambda pid: any(target.sampled(pid) for target in targets))
        return apply_changes_read(self.main, self.version, self.production, self.ops)

    def apply_environments(self) -> dict[str, ApplyResult | None]:
        """Each environment written in turn; None for one that failed (its changes
        dead-lettered in its scope). Frozen ones remember the batch and are not in the
        result. Raises only EnvironmentsUnrecorded."""
        if self.applied or self.version is None:
            return {}
        self.applied = True
        began = {environment_of(target): target for target in self.environments}
        done: dict[str, ApplyResult | None] = {}
        entered: dict[str, tuple[ApplyContext, set[str]]] = {}
        for target in self.refresh() if self.refresh is not None else self.environments:
            before = began.get(environment_of(target))
            if isinstance(target, FrozenTarget):
                _remember(target, self.ops)
                continue
            try:
                if isinstance(target, BrokenTarget):
                    done[target.scope] = None
                    _contain(target, self.ops, target.error, self.replay)
                    continue
                if before is None or isinstance(before, ApplyContext):  # created since, or not
                    version, production = self.version, dict(self.production)
                else:  # thawed since the batch began: read for it, after a version of its own
                    version = take_version(target.state_db, target.name)
                    production = target.read_production(self.ops)
                result = apply_documents(target, version, production, self.ops, CONFIRMED_HERE)
                done[target.scope] = result
                if target.confirms_entered and result.entered:
                    entered[target.scope] = (target, result.entered)
            except Exception as error:  # contained: see the module docstring
                done[target.scope] = None
                _contain(target, self.ops, error, self.replay)
        self._confirm(entered, done)
        return done

    def _confirm(self, entered: Mapping[str, tuple[ApplyContext, set[str]]],
                 done: dict[str, ApplyResult | None]) -> None:
        """Confirm the copies the environments' applies made live (`confirm_entered`), from
        one production read for all of them, as the batch was applied."""
        if not entered:
            return
        targets = [target for target, _ in entered.values()]
        try:
            production = self.main.read_production(
                set().union(*(pids for _, pids in entered.values())),
                keep=lambda pid: any(target.sampled(pid) for target in targets))
        except Exception as error:  # contained: the replay of these changes confirms them
            for scope, (target, pids) in entered.items():
                done[scope] = None
                _contain(target, dict.fromkeys(pids, "related"), error, self.replay)
            return
        for scope, (target, pids) in entered.items():
            try:
                confirmed = confirm_entered(target, pids, production)
            except Exception as error:  # contained, as the apply itself
                done[scope] = None
                _contain(target, dict.fromkeys(pids, "related"), error, self.replay)
                continue
            result = done.get(scope)
            if result is not None and confirmed is not None:
                result.add_confirmation(confirmed)


class EnvironmentsUnrecorded(RuntimeError):
    """An environment's failed changes could not even be recorded (the state database is
    unreachable too), or a frozen one's could not be remembered: the task must retry the
    whole message rather than lose them."""


def _remember(target: FrozenTarget, ops: Mapping[str, str]) -> None:
    """A frozen environment's failure is never a dead letter: its replay would write into it."""
    try:
        target.remember(ops)
    except Exception as error:
        raise EnvironmentsUnrecorded(
            f"{target.scope}: frozen, not remembered: {describe_error(error)}") from error


def _contain(target: ApplyContext | BrokenTarget, ops: Mapping[str, str], error: Exception,
             replay: Callable[[str, list[str]], None] | None) -> None:
    """Record the changes as the environment's dead letters; after a passing failure (its
    server unreachable, a step-down, the task out of time) also start their replay, which
    retries until the environment takes them: an outage must not leave it behind for good."""
    refused = error.errors if isinstance(error, WriteErrors) else {}
    log.warning("environment apply failed", exc_info=not refused,
                extra={"collection": target.scope, "changes": len(ops),
                       "error": describe_error(error)})
    pids = list(refused or ops)
    try:
        version = take_version(target.state_db, target.name)
        target.dead_letters.record(
            DeadLetterEntry(
                collection=target.scope, pid=pid, op=ops.get(pid, "related"),
                reason="write_error" if refused else "environment_error",
                error=refused.get(pid, describe_error(error)) if refused else
                describe_error(error), version=version,
            )
            for pid in pids
        )
        if replay is not None and not refused and (
                is_transient(error) or isinstance(error, SoftTimeLimitExceeded)):
            replay(target.scope, pids)  # out of time passes too: a replay has time of its own
    except Exception as unrecorded:
        raise EnvironmentsUnrecorded(
            f"{target.scope}: {describe_error(error)}; not recorded: "
            f"{describe_error(unrecorded)}") from unrecorded
