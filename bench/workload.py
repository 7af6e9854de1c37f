"""Data and traffic shared by every benchmark scenario and every system under test.

Why deterministic: each measured system gets fresh servers, so each must see exactly the same
documents and the same operations (same seed) for the comparison to mean anything, and the
expected final state of every document must be known without reading production back.

Every operation sets `writeSeq` (its global sequence number) on the document it touches, so:
- every update really modifies its document and produces exactly one change event on real
  MongoDB too (a no-op update writes no oplog entry there);
- "staging has applied write N to document X" is a cheap check (`writeSeq >= N`), used for
  completion and lag measurement (see `bench.completion`).
Business keys (`userEmail`, `accountId`) never change in these workloads.

Every order names its customer (`customerId`: the `_id` of one of the seeded production `users`,
a pure function of the order's index), so the product's references and subsets can be measured
on the same orders as everything else (bench/README.md, "References and subsets"). No operation
changes `customerId` or writes a user; the systems that do not read `users` just carry the field.

Timestamps use `$currentDate`, arrays are `$set` whole and `_id`s are ObjectIds: ordinary
operations on MongoDB. (They were first chosen to avoid type errors of nx-27017, the earlier
test server; SecantusDB has none of them, and the workload stays as it was so that figures
remain comparable across runs.)
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from bson import ObjectId
from pymongo import DeleteOne, InsertOne, UpdateOne
from pymongo.collection import Collection

BUSINESS_KEY: tuple[str, ...] = ("userEmail", "accountId")
MARKER = "writeSeq"
CUSTOMER = "customerId"  # an order's reference to its production user
USERS = "users"  # the collection of those users, in the orders' database
USERS_KEY: tuple[str, ...] = ("email",)
USERS_PER_ORDER = 0.1  # production holds docs / 10 users
EPOCH = datetime(2024, 1, 1)

FIRST = ["Ada", "Alan", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances",
         "Edsger", "Radia", "Tim", "Hedy", "John", "Katherine", "Niklaus", "Sophie", "Yukihiro"]
LAST = ["Lovelace", "Turing", "Hopper", "Torvalds", "Hamilton", "Thompson", "Liskov", "Ritchie",
        "Allen", "Dijkstra", "Perlman", "Berners-Lee", "Lamarr", "McCarthy", "Johnson", "Wirth"]
CITIES = [("Paris", "75"), ("Lyon", "69"), ("Berlin", "10"), ("Madrid", "28"), ("Milan", "20"),
          ("Lisbon", "11"), ("Dublin", "D0"), ("Vienna", "10"), ("Ghent", "90"), ("Porto", "40")]
STREETS = ["Main St", "High St", "Station Rd", "Church Ln", "Market Sq", "Mill Rd", "Park Ave"]
STATUSES = ["pending", "paid", "shipped", "delivered", "cancelled", "refunded"]
SKUS = [f"SKU-{n:04d}" for n in range(200)]

OpKind = Literal["insert", "update", "delete"]


@dataclass(frozen=True)
class Op:
    """One production write; `body` is the document (insert) or the update spec (update)."""

    seq: int
    kind: OpKind
    id: ObjectId
    body: dict[str, Any] | None = None

    def request(self) -> InsertOne[Any] | UpdateOne | DeleteOne:
        if self.kind == "insert":
            assert self.body is not None
            return InsertOne(self.body)
        if self.kind == "update":
            assert self.body is not None
            return UpdateOne({"_id": self.id}, self.body)
        return DeleteOne({"_id": self.id})


@dataclass(frozen=True)
class Expected:
    """What staging must show for one production document once everything is applied."""

    id: ObjectId
    key: tuple[Any, ...]
    seq: int  # the last write to the document (its final writeSeq unless deleted)
    deleted: bool = False
    customer: Any = None  # the order's `customerId` (never changed by a workload)
    # False: the system under test copies only part of production (a subset) and this
    # document is outside it, so staging must not hold a live copy (see
    # `bench.completion.expectations`).
    copied: bool = True

    @property
    def absent(self) -> bool:
        """Staging must hold no live document for it: deleted, or outside the copied part."""
        return self.deleted or not self.copied


@dataclass
class Burst:
    ops: list[Op]
    # Final state of every document the ops touch (untouched documents are not listed).
    expected: dict[ObjectId, Expected] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        out = {"insert": 0, "update": 0, "delete": 0}
        for op in self.ops:
            out[op.kind] += 1
        return out


# -- documents ----------------------------------------------------------------------------------
def make_order(
    index: int, rng: random.Random, seq: int = 0, customers: Sequence[ObjectId] = ()
) -> dict[str, Any]:
    """A realistic order; `index` makes the business key unique and, with `customers`, picks
    its `customerId` (without drawing from `rng`, so every other field stays as it was before
    orders had customers)."""
    first, last = rng.choice(FIRST), rng.choice(LAST)
    city, zip_prefix = rng.choice(CITIES)
    created = EPOCH + timedelta(seconds=rng.randrange(300 * 86400),
                                milliseconds=rng.randrange(1000))
    items = _items(rng)
    doc: dict[str, Any] = {
        "_id": _object_id(rng, created),
        "userEmail": f"{first}.{last}.{index}@example.com".lower(),
        "accountId": f"ACC-{index:07d}-{rng.randrange(100):02d}",
        **({CUSTOMER: customers[index % len(customers)]} if customers else {}),
        "customer": {
            "name": f"{first} {last}",
            "phone": f"+33 6 {rng.randrange(10**8):08d}",
            "address": {"street": f"{rng.randrange(1, 200)} {rng.choice(STREETS)}", "city": city,
                        "zip": f"{zip_prefix}{rng.randrange(1000):03d}"},
        },
        "status": rng.choice(STATUSES),
        "currency": "EUR",
        "items": items,
        "total": round(sum(i["qty"] * i["price"] for i in items), 2),
        "createdAt": created,
        "updatedAt": created,
        MARKER: seq,
    }
    if rng.random() < 0.3:
        doc["couponCode"] = f"SAVE{rng.randrange(5, 50)}"
    return doc


def make_orders(
    count: int, seed: int = 1, customers: Sequence[ObjectId] = ()
) -> list[dict[str, Any]]:
    """The production collection's starting documents (deterministic for a seed); each names
    one of `customers` (round robin by index) when given."""
    rng = random.Random(seed)
    return [make_order(i, rng, customers=customers) for i in range(count)]


def users_for(orders: int) -> int:
    """How many production users `orders` seeded orders share (at least one)."""
    return max(1, int(orders * USERS_PER_ORDER))


def make_users(count: int, seed: int = 1) -> list[dict[str, Any]]:
    """The production `users` the orders reference (deterministic for a seed; a generator of
    their own, so the orders' documents do not depend on how many users there are)."""
    rng = random.Random(f"users-{seed}")
    users = []
    for n in range(count):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        created = EPOCH - timedelta(seconds=rng.randrange(700 * 86400))
        users.append({
            "_id": _object_id(rng, created),
            "email": f"{first}.{last}.u{n}@example.com".lower(),
            "name": f"{first} {last}",
            "city": rng.choice(CITIES)[0],
            "createdAt": created,
        })
    return users


def seed_production(
    coll: Collection[Any], docs: Sequence[dict[str, Any]], chunk: int = 5000
) -> None:
    """Insert the starting documents (not timed; `insert_many` runs ~30k docs/s here)."""
    for start in range(0, len(docs), chunk):
        coll.insert_many(list(docs[start : start + chunk]), ordered=False)


def _items(rng: random.Random) -> list[dict[str, Any]]:
    return [{"sku": rng.choice(SKUS), "qty": rng.randrange(1, 5),
             "price": round(rng.uniform(2, 250), 2)} for _ in range(rng.randrange(1, 6))]


def _object_id(rng: random.Random, when: datetime) -> ObjectId:
    seconds = int((when - datetime(1970, 1, 1)).total_seconds())
    return ObjectId(seconds.to_bytes(4, "big") + rng.randbytes(8))


# -- operations ---------------------------------------------------------------------------------
class _LiveSet:
    """Documents alive at this point of the generated history: O(1) pick and remove."""

    def __init__(self, ids: Sequence[ObjectId]) -> None:
        self.items = list(ids)
        self.index = {doc_id: n for n, doc_id in enumerate(self.items)}

    def add(self, doc_id: ObjectId) -> None:
        self.index[doc_id] = len(self.items)
        self.items.append(doc_id)

    def remove(self, doc_id: ObjectId) -> None:
        n = self.index.pop(doc_id)
        last = self.items.pop()
        if n < len(self.items):
            self.items[n] = last
            self.index[last] = n

    def pick(self, rng: random.Random) -> ObjectId:
        return self.items[rng.randrange(len(self.items))]


def make_ops(
    docs: Sequence[dict[str, Any]],
    count: int,
    seed: int = 2,
    insert_share: float = 0.05,
    delete_share: float = 0.05,
    hot_share: float = 0.05,
    hot_traffic: float = 0.30,
    first_seq: int = 1,
    customers: Sequence[ObjectId] = (),
) -> Burst:
    """`count` operations on `docs`: mostly updates over all documents, `hot_traffic` of them on
    a `hot_share` of documents (never deleted), plus inserts and deletes of live documents.
    Inserted orders name one of `customers` (as `make_orders` does) when given.

    Every operation targets a document that exists at that point (inserts use fresh `_id`s), so
    each produces exactly one change event.
    """
    rng = random.Random(seed)
    keys = {d["_id"]: tuple(d[k] for k in BUSINESS_KEY) for d in docs}
    owner = {d["_id"]: d.get(CUSTOMER) for d in docs}
    hot = [d["_id"] for d in docs[: max(1, int(len(docs) * hot_share))]]
    hot_set = set(hot)
    live = _LiveSet([d["_id"] for d in docs])
    cold = _LiveSet([d["_id"] for d in docs if d["_id"] not in hot_set])
    burst = Burst(ops=[])
    next_index = len(docs) + seed * 1_000_000  # keeps inserted business keys unique
    for seq in range(first_seq, first_seq + count):
        roll = rng.random()
        if roll < insert_share:
            doc = make_order(next_index, rng, seq, customers)
            next_index += 1
            op = Op(seq, "insert", doc["_id"], doc)
            keys[doc["_id"]] = tuple(doc[k] for k in BUSINESS_KEY)
            owner[doc["_id"]] = doc.get(CUSTOMER)
            live.add(doc["_id"])
            cold.add(doc["_id"])
        elif roll < insert_share + delete_share and len(cold.items) > 1:
            doc_id = cold.pick(rng)
            op = Op(seq, "delete", doc_id)
            live.remove(doc_id)
            cold.remove(doc_id)
        else:
            doc_id = rng.choice(hot) if rng.random() < hot_traffic else live.pick(rng)
            op = Op(seq, "update", doc_id, _update(rng, seq))
        burst.ops.append(op)
        burst.expected[op.id] = Expected(op.id, keys[op.id], seq, op.kind == "delete",
                                         customer=owner[op.id])
    return burst


def _update(rng: random.Random, seq: int) -> dict[str, Any]:
    """One of the updates an order system really does; always sets the marker."""
    kind = rng.random()
    fields: dict[str, Any] = {MARKER: seq}
    spec: dict[str, Any] = {"$set": fields, "$currentDate": {"updatedAt": True}}
    if kind < 0.45:
        fields["status"] = rng.choice(STATUSES)
    elif kind < 0.65:
        items = _items(rng)
        fields["items"] = items
        fields["total"] = round(sum(i["qty"] * i["price"] for i in items), 2)
    elif kind < 0.80:
        city, zip_prefix = rng.choice(CITIES)
        fields["customer.address.city"] = city
        fields["customer.address.zip"] = f"{zip_prefix}{rng.randrange(1000):03d}"
    elif kind < 0.90:
        fields["customer.phone"] = f"+33 7 {rng.randrange(10**8):08d}"
    elif kind < 0.95:
        spec["$unset"] = {"couponCode": ""}  # production removes a field: staging must follow
    else:
        fields["couponCode"] = f"SAVE{rng.randrange(5, 50)}"
        spec["$inc"] = {"total": -round(rng.uniform(1, 5), 2)}
    return spec


# -- applying them ------------------------------------------------------------------------------
def apply_burst(coll: Collection[Any], ops: Sequence[Op], chunk: int = 500) -> tuple[float, float]:
    """Write `ops` as fast as the server accepts them: ordered `bulk_write`s of `chunk` ops
    (one change event per op). Returns (monotonic time of the first write, of the last ack)."""
    started = time.monotonic()
    for start in range(0, len(ops), chunk):
        coll.bulk_write([op.request() for op in ops[start : start + chunk]], ordered=True)
    return started, time.monotonic()


@dataclass(frozen=True)
class WriteRecord:
    """One paced write: when it was sent and acknowledged (monotonic and wall clock)."""

    op: Op
    sent: float  # time.monotonic() just before sending
    acked: float  # time.monotonic() once acknowledged
    wall: float  # time.time() just before sending, for correlating with other processes


def paced_ops(ops: Sequence[Op], rate: float) -> Iterator[tuple[float, Op]]:
    """(due offset in seconds, op) for a steady `rate` of ops per second."""
    for n, op in enumerate(ops):
        yield n / rate, op


def apply_steady(
    coll: Collection[Any],
    ops: Sequence[Op],
    rate: float,
    max_seconds: float | None = None,
    on_write: Callable[[WriteRecord], None] | None = None,
) -> list[WriteRecord]:
    """One writer, `rate` ops/s (paced against the start time, so a slow write does not shift
    every later one). Stops after `max_seconds` if given. Returns one record per write, also
    handed to `on_write` as soon as the write is acknowledged (e.g. to a lag observer)."""
    records: list[WriteRecord] = []
    started = time.monotonic()
    for due, op in paced_ops(ops, rate):
        if max_seconds is not None and due >= max_seconds:
            break
        if (wait := started + due - time.monotonic()) > 0:
            time.sleep(wait)
        wall, sent = time.time(), time.monotonic()
        coll.bulk_write([op.request()], ordered=True)
        record = WriteRecord(op, sent, time.monotonic(), wall)
        records.append(record)
        if on_write is not None:
            on_write(record)
    return records
