"""Session-wide real services: a MongoDB pair (see tests/support/backends.py) and Redis."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from stagesync.cli.local_servers import LocalServer, redis_answers, start_redis
from stagesync.deployments.in_lists import configure as configure_in_lists

from tests.support.backends import MongoPair, start_pair
from tests.support.pipeline import Pipeline, collection_config

MACHINE_REDIS = "redis://127.0.0.1:6379"
# STAGESYNC_TEST_REDIS_DB moves the first database, so that test runs of several checkouts on
# one machine never share kombu's per-database keys.
TEST_REDIS_DB = int(os.environ.get("STAGESYNC_TEST_REDIS_DB", "11"))


# scripts/test runs the suite in two phases: STAGESYNC_SOAK=skip (everything but the soak), then
# STAGESYNC_SOAK=only. The soak keeps both test servers busy for about a quarter of an hour; beside
# it, the other integration tests' waits ran out (a resync coordinator overran its soft time
# limit again and again while a reference waited in the queue).
SOAK_PHASE = os.environ.get("STAGESYNC_SOAK", "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SOAK_PHASE not in ("skip", "only"):
        return
    keep = [item for item in items
            if (item.get_closest_marker("soak") is not None) == (SOAK_PHASE == "only")]
    dropped = [item for item in items if item not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_report_header() -> list[str]:
    import shutil

    if os.environ.get("STAGESYNC_TEST_PROD_URI"):
        backend = "external deployments (STAGESYNC_TEST_*_URI)"
    elif shutil.which("mongod"):
        backend = "mongod replica sets started by the fixtures"
    else:
        backend = "two SecantusDB servers (no mongod on PATH)"
    return [f"stagesync MongoDB backend: {backend}"]


# Product code the tests call in this process looks documents up in `$in` lists of the test
# server's length, as the processes the tests start do (`in_list_max: 200` in their config):
# SecantusDB's `$in` is quadratic in the list's length (README, in_list_max).
TEST_SERVER_IN_LIST_MAX = 200
configure_in_lists(TEST_SERVER_IN_LIST_MAX)


@pytest.fixture(scope="session")
def mongo_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoPair]:
    pair = start_pair(tmp_path_factory.mktemp("mongo"))
    yield pair
    pair.stop()


@pytest.fixture(scope="session")
def redis_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The machine's Redis when it answers, else a real redis-server started here."""
    if redis_answers(MACHINE_REDIS):
        yield MACHINE_REDIS
        return
    server: LocalServer = start_redis(workdir=tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{server.port}"
    server.stop()


@pytest.fixture
def redis_url(redis_base: str) -> str:
    """A Redis database for the tests. Never flushed: every test uses collection names of its
    own (so its own queues and keys), and other test sessions may share the database.

    Each pytest-xdist process gets a database of its own (11, 12, ...): kombu keeps some keys
    for all queues of a database (the unacknowledged index and its restore lock), and a test
    that kills workers must not wait on another process's."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    database = TEST_REDIS_DB + int(worker.removeprefix("gw"))
    if database > 15:
        raise pytest.UsageError(f"{worker}: Redis database {database} does not exist (0-15)")
    return f"{redis_base}/{database}"


@pytest.fixture
def pipeline_factory(mongo_pair: MongoPair, redis_url: str, tmp_path: Path
                     ) -> Iterator[object]:
    made: list[Pipeline] = []

    def make(collections: list[dict[str, object]] | None = None, **extra: object) -> Pipeline:
        workdir = tmp_path / f"p{len(made)}"
        workdir.mkdir()
        pipeline = Pipeline(mongo_pair, redis_url, workdir,
                            collections or [collection_config("orders")], extra)
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        pipeline.stop()


@pytest.fixture
def pipeline(pipeline_factory: object) -> Pipeline:
    return pipeline_factory()  # type: ignore[operator,no-any-return]
