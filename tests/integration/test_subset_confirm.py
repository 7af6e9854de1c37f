"""A target whose subset follows a sampled one writes nothing for the documents outside it (no
tombstone: in a 5 % environment that was nineteen writes in twenty), and the apply that makes a
copy live confirms it afterwards, which closes the race the tombstone closed: a slower apply
that read the document while it was still a member, creating its copy after a newer apply
left the document out (`rules.plan.plan_batch`'s `outside`, `applier.confirm_entered`).

In-process applies against the test server, the slower one's production read taken by hand
before the document leaves the subset.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from bson import ObjectId
from stagesync.deployments.staging import connect_staging
from stagesync.deployments.staging_indexes import ensure_indexes
from stagesync.rules.identity import encode_id
from stagesync.rules.subset import in_sample
from stagesync.rules.sync_meta import KEY_FIELD
from stagesync.state.versions import take_version
from stagesync.tasks import runtime as runtime_module
from stagesync.tasks.apply.applier import ApplyOptions, apply_changes, apply_documents
from stagesync.tasks.apply.targets import TargetBatch
from stagesync.tasks.runtime import Runtime

from tests.integration.test_environment_fanout import add_environment, env_copies
from tests.support.commands import CommandLog
from tests.support.pipeline import Pipeline, collection_config

SECRET = "test-secret"  # the pipeline fixture's pii_secret
PERCENT = 50.0


def sampled_users_and_their_orders(pipeline_factory: Any) -> Pipeline:
    """Users sampled at PERCENT, orders following them."""
    tag = str(ObjectId())[-8:]
    pipeline: Pipeline = pipeline_factory([
        collection_config("users", tag, business_key=["email"], subset={"percent": PERCENT}),
        collection_config("orders", tag, business_key=["orderNo"],
                          references={"customerId": f"users_{tag}"},
                          subset={"follow": "customerId"}),
    ])
    return pipeline


@pytest.fixture
def runtime(pipeline_factory: Any, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[tuple[Pipeline, Any]]:
    """Users sampled, orders following them; a worker's runtime built in this process."""
    pipeline = sampled_users_and_their_orders(pipeline_factory)
    monkeypatch.setenv("STAGESYNC_CONFIG", str(pipeline.config_path))
    runtime_module.reset_runtime()
    staging = connect_staging(pipeline.settings.staging)
    ensure_indexes(staging, pipeline.settings)
    staging.close()
    yield pipeline, runtime_module.get_runtime()
    runtime_module.reset_runtime()


def _user(pipeline: Pipeline, sampled: bool) -> ObjectId:
    """A production user inside (or outside) the sample."""
    for n in range(200):
        _id = ObjectId()
        if in_sample(encode_id(_id), PERCENT, SECRET.encode()) == sampled:
            pipeline.prod(0).insert_one({"_id": _id, "email": f"{n}-{_id}@x"})
            return _id
    raise AssertionError("no user found on that side of the sample")


def _copy(pipeline: Pipeline, pid: Any) -> dict[str, Any] | None:
    return pipeline.staging(1).find_one({"_sync.pid": encode_id(pid)})


@pytest.mark.parametrize("confirm", [True, False])
def test_a_copy_made_from_a_read_older_than_the_apply_that_left_it_out_does_not_stay(
        runtime: tuple[Pipeline, Any], confirm: bool) -> None:
    pipeline, worker = runtime
    users, orders = (worker.context(config["name"]) for config in pipeline.collections)
    assert orders.confirms_entered and not users.confirms_entered
    member, other = _user(pipeline, sampled=True), _user(pipeline, sampled=False)
    apply_changes(users, {encode_id(member): "insert", encode_id(other): "insert"})
    order = pipeline.prod(1).insert_one({"orderNo": 1, "customerId": member}).inserted_id
    pid = encode_id(order)

    # The slower apply: its version and its read while the order still follows a member.
    slow_version = take_version(orders.state_db, orders.name)
    slow_read = orders.read_production([pid])
    pipeline.prod(1).update_one({"_id": order}, {"$set": {"customerId": other}})

    # The newer apply: the order is outside the subset, and nothing is written for it.
    newer = apply_changes(orders, {pid: "update"})
    assert newer.outcomes["outside"] == 1 and _copy(pipeline, order) is None
    # The user outside the sample left nothing in staging either.
    assert pipeline.staging(0).find_one({"_sync.pid": encode_id(other)}) is None

    # The slower apply lands last: it creates the copy it planned from its older read...
    slow = apply_documents(orders, slow_version, slow_read, {pid: "update"},
                           ApplyOptions(confirm_entered=confirm))
    assert slow.outcomes["created"] == 1
    copy = _copy(pipeline, order)
    assert copy is not None
    if confirm:
        # ...and its confirmation, reading after that write, removes it again.
        assert copy["deleted"] is True and slow.outcomes["soft_deleted"] == 1
    else:
        # Without the confirmation the stale member would stay: what the test guards.
        assert copy["deleted"] is False


def test_the_fan_out_confirms_every_environment_from_one_production_read(
        pipeline_factory: Any, production_finds: list[dict[str, Any]]) -> None:
    """Orders created in two sampled environments: their confirmation reads production once
    for both (`TargetBatch._confirm`), as the batch itself did."""
    tag = str(ObjectId())[-8:]
    pipeline: Pipeline = pipeline_factory([
        collection_config("users", tag, business_key=["email"]),
        collection_config("orders", tag, business_key=["orderNo"],
                          references={"customerId": f"users_{tag}"},
                          subset={"follow": "customerId"}),
    ])
    worker = Runtime(pipeline.settings)
    ensure_indexes(worker.staging, pipeline.settings)
    environments = [add_environment(pipeline, name, sample=PERCENT) for name in ("e1", "e2")]
    users, orders = (config["name"] for config in pipeline.collections)
    member = _user(pipeline, sampled=True)
    user_batch = TargetBatch(worker.context(users), worker.environment_targets(users),
                             {encode_id(member): "insert"})
    user_batch.apply_main()
    user_batch.apply_environments()
    order = pipeline.prod(1).insert_one({"orderNo": 1, "customerId": member}).inserted_id

    production_finds.clear()
    batch = TargetBatch(worker.context(orders), worker.environment_targets(orders),
                        {encode_id(order): "insert"})
    batch.apply_main()
    done = batch.apply_environments()
    assert all(result is not None and result.outcomes["created"] == 1
               for result in done.values()), done
    assert all(env_copies(pipeline, environment, 1).find_one({"deleted": False})
               for environment in environments)
    # The batch's read, then one confirming read for both environments.
    assert len(production_finds) == 2, production_finds
    worker.close()


def test_the_orders_left_outside_are_planned_without_looking_their_keys_up(
        pipeline_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An order whose customer has no copy is planned from its own copy alone: only the
    member's business key is looked up in staging (in a 5 % environment, one key in twenty;
    looking every key up cost each environment's apply a second query per list of pids)."""
    listener = CommandLog()

    def listened(settings: Any, **options: Any) -> Any:
        return connect_staging(settings, event_listeners=[listener], **options)

    monkeypatch.setattr(runtime_module, "connect_staging", listened)
    pipeline = sampled_users_and_their_orders(pipeline_factory)
    worker = Runtime(pipeline.settings)
    ensure_indexes(worker.staging, pipeline.settings)
    users, orders = (worker.context(config["name"]) for config in pipeline.collections)
    member, other = _user(pipeline, sampled=True), _user(pipeline, sampled=False)
    apply_changes(users, {encode_id(member): "insert", encode_id(other): "insert"})
    inside = pipeline.prod(1).insert_one({"orderNo": 0, "customerId": member}).inserted_id
    outside = pipeline.prod(1).insert_many(
        [{"orderNo": n, "customerId": other} for n in range(1, 31)]).inserted_ids

    listener.clear()
    result = apply_changes(orders, {encode_id(pid): "insert" for pid in [inside, *outside]})
    assert result.outcomes["created"] == 1 and result.outcomes["outside"] == 30, result.outcomes
    keys = [value for query in listener.find_filters() if KEY_FIELD in query
            for value in query[KEY_FIELD]["$in"]]
    assert len(keys) == 1, keys
    worker.close()

