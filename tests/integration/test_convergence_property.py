"""Invariant 2, convergence, as a property against the real servers.

Hypothesis writes a random production history over a few production documents and a few
business keys (insert, update, $unset, replace, delete, key change, key removed), and random
applies that take their version, read production and write staging at arbitrary moments of
that history: later than production writes they did not see, duplicated, out of order.
The only rule is the one production gives: every production write is followed by at least
one apply of its document that starts after it (the apply of its change event).

Whatever the interleaving, staging must end in the state production holds: every live
production document with a business key held by no other document has exactly one live
staging document with exactly its fields; gone documents are soft-deleted; a key shared by
several production documents is held by one of them, the others are dead-lettered as
`key_conflict`; a document without key is dead-lettered; no other dead letter remains;
QA fields written to staging along the way are intact.
"""

from __future__ import annotations

import os
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import MongoClient
from stagesync.deployments.production import ProductionReader
from stagesync.deployments.staging_indexes import ensure_indexes
from stagesync.rules.identity import encode_id
from stagesync.rules.merge import production_view
from stagesync.rules.pii import Masker
from stagesync.rules.sync_meta import read_meta
from stagesync.settings.collection import CollectionSettings
from stagesync.state.versions import take_version
from stagesync.tasks.apply.applier import apply_documents
from stagesync.tasks.apply.context import ApplyContext

from tests.support.backends import MongoPair

PIDS = ["p0", "p1", "p2"]
KEYS = [("ann@x.test", 1), ("bob@x.test", 1), ("ann@x.test", 2)]
FIELDS = ["total", "status", "note"]


@dataclass
class Apply:
    pids: list[str]
    version: int | None = None
    production: dict[str, Any] | None = None


@dataclass
class World:
    """One example's databases and the functions under test, wired like a worker's."""

    context: ApplyContext
    prod: Any
    staging: Any
    state: Any
    qa_edits: list[tuple[Any, str, str]] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)  # shown when the property fails


@pytest.fixture(scope="module")
def clients(mongo_pair: MongoPair) -> Iterator[tuple[ProductionReader, MongoClient[Any]]]:
    from stagesync.settings.model import ProductionSettings

    reader = ProductionReader(ProductionSettings(uri=mongo_pair.prod_uri))
    staging: MongoClient[Any] = MongoClient(mongo_pair.staging_uri)
    prod_writer: MongoClient[Any] = MongoClient(mongo_pair.prod_uri)
    yield reader, staging, prod_writer  # type: ignore[misc]
    reader.close()
    staging.close()
    prod_writer.close()


def new_world(clients: Any) -> World:
    reader, staging, prod_writer = clients
    tag = uuid.uuid4().hex[:8]
    collection = CollectionSettings(
        name=f"orders_{tag}", source=f"pp_{tag}.orders", target=f"ps_{tag}.orders",
        business_key=["userEmail", "accountId"],
    )
    from stagesync.settings.model import Settings

    settings_obj = Settings(
        prod={"uri": "mongodb://unused/"}, staging={"uri": "mongodb://unused/",
                                                   "state_db": f"pst_{tag}"},
        collections=[collection.model_dump()],
    )
    ensure_indexes(staging, settings_obj)
    state = staging[f"pst_{tag}"]
    context = ApplyContext.build(
        collection, Masker({}, b""), reader.collection(collection), staging, state,
    )
    return World(context, prod_writer[f"pp_{tag}"]["orders"], staging[f"ps_{tag}"]["orders"],
                 state)


# -- histories -----------------------------------------------------------------------------
@st.composite
def histories(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """Valid production operations: each one applies to the state the previous ones left."""
    present: dict[str, bool] = dict.fromkeys(PIDS, False)
    operations: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(3, 14))):
        pid = draw(st.sampled_from(PIDS))
        values = draw(st.dictionaries(st.sampled_from(FIELDS), st.integers(0, 3), max_size=2))
        if not present[pid]:
            operations.append(("insert", pid, draw(st.integers(0, len(KEYS) - 1)), values))
            present[pid] = True
            continue
        kind = draw(st.sampled_from(
            ["update", "update", "unset", "replace", "delete", "rekey", "nokey"]))
        if kind == "delete":
            present[pid] = False
            operations.append(("delete", pid))
        elif kind in ("replace", "rekey"):
            operations.append((kind, pid, draw(st.integers(0, len(KEYS) - 1)), values))
        elif kind == "unset":
            operations.append(("unset", pid, draw(st.sampled_from(FIELDS))))
        else:
            operations.append((kind, pid, values))
    return operations


def run_production(world: World, operation: tuple[Any, ...]) -> None:
    kind, pid = operation[0], operation[1]
    if kind == "insert":
        email, account = KEYS[operation[2]]
        world.prod.insert_one({"_id": pid, "userEmail": email, "accountId": account,
                               **operation[3]})
    elif kind == "update":
        if operation[2]:
            world.prod.update_one({"_id": pid}, {"$set": operation[2]})
        else:
            world.prod.update_one({"_id": pid}, {"$set": {"touched": uuid.uuid4().hex[:4]}})
    elif kind == "unset":
        world.prod.update_one({"_id": pid}, {"$unset": {operation[2]: ""}})
    elif kind in ("replace", "rekey"):
        email, account = KEYS[operation[2]]
        body = {"userEmail": email, "accountId": account, **operation[3]}
        if kind == "rekey":
            current = world.prod.find_one({"_id": pid}) or {}
            body = {**{k: v for k, v in current.items() if k != "_id"}, "userEmail": email,
                    "accountId": account}
        world.prod.replace_one({"_id": pid}, body)
    elif kind == "nokey":
        world.prod.update_one({"_id": pid}, {"$unset": {"accountId": ""}})
    elif kind == "delete":
        world.prod.delete_one({"_id": pid})


@given(data=st.data())
@settings(max_examples=int(os.environ.get("STAGESYNC_PROPERTY_EXAMPLES", "40")), deadline=None,
          derandomize=not os.environ.get("STAGESYNC_PROPERTY_EXAMPLES"),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_any_delivery_order_converges_to_production(clients: Any, data: st.DataObject) -> None:
    world = new_world(clients)
    history = data.draw(histories(), label="history")
    steps = len(history)

    # Every production write gets an apply that begins after it; plus random extra applies.
    applies: list[tuple[Apply, int, int, int]] = []

    def schedule(pids: list[str], earliest: int) -> None:
        begin = data.draw(st.integers(earliest, steps), label="begin")
        read = data.draw(st.integers(begin, steps), label="read")
        write = data.draw(st.integers(read, steps), label="write")
        applies.append((Apply(pids), begin, read, write))

    for index, operation in enumerate(history):
        extra = data.draw(st.lists(st.sampled_from(PIDS), max_size=1), label="batch mates")
        schedule(sorted({operation[1], *extra}), index + 1)
    for _ in range(data.draw(st.integers(0, 4), label="duplicates")):
        schedule(data.draw(st.lists(st.sampled_from(PIDS), min_size=1, max_size=3,
                                    unique=True), label="pids"), 0)

    # Slot k runs production step k, then the apply phases scheduled at k, in a drawn order.
    by_slot: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for number, (_, begin, read, write) in enumerate(applies):
        by_slot[begin].append((number, "begin"))
        by_slot[read].append((number, "read"))
        by_slot[write].append((number, "write"))
    for slot in range(steps + 1):
        if slot < steps:
            run_production(world, history[slot])
            world.trace.append(f"production {history[slot]}")
        phases = data.draw(st.permutations(by_slot[slot]), label="order")
        phases.sort(key=lambda item: ["begin", "read", "write"].index(item[1]))
        for number, phase in phases:
            run_phase(world, applies[number][0], phase)
        maybe_qa_edit(world, data)

    try:
        check_converged(world)
    except AssertionError as error:
        raise AssertionError(f"{error}\ntrace:\n  " + "\n  ".join(world.trace)) from None


def run_phase(world: World, apply: Apply, phase: str) -> None:
    context = world.context
    if phase == "begin":
        apply.version = take_version(context.state_db, context.name)
        world.trace.append(f"v{apply.version} begins for {apply.pids}")
    elif phase == "read":
        apply.production = context.read_production([encode_id(p) for p in apply.pids])
        seen = {pid: (doc or {}).get("userEmail", "-") + str((doc or {}).get("accountId", ""))
                for pid, doc in apply.production.items()}
        world.trace.append(f"v{apply.version} reads {seen}")
    else:
        assert apply.version is not None and apply.production is not None
        result = apply_documents(context, apply.version, dict(apply.production),
                                 dict.fromkeys(apply.production, "update"))
        dead = [(d.pid, d.reason) for d in result.dead_letters]
        world.trace.append(f"v{apply.version} writes: {dict(result.outcomes)} rounds "
                           f"{result.rounds} dead {dead}")


def maybe_qa_edit(world: World, data: st.DataObject) -> None:
    if not data.draw(st.booleans(), label="qa edit"):
        return
    live = [d for d in world.staging.find({}) if not read_meta(d).deleted]
    if not live:
        return
    target = data.draw(st.sampled_from(live), label="qa target")
    field_name = f"qa{len(world.qa_edits)}"
    value = uuid.uuid4().hex[:6]
    world.staging.update_one({"_id": target["_id"]}, {"$set": {field_name: value}})
    world.qa_edits.append((target["_id"], field_name, value))


def check_converged(world: World) -> None:
    production = {doc["_id"]: doc for doc in world.prod.find({})}
    staging = list(world.staging.find({}))
    entries = {e["pid"]: e for e in world.state["dead_letters"].find({"state": "open"})}
    live_by_pid: dict[str, list[dict[str, Any]]] = defaultdict(list)
    live_keys: dict[str, list[str]] = defaultdict(list)
    for doc in staging:
        meta = read_meta(doc)
        if not meta.deleted:
            live_by_pid[meta.pid or ""].append(doc)
            if meta.key:
                live_keys[meta.key].append(meta.pid or "")
    assert all(len(holders) == 1 for holders in live_keys.values()), live_keys

    rules = world.context.rules
    by_key: dict[str | None, list[Any]] = defaultdict(list)
    for pid, doc in production.items():
        by_key[rules.key_of(doc)].append(pid)
    expected_dead: dict[str, str] = {}
    for key, pids in by_key.items():
        if key is None:
            expected_dead.update(dict.fromkeys((encode_id(p) for p in pids),
                                               "missing_business_key"))
            continue
        holders = live_keys.get(key, [])
        assert len(holders) == 1, f"key held by {holders}, production docs {pids}"
        winner = holders[0]
        assert winner in {encode_id(p) for p in pids}, "key held by a stale document"
        for pid in pids:
            if encode_id(pid) != winner:
                expected_dead[encode_id(pid)] = "key_conflict"
        [doc] = live_by_pid[winner]
        owned = read_meta(doc).owned
        source = production[next(p for p in pids if encode_id(p) == winner)]
        assert production_view(doc, owned) == {k: v for k, v in source.items() if k != "_id"}

    for pid in live_by_pid:
        assert pid in {encode_id(p) for p in production}, f"{pid} gone but live in staging"
    assert {pid: e["reason"] for pid, e in entries.items()} == expected_dead

    current = {doc["_id"]: doc for doc in staging}
    for staging_id, field_name, value in world.qa_edits:
        if staging_id in current:
            assert current[staging_id].get(field_name) == value, (field_name, staging_id)
