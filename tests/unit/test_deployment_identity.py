"""What tells two deployments apart, from `hello`/`serverStatus` answers (deployments.identity).

The answers are shaped like the MongoDB manual's examples for a replica-set member, a `mongos`
and a standalone server; the guard's I/O around them is tested in
tests/integration/test_deployment_guard.py.
"""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from hypothesis import given
from hypothesis import strategies as st
from stagesync.deployments.identity import (
    ReplicaSet,
    compare,
    from_hello,
    shared_hosts,
    uri_hosts,
    with_status,
)


def member(set_name: str, hosts: list[str], me: str | None = None,
           process: ObjectId | None = None) -> dict[str, Any]:
    return {"isWritablePrimary": True, "setName": set_name, "hosts": hosts,
            "me": me or hosts[0], "primary": hosts[0],
            "topologyVersion": {"processId": process or ObjectId(), "counter": 0}}


def mongos(process: ObjectId | None = None) -> dict[str, Any]:
    return {"isWritablePrimary": True, "msg": "isdbgrid",
            "topologyVersion": {"processId": process or ObjectId(), "counter": 0}}


def standalone(process: ObjectId | None = None) -> dict[str, Any]:
    return {"isWritablePrimary": True,
            "topologyVersion": {"processId": process or ObjectId(), "counter": 0}}


def sharding(config: str) -> dict[str, Any]:
    return {"host": "h", "pid": 1, "sharding": {"configsvrConnectionString": config}}


# -- connection strings ---------------------------------------------------------------------


def test_uri_hosts_are_normalised_without_asking_anyone() -> None:
    assert uri_hosts("mongodb://u:p%40ss@Prod-1,prod-2:27018/db?replicaSet=rs0") == {
        "prod-1:27017", "prod-2:27018"}
    assert uri_hosts("mongodb+srv://user:pw@Cluster0.ab.mongodb.net/?retryWrites=true") == {
        "srv:cluster0.ab.mongodb.net"}


def test_identical_or_overlapping_host_lists_are_shared() -> None:
    prod = "mongodb://reader:x@a:27017,b:27017/?replicaSet=rs0"
    assert shared_hosts(prod, "mongodb://w:y@B,a/?replicaSet=rs0") == {"a:27017", "b:27017"}
    assert shared_hosts(prod, "mongodb://b:27017/?directConnection=true") == {"b:27017"}
    assert shared_hosts(prod, "mongodb://c:27017/?replicaSet=rs0") == frozenset()
    assert shared_hosts("mongodb+srv://x.example.net/", "mongodb+srv://X.example.net/?tls=1")


# -- replica sets ---------------------------------------------------------------------------


def test_two_members_of_one_replica_set_are_one_deployment() -> None:
    """Different processes (a direct connection to each member), one replica set."""
    hosts = ["db-1:27017", "db-2:27017", "db-3:27017"]
    verdict = compare(from_hello(member("rs0", hosts, me="db-1:27017")),
                      from_hello(member("rs0", hosts, me="db-2:27017")))
    assert verdict is not None and verdict.same and "rs0" in verdict.reason


def test_a_replica_set_name_alone_never_makes_two_deployments_one() -> None:
    # SecantusDB reports setName "secantus" on every server; real sets are often all "rs0".
    verdict = compare(from_hello(member("secantus", ["127.0.0.1:4001"])),
                      from_hello(member("secantus", ["127.0.0.1:4002"])))
    assert verdict is not None and not verdict.same


@given(st.text(min_size=1, max_size=8),
       st.sets(st.integers(1, 500), min_size=1, max_size=4),
       st.sets(st.integers(501, 1000), min_size=1, max_size=4))
def test_same_name_and_disjoint_members_are_distinct(
    name: str, first: set[int], second: set[int]
) -> None:
    one = from_hello(member(name, [f"h{n}:27017" for n in sorted(first)]))
    two = from_hello(member(name, [f"h{n}:27017" for n in sorted(second)]))
    verdict = compare(one, two)
    assert verdict is not None and not verdict.same


def test_one_server_process_is_one_deployment_whatever_it_reports() -> None:
    process = ObjectId()
    verdict = compare(from_hello(standalone(process)), from_hello(standalone(process)))
    assert verdict is not None and verdict.same and str(process) in verdict.reason


# -- sharded clusters -----------------------------------------------------------------------


def test_two_mongos_of_one_cluster_are_one_deployment_once_serverstatus_answers() -> None:
    first, second = from_hello(mongos()), from_hello(mongos())
    assert compare(first, second) is None  # hello cannot decide: processIds name one mongos
    config = "cfgRS/cfg-1:27019,cfg-2:27019,cfg-3:27019"
    verdict = compare(with_status(first, sharding(config)), with_status(second, sharding(config)))
    assert verdict is not None and verdict.same and "cfgRS" in verdict.reason


def test_load_balanced_connections_are_treated_as_a_cluster_even_without_isdbgrid() -> None:
    hello = standalone()
    assert from_hello(hello, load_balanced=True).kind == "sharded"
    # A cluster behind a load balancer and another server process, a standalone: never one
    # deployment (a standalone belongs to no cluster). Asserting only "a verdict" would pass
    # the wrong one too.
    verdict = compare(from_hello(hello, load_balanced=True), from_hello(standalone()))
    assert verdict is not None and not verdict.same
    assert "standalone" in verdict.reason
    # The same server process, reached once through the load balancer: one deployment.
    verdict = compare(from_hello(hello, load_balanced=True), from_hello(hello))
    assert verdict is not None and verdict.same


def test_clusters_with_different_config_servers_are_distinct() -> None:
    first = with_status(from_hello(mongos()), sharding("cfgRS/a-cfg:27019"))
    second = with_status(from_hello(mongos()), sharding("cfgRS/b-cfg:27019"))
    verdict = compare(first, second)
    assert verdict is not None and not verdict.same


def test_a_shard_of_the_production_cluster_is_production() -> None:
    config = "cfg/c1:27019,c2:27019"
    cluster = with_status(from_hello(mongos()), sharding(config))
    shard = with_status(from_hello(member("shard01", ["s1:27018"])), sharding(config))
    verdict = compare(cluster, shard)
    assert verdict is not None and verdict.same


def test_the_config_servers_themselves_are_the_cluster() -> None:
    cluster = with_status(from_hello(mongos()), sharding("cfg/c1:27019,c2:27019"))
    config_member = from_hello({**member("cfg", ["c1:27019", "c2:27019"]), "configsvr": 2})
    verdict = compare(cluster, config_member)
    assert verdict is not None and verdict.same


def test_a_cluster_against_a_replica_set_needs_to_know_the_set_is_no_shard() -> None:
    cluster = with_status(from_hello(mongos()), sharding("cfg/c1:27019"))
    replica_set = from_hello(member("rs-staging", ["st:27017"]))
    assert compare(cluster, replica_set) is None  # it could be one of the cluster's shards
    no_sharding = with_status(replica_set, {"host": "st", "pid": 7})
    verdict = compare(cluster, no_sharding)
    assert verdict is not None and not verdict.same


def test_a_refused_serverstatus_teaches_nothing() -> None:
    first = from_hello(mongos())
    assert with_status(first, None) == first
    assert compare(with_status(first, None), from_hello(mongos())) is None


def test_a_standalone_belongs_to_no_other_deployment() -> None:
    verdict = compare(from_hello(standalone()), from_hello(mongos()))
    assert verdict is not None and not verdict.same


def test_config_connection_string_parsing() -> None:
    parsed = ReplicaSet.from_connection_string("cfgRS/CFG-1:27019,cfg-2")
    assert parsed == ReplicaSet("cfgRS", frozenset({"cfg-1:27019", "cfg-2:27017"}))
