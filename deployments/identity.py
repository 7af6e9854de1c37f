"""Which deployment a connection reaches, from the answers of read-only commands. No I/O.

What tells two deployments apart depends on what answered (MongoDB manual, `hello` and
`serverStatus`):
- one server process: `hello.topologyVersion.processId` (4.4+), unique per process; the same
  processId through both connections is one server, whatever the host names;
- a replica set: its name (`hello.setName`) together with its members (`hosts`, `passives`,
  `arbiters`, `me`). Never the name alone: names repeat across deployments (`rs0`, and
  SecantusDB reports `secantus` on every server), while one member host cannot belong to two;
- a sharded cluster, reached through `mongos` (`hello.msg == "isdbgrid"`) or a load balancer:
  each connection may land on a different `mongos` process, so processIds prove nothing. The
  whole cluster shares its config servers, which `serverStatus.sharding
  .configsvrConnectionString` names (`cfgRS/cfg1:27019,...`) on every `mongos` and shard member.
  `hello` never tells that, and `serverStatus` needs the `serverStatus` privilege
  (`clusterMonitor`), so it is asked only when `hello` cannot decide.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import unquote

from pymongo.errors import ConfigurationError, InvalidURI
from pymongo.uri_parser import split_hosts

DEFAULT_PORT = 27017
Kind = Literal["sharded", "replica_set", "standalone"]


def uri_hosts(uri: str) -> frozenset[str]:
    """The hosts a connection string names, as lower-case `host:port`, without asking DNS or
    any server. A `mongodb+srv://` URI names one SRV record, kept as `srv:<name>`."""
    scheme, _, rest = uri.partition("://")
    authority = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    if not authority:
        return frozenset()
    if scheme == "mongodb+srv":
        return frozenset({f"srv:{authority.lower()}"})
    try:
        nodes = split_hosts(unquote(authority), default_port=DEFAULT_PORT)
    except (ConfigurationError, InvalidURI, ValueError):
        return frozenset()  # the client will say what is wrong; the servers decide
    return frozenset(_host(host, port) for host, port in nodes)


def shared_hosts(first_uri: str, second_uri: str) -> frozenset[str]:
    """Hosts both connection strings name: one server cannot be in two deployments."""
    return uri_hosts(first_uri) & uri_hosts(second_uri)


@dataclass(frozen=True)
class ReplicaSet:
    name: str
    hosts: frozenset[str]

    def is_same(self, other: ReplicaSet) -> bool:
        """Same name and at least one member in common; a name alone proves nothing."""
        return self.name == other.name and bool(self.hosts & other.hosts)

    @classmethod
    def from_connection_string(cls, text: str) -> ReplicaSet | None:
        """`cfgRS/cfg1:27019,cfg2:27019` (or a bare host list) as a replica set."""
        name, slash, hosts = text.partition("/")
        if not slash:
            name, hosts = "", text
        members = frozenset(_host_text(h) for h in hosts.split(",") if h.strip())
        return cls(name, members) if members else None


@dataclass(frozen=True)
class Identity:
    kind: Kind
    # The one server process that answered `hello`.
    process: str | None
    # The replica set that answered (replica-set members only).
    replica_set: ReplicaSet | None
    # The sharded cluster this belongs to, by its config servers; from `serverStatus` (or
    # `hello` on a config server itself).
    config_servers: ReplicaSet | None = None
    # Whether `serverStatus` answered, so a missing `config_servers` means "in no cluster".
    status_known: bool = False
    # Before `topologyVersion` (MongoDB < 4.4): `serverStatus` host and pid.
    host_pid: tuple[str, int] | None = None

    @property
    def cluster_known(self) -> bool:
        """Whether we know which sharded cluster, if any, this belongs to."""
        if self.kind == "sharded":
            return self.config_servers is not None
        if self.kind == "replica_set":
            return self.status_known or self.config_servers is not None
        return True

    def replica_sets(self) -> list[ReplicaSet]:
        return [s for s in (self.replica_set, self.config_servers) if s is not None]


def from_hello(hello: Mapping[str, Any], load_balanced: bool = False) -> Identity:
    topology = hello.get("topologyVersion")
    process = None
    if isinstance(topology, Mapping) and topology.get("processId") is not None:
        process = str(topology["processId"])
    if load_balanced or hello.get("msg") == "isdbgrid":
        return Identity("sharded", process, None)
    name = hello.get("setName")
    if not isinstance(name, str) or not name:
        return Identity("standalone", process, None)
    members = [*_strings(hello.get("hosts")), *_strings(hello.get("passives")),
               *_strings(hello.get("arbiters")), *_strings([hello.get("me")])]
    replica_set = ReplicaSet(name, frozenset(_host_text(m) for m in members))
    # A config server's replica set is the identity of its whole cluster.
    config_servers = replica_set if hello.get("configsvr") else None
    return Identity("replica_set", process, replica_set, config_servers)


def with_status(identity: Identity, status: Mapping[str, Any] | None) -> Identity:
    """Add what `serverStatus` tells (None: the server refused it, nothing learnt)."""
    if status is None:
        return identity
    sharding = status.get("sharding")
    config_servers = identity.config_servers
    if isinstance(sharding, Mapping) and isinstance(
            sharding.get("configsvrConnectionString"), str):
        config_servers = ReplicaSet.from_connection_string(
            sharding["configsvrConnectionString"]) or config_servers
    host_pid = identity.host_pid
    if status.get("host") and status.get("pid") is not None:
        host_pid = (str(status["host"]), int(status["pid"]))
    return replace(identity, config_servers=config_servers, status_known=True,
                   host_pid=host_pid)


@dataclass(frozen=True)
class Verdict:
    same: bool
    reason: str


def compare(first: Identity, second: Identity) -> Verdict | None:
    """Same deployment, different ones, or None when these answers cannot tell."""
    if first.process is not None and first.process == second.process:
        return Verdict(True, f"both connections reach the server with processId "
                             f"{first.process}")
    for mine in first.replica_sets():
        for theirs in second.replica_sets():
            if mine.is_same(theirs):
                common = ", ".join(sorted(mine.hosts & theirs.hosts))
                return Verdict(True, f"both belong to replica set {mine.name!r} ({common})")
    if "standalone" in (first.kind, second.kind):
        if first.kind != second.kind:
            return Verdict(False, "a standalone server belongs to no other deployment")
        if first.process is not None and second.process is not None:
            return Verdict(False, "two different standalone server processes")
        if first.host_pid is not None and second.host_pid is not None:
            return Verdict(first.host_pid == second.host_pid, "serverStatus host and pid")
        return None
    if "sharded" in (first.kind, second.kind):
        if first.cluster_known and second.cluster_known:
            return Verdict(False, "different sharded clusters (config servers differ)")
        return None
    return Verdict(False, "different replica sets (name or members differ)")


def _strings(values: Any) -> Iterable[str]:
    if isinstance(values, list | tuple):
        return [v for v in values if isinstance(v, str) and v]
    return []


def _host_text(text: str) -> str:
    host, _, port = text.strip().rpartition(":")
    if not host or not port.isdigit() or text.strip().endswith("]"):
        return _host(text.strip(), DEFAULT_PORT)
    return _host(host, int(port))


def _host(host: str, port: int | None) -> str:
    return f"{host.lower()}:{port or DEFAULT_PORT}"
