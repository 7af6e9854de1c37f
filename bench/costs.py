"""What a system costs per change, apart from the test server's speed: CPU, wire, writes.

Why: on SecantusDB every write pays each index of the document, in Python, on one core, so the
throughput rows mostly measure the server. What a user pays on MongoDB is the CPU of the
system's own processes (how many processes to run), the messages and bytes on the wire (round
trips), and the documents written in staging. Each is read here at the start and at the end of
a measurement, and reported per 1,000 changes (or documents) and as a ratio to the baselines
of the same run.

- CPU: user + system seconds from the OS (psutil), per process. Pool children come and go, so
  a process tree is read whole at both ends: each live member's own time, plus the time of the
  children it has reaped (`children_user` / `children_system`: the kernel adds an exited child's
  time, with its own reaped children's, to its parent when the parent waits for it). The sum of
  both over the tree grows monotonically and its difference is exact, however many children
  exited in between (`tree_delta`); what the live members do not account for is reported as
  "exited children". The runner's own reaped children are the commands it ran while measuring
  (`stagesync resync --wait`, the copy baseline): they are the row "command".
- Wire: the delay proxies' counters (messages by their 16-byte headers, bytes), each way, at
  2 ms only (`bench.network`: at loopback there is no proxy and no count).
- Documents written: entries of staging's `local.oplog.rs` since the start, by namespace and
  operation (SecantusDB keeps one per document written, as MongoDB does).
- Commands: staging's `serverStatus.opcounters` writes (insert/update/delete commands; the
  runner's probes only read staging) and production's reads (query/getmore; the runner only
  writes production).
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from bson import Timestamp
from pymongo import MongoClient

# Roles that are not the system under test: the servers, Redis and the proxies get rows of
# their own; the runner's own time (seeding, probing) is the harness's.
INFRA_ROLES = ("prod-server", "staging-server", "redis", "proxy-prod", "proxy-staging")
COMMAND_ROLE = "command"  # the runner's children reaped while measuring
STAGING_WRITE_COUNTERS = ("insert", "update", "delete")
PROD_READ_COUNTERS = ("query", "getmore")
WIRE_FIELDS = ("messages_up", "bytes_up", "messages_down", "bytes_down")


# -- CPU ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProcCpu:
    """One process at one instant: its own CPU seconds and those of its reaped children."""

    pid: int
    started: float  # create time: a pid reused by another process is another process
    own: float
    children: float

    @property
    def ident(self) -> tuple[int, float]:
        return (self.pid, self.started)


def sample_tree(pid: int) -> list[ProcCpu]:
    """`pid` and every live descendant (zombies included: their time is still theirs)."""
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    out = []
    for member in members:
        with contextlib.suppress(psutil.Error):
            times = member.cpu_times()
            out.append(ProcCpu(member.pid, member.create_time(), times.user + times.system,
                               times.children_user + times.children_system))
    return out


@dataclass(frozen=True)
class TreeDelta:
    """CPU seconds a process tree spent between two samples."""

    root: float  # the root process itself
    members: dict[int, float]  # descendants alive at the end, by pid (in pid order)
    exited: float  # children that exited in between (through their parents' counters)

    @property
    def total(self) -> float:
        return self.root + sum(self.members.values()) + self.exited


def tree_delta(before: Sequence[ProcCpu], after: Sequence[ProcCpu], root_pid: int) -> TreeDelta:
    """Exact per-tree CPU between two samples: the total is the change of the sum of every
    member's own and reaped-children time (an exiting member moves its total into its parent's
    children counter, so the sum never drops); members alive at the end get their own share
    (all of it if they started after `before`), and the rest is the exited children's."""
    old = {p.ident: p for p in before}
    total = sum(p.own + p.children for p in after) - sum(p.own + p.children for p in before)
    root = 0.0
    members: dict[int, float] = {}
    for proc in sorted(after, key=lambda p: p.pid):
        previous = old.get(proc.ident)
        spent = proc.own - (previous.own if previous else 0.0)
        if proc.pid == root_pid:
            root = spent
        else:
            members[proc.pid] = spent
    exited = total - root - sum(members.values())
    return TreeDelta(root, members, max(exited, 0.0))


def sample_roles(roles: Mapping[str, int]) -> dict[str, list[ProcCpu]]:
    return {role: sample_tree(pid) for role, pid in roles.items()}


def system_seconds(rows: Mapping[str, float]) -> float:
    """CPU seconds of the process rows that belong to the system under test."""
    return sum(spent for row, spent in rows.items() if is_system_row(row))


def runner_children(pid: int) -> float:
    """CPU seconds of the children the runner has waited for (the commands it ran)."""
    with contextlib.suppress(psutil.Error):
        times = psutil.Process(pid).cpu_times()
        return times.children_user + times.children_system
    return 0.0


def process_rows(
    roles: Mapping[str, int],
    before: Mapping[str, Sequence[ProcCpu]],
    after: Mapping[str, Sequence[ProcCpu]],
) -> dict[str, float]:
    """CPU seconds per process row: `role`, `role child N` for each descendant alive at the
    end (numbered in pid order), `role exited children` when some exited meanwhile."""
    rows: dict[str, float] = {}
    for role, pid in roles.items():
        delta = tree_delta(before.get(role, []), after.get(role, []), pid)
        rows[role] = delta.root
        for n, spent in enumerate(delta.members.values(), start=1):
            rows[f"{role} child {n}"] = spent
        if delta.exited >= 0.005:
            rows[f"{role} exited children"] = delta.exited
    return rows


def role_of(row: str) -> str:
    """The role a process row belongs to (`worker-1 child 2` -> `worker-1`)."""
    for marker in (" child ", " exited children"):
        if marker in row:
            return row.split(marker)[0]
    return row


def is_system_row(row: str) -> bool:
    """Does this process row belong to the system under test (not a server, Redis, proxy)?"""
    return role_of(row) not in INFRA_ROLES


# -- the servers' side ------------------------------------------------------------------------
def oplog_position(client: MongoClient[Any]) -> Timestamp:
    """The timestamp of the newest oplog entry (0 when there is none)."""
    last = client.local["oplog.rs"].find_one({}, {"ts": 1}, sort=[("$natural", -1)])
    return last["ts"] if last else Timestamp(0, 0)


def oplog_writes(client: MongoClient[Any], since: Timestamp) -> dict[str, Counter[str]]:
    """Oplog entries after `since`, by namespace and operation (`i`, `u`, `d`; commands `c`
    and no-ops `n` left out: they write no document)."""
    out: dict[str, Counter[str]] = {}
    for group in client.local["oplog.rs"].aggregate([
        {"$match": {"ts": {"$gt": since}, "op": {"$in": ["i", "u", "d"]}}},
        {"$group": {"_id": {"ns": "$ns", "op": "$op"}, "n": {"$sum": 1}}},
    ]):
        out.setdefault(str(group["_id"]["ns"]), Counter())[str(group["_id"]["op"])] += int(
            group["n"])
    return out


def opcounters(client: MongoClient[Any]) -> dict[str, int]:
    return {k: int(v) for k, v in (client.admin.command("serverStatus").get("opcounters")
                                   or {}).items()}


def counter_delta(before: Mapping[str, Any], after: Mapping[str, Any],
                  keys: Iterable[str]) -> dict[str, int]:
    """`after - before` for the given numeric keys (missing = 0)."""
    return {k: int(after.get(k, 0) or 0) - int(before.get(k, 0) or 0) for k in keys}


# -- re-planning, from the workers' own log lines ----------------------------------------------
def apply_rounds(logs: Iterable[Path]) -> dict[str, int]:
    """How many applies the workers logged, and how many needed more than one planning round
    (a write lost a race on the version check or a unique index and was planned again)."""
    applies = replanned = extra_rounds = changes = 0
    for path in logs:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if '"applied"' not in line:
                    continue
                with contextlib.suppress(ValueError):
                    record = json.loads(line[line.index("{"):])
                    if record.get("message") != "applied":
                        continue
                    rounds = int(record.get("rounds") or 1)
                    applies += 1
                    changes += int(record.get("changes") or 0)
                    if rounds > 1:
                        replanned += 1
                        extra_rounds += rounds - 1
    return {"applies": applies, "replanned": replanned, "extra_rounds": extra_rounds,
            "changes": changes}


def batch_sizes(logs: Iterable[Path]) -> list[int]:
    """The number of changes of every apply the workers logged, in log order per worker: the
    published batch sizes (a message is one batch; a split batch logs its parts)."""
    sizes: list[int] = []
    for path in logs:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if '"applied"' not in line:
                    continue
                with contextlib.suppress(ValueError):
                    record = json.loads(line[line.index("{"):])
                    if record.get("message") == "applied":
                        sizes.append(int(record.get("changes") or 0))
    return sizes


# -- the figures ------------------------------------------------------------------------------
def per_k(value: float | None, units: int) -> float | None:
    """`value` per 1,000 units (changes or documents); None without units or value."""
    if value is None or units <= 0:
        return None
    return value * 1000 / units


def micros_per_unit(seconds: float | None, units: int) -> float | None:
    """CPU seconds as microseconds per unit."""
    if seconds is None or units <= 0:
        return None
    return seconds * 1e6 / units


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base <= 0:
        return None
    return value / base


@dataclass
class Costs:
    """Everything a row spent while measured (see the module doc)."""

    cpu: dict[str, float] = field(default_factory=dict)  # process row -> CPU seconds
    wire: dict[str, dict[str, Any]] = field(default_factory=dict)  # "prod"/"staging" -> counts
    written: dict[str, Counter[str]] = field(default_factory=dict)  # staging ns -> op -> n
    staging_ops: dict[str, int] = field(default_factory=dict)  # opcounters delta (writes)
    prod_ops: dict[str, int] = field(default_factory=dict)  # opcounters delta (reads)
    rounds: dict[str, int] = field(default_factory=dict)  # `apply_rounds` (stagesync only)
    batches: list[int] = field(default_factory=list)  # `batch_sizes` (stagesync only)
    seconds: float = 0.0  # wall time between the two readings
    # CPU seconds per second the system's own processes burnt idle just before (heartbeats,
    # polling, leases): a run made long by a slow server charges that to every change.
    idle_cpu_per_s: float | None = None

    def system_cpu(self) -> float:
        """CPU seconds of the system's own processes (watcher, workers, baseline, command)."""
        return sum(spent for row, spent in self.cpu.items() if is_system_row(row))

    def role_cpu(self, role: str) -> float:
        return sum(spent for row, spent in self.cpu.items() if role_of(row) == role)

    def target_writes(self, target: str) -> int | None:
        if not self.written and not self.cpu:
            return None
        return sum(self.written.get(target, Counter()).values())

    def other_writes(self, target: str) -> int:
        """Documents written in other staging namespaces (the product's state database)."""
        return sum(sum(ops.values()) for ns, ops in self.written.items() if ns != target)

    def messages(self, side: str, direction: str = "up") -> int | None:
        counts = self.wire.get(side)
        return None if counts is None else counts.get(f"messages_{direction}")

    def bytes(self, side: str, direction: str = "up") -> int | None:
        counts = self.wire.get(side)
        return None if counts is None else counts.get(f"bytes_{direction}")


def wire_delta(before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]]
               ) -> dict[str, dict[str, Any]]:
    """Per proxy, what passed between two snapshots of its counters; `commands_up` (messages
    up by command and collection, `delay_proxy.command_of`) where the proxy counts them."""
    out: dict[str, dict[str, Any]] = {}
    for name, counts in after.items():
        earlier = before.get(name, {})
        out[name] = dict(counter_delta(earlier, counts, WIRE_FIELDS))
        if "commands_up" in counts:
            commands = Counter(counts["commands_up"])
            commands.subtract(earlier.get("commands_up", {}))
            out[name]["commands_up"] = dict(+commands)
    return out


def top_commands(wire: Mapping[str, Mapping[str, Any]], side: str, units: int, top: int = 8
                 ) -> str:
    """`find orders 5.1, update orders 3.0, ...`: messages up per 1,000 of `units` (changes)
    by command, from a `wire_delta`."""
    commands = Counter(wire.get(side, {}).get("commands_up", {}))
    return ", ".join(f"{name} {count * 1000 / max(units, 1):.1f}"
                     for name, count in commands.most_common(top))
