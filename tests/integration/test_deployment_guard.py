"""The same-deployment guard at its call site: real clients, real servers, and, where the test
server cannot produce the case (`mongos`, a multi-member replica set, a refused
`serverStatus`), the answers of one command replaced by what MongoDB answers there.

End-to-end refusals by `check`, `watch` and the worker are in test_pii_and_guard.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.errors import OperationFailure
from stagesync.deployments.guard import SameDeploymentError, assert_distinct_deployments
from stagesync.deployments.production import ProductionReader
from stagesync.deployments.staging import connect_staging
from stagesync.state.database import state_database
from stagesync.state.guard_markers import GuardMarkers

from tests.support.pipeline import Pipeline, collection_config

Answer = Callable[[], dict[str, Any]]
CONFIG_SERVERS = "cfgRS/cfg-1.corp.test:27019,cfg-2.corp.test:27019,cfg-3.corp.test:27019"


class ScriptedAdmin:
    def __init__(self, real: Any, answers: dict[str, Answer]) -> None:
        self._real = real
        self._answers = answers
        self.asked: list[str] = []

    def command(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.asked.append(name)
        if name in self._answers:
            return self._answers[name]()
        return self._real.command(name, *args, **kwargs)


class ScriptedStaging:
    """The real staging client, except for the admin commands scripted here."""

    def __init__(self, real: MongoClient[dict[str, Any]], answers: dict[str, Answer]) -> None:
        self._real = real
        self.admin = ScriptedAdmin(real.admin, answers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def __getitem__(self, name: str) -> Any:
        return self._real[name]


def markers(staging: MongoClient[dict[str, Any]], pipeline: Pipeline) -> GuardMarkers:
    """The guard's marker store, through the staging client the guard is given (as the
    watcher and the worker do)."""
    return GuardMarkers(state_database(staging, pipeline.settings.staging))


def mongos_hello() -> dict[str, Any]:
    """A `mongos` answers `hello` with `msg: isdbgrid` and its own processId."""
    return {"isWritablePrimary": True, "msg": "isdbgrid", "maxWireVersion": 21, "ok": 1.0,
            "topologyVersion": {"processId": ObjectId(), "counter": 0}}


def mongos_status() -> dict[str, Any]:
    return {"host": "mongos-a", "pid": 4242, "process": "mongos", "ok": 1.0,
            "sharding": {"configsvrConnectionString": CONFIG_SERVERS}}


def unauthorized() -> dict[str, Any]:
    raise OperationFailure("not authorized on admin to execute command { serverStatus: 1 }",
                           code=13)


@pytest.fixture
def clients(pipeline_factory: Any, mongo_pair: Any, request: pytest.FixtureRequest
            ) -> Iterator[tuple[Pipeline, ProductionReader, MongoClient[dict[str, Any]]]]:
    staging_uri = getattr(request, "param", None)
    extra = {}
    if staging_uri == "production-under-another-name":
        if "127.0.0.1" not in mongo_pair.prod_uri:
            pytest.skip("production is not addressed as 127.0.0.1 here")
        extra = {"staging": {"uri": mongo_pair.prod_uri.replace("127.0.0.1", "localhost")}}
    pipeline: Pipeline = pipeline_factory([collection_config("orders")], **extra)
    settings = pipeline.settings
    production = ProductionReader(settings.prod)
    staging = connect_staging(settings.staging)
    yield pipeline, production, staging
    production.close()
    staging.close()


def test_two_mongos_of_one_cluster_are_refused(
    clients: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each connection reaches a different mongos (different processIds): the cluster's config
    servers, from serverStatus, say it is one deployment."""
    pipeline, production, staging = clients
    monkeypatch.setattr(production, "hello", mongos_hello)
    monkeypatch.setattr(production, "server_status", mongos_status)
    scripted = ScriptedStaging(staging, {"hello": mongos_hello, "serverStatus": mongos_status})
    with pytest.raises(SameDeploymentError, match="cfgRS"):
        assert_distinct_deployments(production, scripted,  # type: ignore[arg-type]
                                    pipeline.settings, markers(staging, pipeline))


def test_mongos_of_different_clusters_pass(
    clients: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline, production, staging = clients
    monkeypatch.setattr(production, "hello", mongos_hello)
    monkeypatch.setattr(production, "server_status", mongos_status)
    other = {**mongos_status(), "sharding": {"configsvrConnectionString": "cfgRS/other:27019"}}
    scripted = ScriptedStaging(staging, {"hello": mongos_hello, "serverStatus": lambda: other})
    assert_distinct_deployments(production, scripted,  # type: ignore[arg-type]
                                pipeline.settings, markers(staging, pipeline))
    assert not markers(staging, pipeline).leftovers()  # decided without the marker


@pytest.mark.parametrize("clients", ["production-under-another-name"], indirect=True)
def test_mongos_without_cluster_monitor_falls_back_to_the_marker(
    clients: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither hello nor a refused serverStatus can tell: the marker written to "staging" (here
    production itself, reached as localhost) is read back through production: refused."""
    pipeline, production, staging = clients
    monkeypatch.setattr(production, "hello", mongos_hello)
    monkeypatch.setattr(production, "server_status", unauthorized)
    scripted = ScriptedStaging(staging, {"hello": mongos_hello, "serverStatus": unauthorized})
    with pytest.raises(SameDeploymentError, match="marker"):
        assert_distinct_deployments(production, scripted,  # type: ignore[arg-type]
                                    pipeline.settings, markers(staging, pipeline))
    assert not markers(staging, pipeline).leftovers()  # removed at once


def test_two_members_of_one_replica_set_are_refused(
    clients: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Direct connections to two members of one replica set: different processIds, same set
    name and members."""
    pipeline, production, staging = clients
    hosts = ["db-1.corp.test:27017", "db-2.corp.test:27017", "db-3.corp.test:27017"]

    def member(me: str) -> Answer:
        return lambda: {"isWritablePrimary": me == hosts[0], "secondary": me != hosts[0],
                        "setName": "rs0", "hosts": hosts, "me": me, "primary": hosts[0],
                        "topologyVersion": {"processId": ObjectId(), "counter": 0}, "ok": 1.0}

    monkeypatch.setattr(production, "hello", member(hosts[1]))
    scripted = ScriptedStaging(staging, {"hello": member(hosts[0])})
    with pytest.raises(SameDeploymentError, match="rs0"):
        assert_distinct_deployments(production, scripted,  # type: ignore[arg-type]
                                    pipeline.settings, markers(staging, pipeline))


def test_hello_decides_two_replica_sets_and_production_never_sees_serverstatus(
    clients: Any,
) -> None:
    """The test pair as it is (two replica sets; on SecantusDB both named `secantus`, with
    different members): distinct by hello alone."""
    pipeline, production, staging = clients
    scripted = ScriptedStaging(staging, {})
    assert_distinct_deployments(production, scripted,  # type: ignore[arg-type]
                                pipeline.settings, markers(staging, pipeline))
    assert "serverStatus" not in production.commands.names
    assert "serverStatus" not in scripted.admin.asked
    assert production.commands.writes == set()
