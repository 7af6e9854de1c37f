"""References as a property: for random histories of users and orders, and random interleavings
of their applies, no reference stays dangling once every change has been applied.

Each production write marks its document as needing an apply; applies take random subsets of
those documents, in random order, and nothing is applied again at the end unless production
changed it or the sync itself asks (pending references). An orders apply can be interrupted at
the two moments the race of references lives in, after its first lookup of the copies and
after its last one, by a complete users apply: whatever the interleaving, one of the two sides
must see the other.
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
from stagesync.rules.references import references_of
from stagesync.settings.collection import CollectionSettings
from stagesync.settings.model import Settings
from stagesync.tasks.apply.applier import apply_changes
from stagesync.tasks.apply.context import ApplyContext
from stagesync.tasks.apply.references import ReferenceResolver, Target

EMAILS = ["a@x", "b@x", "c@x"]
EXAMPLES = int(os.environ.get("STAGESYNC_PROPERTY_EXAMPLES", "25"))


@dataclass
class World:
    users: ApplyContext
    orders: ApplyContext
    prod: Any
    staging: Any
    dirty: dict[str, set[str]] = field(default_factory=lambda: {"users": set(), "orders": set()})
    again: list[str] = field(default_factory=list)  # orders the users' applies asked for


def new_world(clients: tuple[ProductionReader, Any, Any]) -> World:
    reader, staging, writer = clients
    tag = uuid.uuid4().hex[:8]
    users = CollectionSettings(name=f"users_{tag}", source=f"rp_{tag}.users",
                               target=f"rs_{tag}.users", business_key=["email"])
    orders = CollectionSettings(name=f"orders_{tag}", source=f"rp_{tag}.orders",
                                target=f"rs_{tag}.orders", business_key=["orderNo"],
                                references={"customerId": users.name})
    config = Settings(prod={"uri": "mongodb://unused/"},
                      staging={"uri": "mongodb://unused/", "state_db": f"rst_{tag}"},
                      collections=[users.model_dump(), orders.model_dump()])
    ensure_indexes(staging, config)
    state = staging[f"rst_{tag}"]
    world_again: list[str] = []
    user_targets = {users.name: Target(staging[users.target_db][users.target_collection])}
    users_context = ApplyContext.build(
        users, Masker({}, b""), reader.collection(users), staging, state,
        ReferenceResolver(users.name, (), {}, state, [orders.name],
                          lambda _collection, pids: world_again.extend(pids)),
    )
    orders_context = ApplyContext.build(
        orders, Masker({}, b""), reader.collection(orders), staging, state,
        ReferenceResolver(orders.name, references_of(orders.references), user_targets, state),
    )
    world = World(users_context, orders_context, writer[f"rp_{tag}"], staging[f"rs_{tag}"])
    world.again = world_again
    return world


@st.composite
def scripts(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    steps: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(4, 16))):
        kind = draw(st.sampled_from(["user", "user", "delete", "order", "order", "apply",
                                     "apply", "staging_user"]))
        email = draw(st.sampled_from(EMAILS))
        if kind == "apply":
            which = draw(st.sampled_from(["users", "orders"]))
            point = draw(st.sampled_from([None, 1, 2]))  # interrupt an orders apply
            steps.append(("apply", which, draw(st.randoms()), point))
        else:
            steps.append((kind, email))
    return steps


def run(world: World, script: list[tuple[Any, ...]]) -> None:
    live: dict[str, Any] = {}  # email -> production _id of the live user
    future: dict[str, Any] = {email: ObjectId() for email in EMAILS}
    order_no = 0
    for step in script:
        kind = step[0]
        if kind == "user" and step[1] not in live:
            live[step[1]] = future.pop(step[1])
            future[step[1]] = ObjectId()
            world.prod["users"].insert_one({"_id": live[step[1]], "email": step[1]})
            world.dirty["users"].add(encode_id(live[step[1]]))
        elif kind == "delete" and step[1] in live:
            gone = live.pop(step[1])
            world.prod["users"].delete_one({"_id": gone})
            world.dirty["users"].add(encode_id(gone))
        elif kind == "order":
            order_no += 1
            target = live.get(step[1], future[step[1]])  # an existing or a future user
            inserted = world.prod["orders"].insert_one({"orderNo": order_no,
                                                        "customerId": target})
            world.dirty["orders"].add(encode_id(inserted.inserted_id))
        elif kind == "staging_user":
            # Staging already holds this key, under an `_id` of its own: it will be adopted.
            world.staging["users"].update_one({"email": step[1], "_sync": {"$exists": False}},
                                              {"$set": {"qa": True}}, upsert=True)
        elif kind == "apply":
            apply_some(world, step[1], step[2], step[3])
    for _ in range(50):  # every change applied at least once after it happened
        if not (world.dirty["users"] or world.dirty["orders"] or world.again):
            return
        world.dirty["orders"] |= set(world.again)
        world.again.clear()
        apply_some(world, "users", None, None, everything=True)
        apply_some(world, "orders", None, None, everything=True)
    raise AssertionError("applies kept asking for more")


def apply_some(world: World, which: str, rng: Any, point: int | None,
               everything: bool = False) -> None:
    dirty = sorted(world.dirty[which])
    chosen = dirty if everything or rng is None else [p for p in dirty if rng.random() < 0.6]
    if not chosen:
        return
    world.dirty[which] -= set(chosen)
    if which == "users":
        apply_changes(world.users, dict.fromkeys(chosen, "update"))
        return
    resolver = world.orders.references
    assert resolver is not None
    original = resolver._lookup
    calls = [0]

    def interrupted(keys: Any) -> Any:
        found = original(keys)
        calls[0] += 1
        if calls[0] == point and world.dirty["users"]:
            users = sorted(world.dirty["users"])
            world.dirty["users"].clear()
            apply_changes(world.users, dict.fromkeys(users, "update"))
        return found

    resolver._lookup = interrupted  # type: ignore[method-assign]
    try:
        apply_changes(world.orders, dict.fromkeys(chosen, "update"))
    finally:
        resolver._lookup = original  # type: ignore[method-assign]


def assert_no_dangling(world: World) -> None:
    for order in world.prod["orders"].find({}):
        customer = world.prod["users"].find_one({"_id": order["customerId"]})
        if customer is None:
            continue  # dangling in production too
        staged = world.staging["orders"].find_one({"_sync.pid": encode_id(order["_id"])})
        assert staged is not None, order
        target = world.staging["users"].find_one({"_id": staged["customerId"]})
        assert target is not None and target.get("email") == customer["email"], (
            order, staged, target)


ADOPTED_LATER = [("staging_user", "a@x"), ("order", "a@x"), ("apply", "orders", None, None),
                 ("user", "a@x"), ("apply", "users", None, None)]
REVIVED_LATER = [("user", "b@x"), ("apply", "users", None, None), ("delete", "b@x"),
                 ("apply", "users", None, None), ("order", "b@x"),
                 ("apply", "orders", None, None), ("user", "b@x")]


def racing(point: int) -> list[tuple[Any, ...]]:
    """An orders apply interrupted by the apply of the adopted user it points at."""
    return [("staging_user", "c@x"), ("order", "c@x"), ("user", "c@x"),
            ("apply", "orders", None, point)]


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(scripts())
@example(ADOPTED_LATER)
@example(REVIVED_LATER)
@example(racing(1))
@example(racing(2))
def test_no_reference_stays_dangling_once_idle(
    clients: tuple[ProductionReader, Any, Any], script: list[tuple[Any, ...]]
) -> None:
    world = new_world(clients)
    run(world, script)
    assert_no_dangling(world)


