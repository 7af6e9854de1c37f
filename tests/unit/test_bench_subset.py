"""The benchmark's subset variant: the harness must agree with the product on which orders
staging gets, or the completion probe waits for orders the product never writes (a timeout)
or counts as done a burst the product has not finished, and verification compares the wrong
documents.

The harness decides membership itself, from the workload and the product's pure `in_sample`,
never by reading staging; these checks keep that decision tied to the configuration it writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bson import ObjectId
from stagesync.rules.identity import encode_id
from stagesync.rules.subset import in_sample
from stagesync.rules.sync_meta import PID_FIELD, SYNC
from stagesync.settings import load_settings

from bench.completion import _applied, expectations
from bench.product import (
    PII_SECRET,
    TEST_SERVER_IN_LIST_MAX,
    BySyncPid,
    Tuning,
    order_copied,
    subset_member,
    translated_references,
    write_config,
)
from bench.systems import BenchContext
from bench.verify_equal import verify_equal
from bench.workload import CUSTOMER, MARKER, USERS, Expected, make_orders, make_users


class Found:
    """A collection stand-in: `find` returns fixed documents and records each query."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs
        self.queries: list[dict[str, Any]] = []

    def find(self, query: dict[str, Any], *_args: Any, **_kwargs: Any) -> list[dict[str, Any]]:
        self.queries.append(query)
        if PID_FIELD in query:
            wanted = set(query[PID_FIELD]["$in"])
            return [d for d in self.docs if d.get(SYNC, {}).get("pid") in wanted]
        return list(self.docs)


def test_the_harness_samples_the_users_the_written_configuration_samples(
    tmp_path: Path,
) -> None:
    ctx = BenchContext("burst", "loopback", "mongodb://p", "mongodb://s", "mongodb://p",
                       "mongodb://s", tmp_path, 60.0)
    path = write_config(tmp_path / "subset.yaml", ctx, "mongodb://p", "mongodb://s",
                        "redis://127.0.0.1:1/0", Tuning(), "subset")
    settings = load_settings(path)
    users, orders = settings.collection(USERS), settings.collection("orders")
    assert users.subset is not None and users.subset.percent is not None
    assert orders.subset is not None and orders.subset.follow == CUSTOMER
    assert orders.references == {CUSTOMER: USERS}
    assert settings.secret_bytes() == PII_SECRET.encode()

    ids = [u["_id"] for u in make_users(2_000, seed=1)]
    # What the product's applier decides (tasks.apply.applier.ApplyContext.sampled).
    product = [in_sample(encode_id(i), users.subset.percent, settings.secret_bytes())
               for i in ids]
    assert [subset_member(i) for i in ids] == product
    assert 100 < sum(product) < 300  # ~10 %: the sample is neither empty nor everything


def test_an_order_outside_the_subset_is_done_when_staging_has_no_live_copy_of_it() -> None:
    users = make_users(200, seed=1)
    orders = make_orders(40, seed=1, customers=[u["_id"] for u in users])
    items = [Expected(o["_id"], ("k", n), n + 1, customer=o[CUSTOMER])
             for n, o in enumerate(orders)]
    mapped = expectations(items, order_copied)
    inside = [e for e in mapped if e.copied]
    outside = [e for e in mapped if not e.copied]
    assert inside and outside
    assert all(subset_member(e.customer) for e in inside)
    assert not any(subset_member(e.customer) for e in outside)

    # Outside: done while absent, not done while a live copy exists. Inside: as before.
    assert _applied(None, outside[0])
    assert not _applied({MARKER: 10**6}, outside[0])
    assert not _applied(None, inside[0]) and _applied({MARKER: inside[0].seq}, inside[0])

    # The locator asks for all of them in one `_sync.pid` query, not one lookup each.
    wrong = {"_id": ObjectId(), MARKER: 1, SYNC: {"pid": encode_id(outside[0].id)}}
    coll = Found([wrong])
    found = BySyncPid().fetch(coll, outside)  # type: ignore[arg-type]
    assert coll.queries == [{PID_FIELD: {"$in": [encode_id(e.id) for e in outside]}}]
    assert list(found) == [outside[0].id]


def test_verification_compares_the_subset_with_references_translated() -> None:
    users = make_users(50, seed=1)
    member = next(u for u in users if subset_member(u["_id"]))
    stranger = next(u for u in users if not subset_member(u["_id"]))
    ours, theirs = make_orders(2, seed=1, customers=[member["_id"], stranger["_id"]])
    assert ours[CUSTOMER] == member["_id"] and theirs[CUSTOMER] == stranger["_id"]
    staging_id = ObjectId()  # the user's copy under another staging `_id`
    copies = {encode_id(member["_id"]): staging_id}

    def run(staging: list[dict[str, Any]]) -> tuple[int, int, int]:
        result = verify_equal(
            Found([ours, theirs]), Found(staging),  # type: ignore[arg-type]
            match_on=("userEmail", "accountId"), ignore_fields=[SYNC],
            include=lambda doc: subset_member(doc[CUSTOMER]),
            expected=translated_references(copies))
        return result.missing, result.extra, result.different

    translated = {**ours, "_id": ObjectId(), CUSTOMER: staging_id}
    assert run([translated]) == (0, 0, 0)
    # Production's value where the copy has another `_id`: not translated, a difference.
    assert run([{**ours, "_id": ObjectId()}]) == (0, 0, 1)
    # An order outside the subset with a live copy in staging: extra.
    assert run([translated, {**theirs, "_id": ObjectId()}]) == (0, 1, 0)


def test_in_list_max_is_the_test_servers_unless_set(tmp_path: Path) -> None:
    """`BENCH_STAGESYNC_IN_LIST_MAX`: 200 unless set; `default` leaves the product's own
    (MongoDB's 1000), to count staging messages per apply as MongoDB would see them."""
    ctx = BenchContext("burst", "loopback", "mongodb://p", "mongodb://s", "mongodb://p",
                       "mongodb://s", tmp_path, 60.0)

    def written(env: dict[str, str]) -> int:
        path = write_config(tmp_path / "c.yaml", ctx, "mongodb://p", "mongodb://s",
                            "redis://127.0.0.1:1/0", Tuning.from_env(env))
        return load_settings(path).in_list_max

    assert written({}) == TEST_SERVER_IN_LIST_MAX
    assert written({"BENCH_STAGESYNC_IN_LIST_MAX": "500"}) == 500
    assert written({"BENCH_STAGESYNC_IN_LIST_MAX": "default"}) == 1000
