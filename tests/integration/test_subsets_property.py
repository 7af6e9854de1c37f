"""Subsets as a property: for random histories of parents (accounts, in the subset while their
`filter` matches) and children (orders following `accountId`), and random interleavings of
their applies, staging's live documents are exactly the closure of the subset once every
change has been applied. An orders apply can be interrupted, right after it looked its parents
up, by a complete accounts apply.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from stagesync.deployments.production import ProductionReader
from stagesync.deployments.staging_indexes import ensure_indexes
from stagesync.rules.identity import encode_id
from stagesync.rules.pii import Masker
from stagesync.rules.references import Reference, references_of
from stagesync.settings.collection import CollectionSettings
from stagesync.settings.model import Settings
from stagesync.tasks.apply.applier import apply_changes
from stagesync.tasks.apply.context import ApplyContext
from stagesync.tasks.apply.references import Follower, ReferenceResolver, SubsetLinks, Target

CODES = ["A", "B", "C"]
EXAMPLES = int(os.environ.get("STAGESYNC_PROPERTY_EXAMPLES", "25"))


@dataclass
class World:
    accounts: ApplyContext
    orders: ApplyContext
    prod: Any
    staging: Any
    dirty: dict[str, set[str]] = field(
        default_factory=lambda: {"accounts": set(), "orders": set()})
    again: dict[str, set[str]] = field(
        default_factory=lambda: {"accounts": set(), "orders": set()})


def new_world(clients: tuple[ProductionReader, Any, Any]) -> World:
    reader, staging, writer = clients
    tag = uuid.uuid4().hex[:8]
    accounts = CollectionSettings(name=f"accounts_{tag}", source=f"sp_{tag}.accounts",
                                  target=f"ss_{tag}.accounts", business_key=["code"],
                                  filter={"region": "eu"})
    orders = CollectionSettings(name=f"orders_{tag}", source=f"sp_{tag}.orders",
                                target=f"ss_{tag}.orders", business_key=["orderNo"],
                                references={"accountId": accounts.name},
                                subset={"follow": "accountId"})
    config = Settings(prod={"uri": "mongodb://unused/"},
                      staging={"uri": "mongodb://unused/", "state_db": f"sst_{tag}"},
                      collections=[accounts.model_dump(), orders.model_dump()])
    ensure_indexes(staging, config)
    state = staging[f"sst_{tag}"]
    again: dict[str, set[str]] = {"accounts": set(), "orders": set()}

    def apply_again(collection: str, pids: list[str]) -> None:
        again["orders" if collection == orders.name else "accounts"].update(pids)

    follow = Reference("accountId", accounts.name)
    accounts_context = ApplyContext.build(
        accounts, Masker({}, b""), reader.collection(accounts), staging, state,
        ReferenceResolver(accounts.name, (), {}, state, [orders.name], apply_again,
                          subset=SubsetLinks(followers=[
                              Follower(orders.name, follow, reader.collection(orders))])),
    )
    orders_context = ApplyContext.build(
        orders, Masker({}, b""), reader.collection(orders), staging, state,
        ReferenceResolver(orders.name, references_of(orders.references),
                          {accounts.name: Target(staging[f"ss_{tag}"]["accounts"])}, state,
                          subset=SubsetLinks(follow=follow)),
    )
    world = World(accounts_context, orders_context, writer[f"sp_{tag}"], staging[f"ss_{tag}"])
    world.again = again
    return world


@st.composite
def scripts(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    steps: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(4, 18))):
        kind = draw(st.sampled_from(["account", "move", "delete", "order", "order",
                                     "reparent", "apply", "apply"]))
        if kind == "apply":
            steps.append(("apply", draw(st.sampled_from(["accounts", "orders"])),
                          draw(st.randoms()), draw(st.booleans())))
        else:
            steps.append((kind, draw(st.sampled_from(CODES)), draw(st.sampled_from(["eu", "us"])),
                          draw(st.integers(0, 5))))
    return steps


def run(world: World, script: list[tuple[Any, ...]]) -> None:
    ids = {code: ObjectId() for code in CODES}  # production _id of each account, if any
    live: set[str] = set()
    orders: list[Any] = []
    for step in script:
        kind, code = step[0], step[1]
        if kind == "account" and code not in live:
            live.add(code)
            world.prod["accounts"].insert_one({"_id": ids[code], "code": code,
                                               "region": step[2]})
            world.dirty["accounts"].add(encode_id(ids[code]))
        elif kind == "move" and code in live:
            world.prod["accounts"].update_one({"_id": ids[code]}, {"$set": {"region": step[2]}})
            world.dirty["accounts"].add(encode_id(ids[code]))
        elif kind == "delete" and code in live:
            live.discard(code)
            world.prod["accounts"].delete_one({"_id": ids[code]})
            world.dirty["accounts"].add(encode_id(ids[code]))
            ids[code] = ObjectId()  # a later insert of the code is a new document
        elif kind == "order":
            inserted = world.prod["orders"].insert_one({"orderNo": len(orders),
                                                        "accountId": ids[code]})
            orders.append(inserted.inserted_id)
            world.dirty["orders"].add(encode_id(inserted.inserted_id))
        elif kind == "reparent" and orders:
            order = orders[step[3] % len(orders)]
            world.prod["orders"].update_one({"_id": order}, {"$set": {"accountId": ids[code]}})
            world.dirty["orders"].add(encode_id(order))
        elif kind == "apply":
            apply_some(world, step[1], step[2], step[3])
    for _ in range(50):
        for name in ("accounts", "orders"):
            world.dirty[name] |= world.again[name]
            world.again[name].clear()
        if not (world.dirty["accounts"] or world.dirty["orders"]):
            return
        apply_some(world, "accounts", None, False)
        apply_some(world, "orders", None, False)
    raise AssertionError("applies kept asking for more")


def apply_some(world: World, which: str, rng: Any, interrupt: bool) -> None:
    dirty = sorted(world.dirty[which])
    chosen = dirty if rng is None else [pid for pid in dirty if rng.random() < 0.6]
    if not chosen:
        return
    world.dirty[which] -= set(chosen)
    if which == "accounts" or not interrupt:
        apply_changes(getattr(world, which), dict.fromkeys(chosen, "update"))
        return
    resolver = world.orders.references
    assert resolver is not None
    original = resolver._lookup

    def interrupted(keys: Any) -> Any:
        found = original(keys)
        if world.dirty["accounts"]:
            accounts = sorted(world.dirty["accounts"])
            world.dirty["accounts"].clear()
            apply_changes(world.accounts, dict.fromkeys(accounts, "update"))
        return found

    resolver._lookup = interrupted  # type: ignore[method-assign]
    try:
        apply_changes(world.orders, dict.fromkeys(chosen, "update"))
    finally:
        resolver._lookup = original  # type: ignore[method-assign]


def live(world: World, name: str) -> set[str]:
    return {doc["_sync"]["pid"] for doc in world.staging[name].find(
        {"deleted": False, "_sync.pid": {"$exists": True}}, {"_sync": 1})}


def assert_closure(world: World) -> None:
    accounts = {encode_id(doc["_id"]) for doc in world.prod["accounts"].find({"region": "eu"})}
    orders = {encode_id(doc["_id"]) for doc in world.prod["orders"].find({})
              if encode_id(doc["accountId"]) in accounts}
    assert live(world, "accounts") == accounts
    assert live(world, "orders") == orders


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(scripts())
@example([("order", "A", "eu", 0), ("apply", "orders", None, False),
          ("account", "A", "eu", 0), ("apply", "accounts", None, False)])
@example([("account", "A", "eu", 0), ("order", "A", "eu", 0), ("apply", "orders", None, False),
          ("move", "A", "us", 0), ("apply", "orders", None, True)])
def test_live_staging_is_the_closure_of_the_subset_once_idle(
    clients: tuple[ProductionReader, Any, Any], script: list[tuple[Any, ...]]
) -> None:
    world = new_world(clients)
    run(world, script)
    assert_closure(world)
