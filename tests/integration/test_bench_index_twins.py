"""The benchmark's workaround for partial indexes (`bench.product.add_index_twins`).

The apply path looks staging documents up by `_sync.pid` and `_sync.key` with `$in`, served
on MongoDB by the product's unique indexes whose `partialFilterExpression` is
`{$exists: true}` (an equality on a non-null value implies it). SecantusDB never uses a
partial index, so those lookups scan the collection once per `$in` value and the benchmark
measured the scans, not the product. The bench adds a plain twin of each index; this checks
that the server's planner then serves both lookups from an index (on MongoDB it does either
way), with the product's own indexes and query shape.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.collation import Collation
from pymongo.errors import DuplicateKeyError

from bench.product import add_index_twins
from bench.systems import BenchContext
from deployments.staging_indexes import ensure, target_indexes
from rules.sync_meta import KEY_FIELD, PID_FIELD, SYNC
from settings.collection import CollectionSettings
from tests.support.backends import MongoPair

SIMPLE = Collation(locale="simple")


def _stages(plan: Any) -> list[str]:
    """Every `stage` named anywhere in an explain plan (classic or SBE layout)."""
    if isinstance(plan, dict):
        found = [str(plan["stage"])] if "stage" in plan else []
        return found + [stage for value in plan.values() for stage in _stages(value)]
    if isinstance(plan, list):
        return [stage for item in plan for stage in _stages(item)]
    return []


def test_pid_and_key_lookups_of_the_apply_path_use_an_index_once_twins_are_added(
    mongo_pair: MongoPair, tmp_path: Path,
) -> None:
    tag = uuid.uuid4().hex[:8]
    settings = CollectionSettings(name=f"twins_{tag}", source=f"prod_{tag}.orders",
                                  target=f"bench_twins_{tag}.orders",
                                  business_key=["userEmail", "accountId"])
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_pair.staging_uri)
    try:
        target = client[settings.target_db][settings.target_collection]
        ensure(target, target_indexes(settings))
        target.insert_many([
            {"userEmail": f"u{i}@corp.test", "accountId": i, "deleted": False,
             SYNC: {"pid": f"pid-{i}", "key": f"key-{i}", "v": 1}}
            for i in range(300)
        ])
        ctx = BenchContext("burst", "loopback", mongo_pair.prod_uri, mongo_pair.staging_uri,
                           mongo_pair.prod_uri, mongo_pair.staging_uri, tmp_path, 60.0,
                           target=settings.target)

        add_index_twins(ctx)

        projection = {SYNC: 1, settings.soft_delete_field: 1}  # as `tasks.apply.staging_io` reads
        for field, values in ((PID_FIELD, [f"pid-{i}" for i in range(0, 300, 7)]),
                              (KEY_FIELD, [f"key-{i}" for i in range(0, 300, 11)])):
            query = {field: {"$in": values}}
            plan = target.find(query, projection, collation=SIMPLE).explain()["queryPlanner"]
            stages = _stages(plan["winningPlan"])
            assert any("IXSCAN" in stage for stage in stages), (field, stages)
            found = list(target.find(query, projection, collation=SIMPLE))
            assert len(found) == len(values)
        # The product's unique indexes still hold: a second document for a pid is refused.
        with pytest.raises(DuplicateKeyError):
            target.insert_one({SYNC: {"pid": "pid-3", "key": "key-new", "v": 1}})
    finally:
        client.drop_database(settings.target_db)
        client.close()
