"""The environment store on a real server: creation rules and compare-and-set transitions."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from pymongo import MongoClient
from stagesync.deployments.broker import ChangeSignal
from stagesync.protocol.names import ENVIRONMENTS_CHANGED_KEY
from stagesync.state.environments import (
    CREATING,
    DELETING,
    FROZEN,
    LIVE,
    EnvironmentStore,
    NameTaken,
    NoSuchEnvironment,
    ReadOnlyStore,
    TooManyEnvironments,
)

from tests.support.backends import MongoPair


@pytest.fixture
def signal(redis_url: str) -> Iterator[ChangeSignal]:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield ChangeSignal(client, ENVIRONMENTS_CHANGED_KEY)
    client.close()


@pytest.fixture
def store(mongo_pair: MongoPair, signal: ChangeSignal) -> Iterator[EnvironmentStore]:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_pair.staging_uri)
    name = f"st_env_{uuid.uuid4().hex[:8]}"
    store = EnvironmentStore(client[name], signal)
    store.ensure_indexes()
    yield store
    client.drop_database(name)
    client.close()


def test_create_records_databases_and_lifetime(store: EnvironmentStore) -> None:
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    made = store.create("pr-1", {"s": "s__pr-1"}, ttl=timedelta(hours=2), sample=10.0,
                        limit=5, now=now)
    assert made.state == CREATING
    found = store.require("pr-1")
    assert found.databases == {"s": "s__pr-1"}
    assert found.created_at == now and found.expires_at == now + timedelta(hours=2)
    assert found.sample == 10.0
    assert [env.name for env in store.all()] == ["pr-1"]
    with pytest.raises(NoSuchEnvironment, match="no environment named 'nope'"):
        store.require("nope")


def test_a_name_taken_and_one_too_many_are_refused_by_name(store: EnvironmentStore) -> None:
    store.create("a", {}, ttl=None, sample=None, limit=2)
    with pytest.raises(NameTaken, match="'a' already exists"):
        store.create("a", {}, ttl=None, sample=None, limit=2)
    store.create("b", {}, ttl=None, sample=None, limit=2)
    with pytest.raises(TooManyEnvironments, match=r"2 exist and environments.max is 2"):
        store.create("c", {}, ttl=None, sample=None, limit=2)
    assert store.get("c") is None  # taken back
    assert store.require("a").expires_at is None


def test_racing_creates_never_pass_the_limit(store: EnvironmentStore) -> None:
    outcomes: list[str] = []

    def create(name: str) -> None:
        try:
            store.create(name, {}, ttl=None, sample=None, limit=3)
            outcomes.append("made")
        except TooManyEnvironments:
            outcomes.append("refused")

    threads = [threading.Thread(target=create, args=(f"e{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.all()) == outcomes.count("made") <= 3
    assert outcomes.count("made") >= 1


def test_transitions_are_compare_and_set(store: EnvironmentStore) -> None:
    store.create("t", {}, ttl=None, sample=None, limit=5)
    assert store.transition("t", [CREATING], LIVE)
    assert not store.transition("t", [CREATING], LIVE)  # already moved on
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(
        store.transition("t", [LIVE], FROZEN))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1
    assert store.require("t").state == FROZEN
    assert not store.remove("t")  # only a record in `deleting` is removed
    assert store.transition("t", [FROZEN], DELETING)
    assert [env.name for env in store.all()] == []  # `deleting` is never listed
    assert store.remove("t") and store.get("t") is None


def test_expired_and_resyncs(store: EnvironmentStore) -> None:
    past = datetime.now(UTC) - timedelta(hours=2)
    store.create("old", {}, ttl=timedelta(hours=1), sample=None, limit=5, now=past)
    store.create("new", {}, ttl=timedelta(hours=1), sample=None, limit=5)
    store.create("forever", {}, ttl=None, sample=None, limit=5)
    assert [env.name for env in store.expired()] == ["old"]
    store.set_resyncs("new", {"orders": "r1"})
    assert store.require("new").resyncs == {"orders": "r1"}


def test_every_write_is_announced_and_a_store_without_signal_writes_nothing(
        store: EnvironmentStore, signal: ChangeSignal) -> None:
    """The workers learn of a change from the token alone (`EnvironmentCache`): each write
    that they act on replaces it; a store opened to read refuses before it writes."""
    tokens = [signal.token()]

    def announced() -> bool:
        tokens.append(signal.token())
        return tokens[-1] != tokens[-2]

    store.create("pr-1", {}, ttl=None, sample=None, limit=1)
    assert announced()
    with pytest.raises(TooManyEnvironments):
        store.create("pr-2", {}, ttl=None, sample=None, limit=1)
    assert announced()  # a cache that read it meanwhile forgets it
    assert store.transition("pr-1", [CREATING], LIVE) and announced()
    assert store.freeze("pr-1", None, 0) and announced()
    store.count_backlog("pr-1", 2, limit=5)
    assert not announced()  # a count, not the overflow: the workers read nothing of it
    store.count_backlog("pr-1", 4, limit=5)
    assert store.require("pr-1").overflowed and announced()
    assert store.transition("pr-1", [FROZEN], DELETING) and announced()
    assert store.remove("pr-1") and announced()

    store.announce()  # a command run again after a process died before announcing
    assert announced()

    reader = EnvironmentStore(store.records.database)
    with pytest.raises(ReadOnlyStore):
        reader.create("pr-3", {}, ttl=None, sample=None, limit=5)
    with pytest.raises(ReadOnlyStore):
        reader.announce()
    assert reader.get("pr-3") is None and not announced()
