"""Property: whatever the order of production's changes, of the applies that carry them, of
freezes, thaws and drain rounds, a frozen environment is never written, and once the last
thaw has ended it holds what production holds, for every document.

The backlog, the environment's record and the drain are the product's own, on a real server
(`state.environment_backlog`, `state.environments`, `tasks.apply.targets.FrozenTarget`,
`tasks.environment_thaw.drain_chunk`); production, the environment's copies and the applies
in flight are a model. An apply in flight carries the state its worker saw when it began; the
commands wait for the applies that saw the old state to end (SETTLE_SECONDS, modelled as:
those land before the command returns), which is the assumption the product's freeze and
thaw rest on. (The product narrows the window further: an apply asks the state again just
before it writes.)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from stagesync.deployments.broker import ChangeSignal
from stagesync.protocol.names import ENVIRONMENTS_CHANGED_KEY
from stagesync.state.dead_letters import DeadLetterStore
from stagesync.state.environment_backlog import EnvironmentBacklog
from stagesync.state.environments import FROZEN, LIVE, EnvironmentStore
from stagesync.tasks.apply.targets import FrozenTarget
from stagesync.tasks.environment_thaw import drain_chunk

COLLECTION = "orders"
PIDS = [f"p{n}" for n in range(8)]

changes = st.tuples(st.just("change"), st.sampled_from(PIDS))
lands = st.tuples(st.just("land"), st.integers(0, 7))
steps = st.lists(st.one_of(
    # Production moves and applies land more often than commands come.
    changes, changes, changes, changes, changes, lands, lands,
    st.tuples(st.just("freeze"), st.none()),
    st.tuples(st.just("thaw"), st.none()),
    st.tuples(st.just("drain"), st.integers(1, 3)),  # a round of up to this many documents
), min_size=20, max_size=80)


@dataclass
class Model:
    store: EnvironmentStore
    backlog: EnvironmentBacklog
    state_db: Any
    name: str
    limit: int
    production: dict[str, int] = field(default_factory=dict)
    copies: dict[str, int] = field(default_factory=dict)
    in_flight: list[tuple[str, str]] = field(default_factory=list)  # (pid, state seen)
    clock: int = 0

    def state(self) -> str:
        return self.store.require(self.name).state

    def change(self, pid: str) -> None:
        self.clock += 1
        self.production[pid] = self.clock
        self.in_flight.append((pid, self.state()))

    def land(self, index: int) -> None:
        """An apply ends, as its worker saw the environment: it writes a live one (reading
        production now) and remembers the document for a frozen one."""
        if not self.in_flight:
            return
        pid, seen = self.in_flight.pop(index % len(self.in_flight))
        if seen == FROZEN:
            environment = self.store.require(self.name)
            FrozenTarget(COLLECTION, self.name, environment.overflowed, self.backlog,
                         self.store, self.limit, self.state_db,
                         DeadLetterStore(self.state_db)).remember({pid: "update"})
        else:
            self.copies[pid] = self.production[pid]

    def settle(self, before: str) -> None:
        """A command waits for the applies that saw the state before it."""
        for index in reversed(range(len(self.in_flight))):
            if self.in_flight[index][1] == before:
                self.land(index)

    def freeze(self) -> None:
        if self.state() == LIVE and self.store.require(self.name).thaw is None:
            assert self.store.freeze(self.name, None, self.backlog.count(self.name))
            self.settle(LIVE)

    def thaw(self) -> None:
        environment = self.store.require(self.name)
        if environment.state != FROZEN:
            return
        mode = "resync" if environment.overflowed else "drain"
        if mode == "resync":
            self.backlog.clear(self.name)
        assert self.store.begin_thaw(self.name, mode)
        self.settle(FROZEN)
        if mode == "resync":  # the copy: every document as production holds it now
            self.copies = dict(self.production)
            assert self.store.finish_thaw(self.name)

    def drain(self, size: int) -> None:
        environment = self.store.require(self.name)
        if environment.thaw_mode != "drain":
            return

        def apply(ops: dict[str, str]) -> None:
            for pid in ops:
                self.copies[pid] = self.production[pid]

        drain_chunk(self.store, self.backlog, self.name, COLLECTION, [COLLECTION], apply,
                    size=size)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(steps=steps, limit=st.sampled_from([2, 5, 100]))
# Past the bound: the thaw must copy again. Many documents: the drain takes several rounds.
@example(steps=[("freeze", None), *(("change", pid) for pid in PIDS)], limit=2)
@example(steps=[("freeze", None), *(("change", pid) for pid in PIDS), ("thaw", None),
                ("change", "p1"), ("drain", 2), ("change", "p2"), ("land", 0)], limit=100)
def test_a_thawed_environment_misses_no_document(clients: Any, redis_url: str,
                                                 steps: list[Any], limit: int) -> None:
    _, staging, _ = clients
    state_db = staging["stagesync_freeze_property"]
    signal = ChangeSignal(redis.Redis.from_url(redis_url), ENVIRONMENTS_CHANGED_KEY)
    store, backlog = EnvironmentStore(state_db, signal), EnvironmentBacklog(state_db)
    name = f"e{uuid.uuid4().hex[:10]}"
    store.create(name, {}, ttl=None, sample=None, limit=1_000_000)
    assert store.transition(name, ["creating"], LIVE)
    model = Model(store, backlog, state_db, name, limit)
    try:
        for action, argument in steps:
            frozen_copies = dict(model.copies) if model.state() == FROZEN else None
            if action == "change":
                model.change(argument)
            elif action == "land":
                model.land(argument)
            elif action == "freeze":
                model.freeze()
            elif action == "thaw":
                model.thaw()
            else:
                model.drain(argument)
            if frozen_copies is not None and model.state() == FROZEN:
                assert model.copies == frozen_copies, "a frozen environment was written"
        # The end: every apply lands, the environment thaws and drains to the end.
        while model.in_flight:
            model.land(0)
        model.thaw()
        while store.require(name).thaw is not None:
            model.drain(3)
        assert model.copies == model.production
        assert backlog.count(name) == 0
    finally:
        backlog.clear(name)
        state_db["environments"].delete_one({"_id": name})
