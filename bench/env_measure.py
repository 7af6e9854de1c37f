"""The environments bench's measurements: a burst over every target, and a thaw.

Why the burst waits for every environment and not only the main staging: the task reports a
batch done before it writes the environments (`tasks.apply.targets`), so the main staging is
final first; CPU read at that moment would leave out part of the environments' work, which is
exactly what is measured. Each target's completion is probed like `bench.run`'s burst
(`bench.completion`, over a direct connection), with the sample decided by the product's own
hash (`env_figures.order_in_environment`), never by reading what the product wrote.

Documents written are entries of staging's `local.oplog.rs` per namespace (the test server
keeps one per document written, as MongoDB does): the server's own count, across processes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from stagesync.state.environment_backlog import EnvironmentBacklog

from bench.completion import expectations, wait_until_applied
from bench.costs import (
    oplog_position,
    oplog_writes,
    process_rows,
    sample_roles,
    system_seconds,
    wire_delta,
)
from bench.env_figures import order_in_environment, writes_in
from bench.env_steps import TARGET, Pair, Product
from bench.product import STATE_DB, BySyncPid, wait_until
from bench.workload import Burst, Expected, apply_burst

IDLE_SECONDS = 3.0


@dataclass
class Target:
    """Where a burst must land: the main staging or one environment's orders."""

    namespace: str
    percent: float | None  # the environment's --sample (None: everything)
    locator: BySyncPid = field(default_factory=BySyncPid)

    def copies(self, expected: Expected) -> bool:
        return order_in_environment(expected.customer, self.percent)


def targets(pair: Pair, databases: dict[str, float | None]) -> list[Target]:
    """The main staging, then one target per environment database (its --sample), each
    locator primed (untimed: one scan of the collection)."""
    collection = TARGET.partition(".")[2]
    out = [Target(TARGET, None)] + [Target(f"{db}.{collection}", percent)
                                    for db, percent in databases.items()]
    for target in out:
        target.locator.prime(pair.orders(target.namespace))
    return out


def wait_landed(pair: Pair, where: Sequence[Target], burst: Burst, timeout: float) -> float:
    """Until every target shows the burst's final state; the monotonic time it did."""
    done = time.monotonic()
    for target in where:
        wanted = expectations(burst.expected.values(), target.copies)
        landed, pending = wait_until_applied(pair.orders(target.namespace), target.locator,
                                             wanted, timeout)
        if landed is None:
            raise RuntimeError(f"{target.namespace}: {pending} documents not final after "
                               f"{timeout:.0f} s")
        done = max(done, landed)
    return done


@dataclass
class BurstCost:
    """One burst, written while `environments` environments were live."""

    environments: int
    changes: int
    seconds: float  # first write -> every target final
    writer_seconds: float  # first write -> last acknowledged (production's pace)
    cpu: dict[str, float]  # the product's process rows (watcher, workers, pool children)
    idle_cpu_per_s: float  # the same processes just before, nothing written
    idle_prod_messages_per_s: float  # messages up to production then (stream polling)
    wire: dict[str, dict[str, int]]  # "prod" / "staging" -> messages and bytes each way
    main_written: int
    environments_written: int
    load: tuple[float, float]

    @property
    def product_cpu(self) -> float:
        return system_seconds(self.cpu)

    def messages_up(self, side: str) -> int:
        return int(self.wire.get(side, {}).get("messages_up", 0))

    def prod_reads(self) -> int | None:
        """Production's `find` and `aggregate` messages (the oplog's excluded): the workers'
        reads of documents. What else goes up is the watcher's streams' getMores, which come
        at a rate per second, not per change (a burst that lasts longer pays more of them),
        and server monitoring. None when the proxy did not count commands."""
        commands = self.wire.get("prod", {}).get("commands_up")
        if commands is None:
            return None
        return sum(count for name, count in commands.items()
                   if name.split(" ")[0] in ("find", "aggregate") and
                   not name.endswith("oplog.rs"))


def measure_burst(pair: Pair, product: Product, burst: Burst, where: Sequence[Target],
                  env_databases: Sequence[str], timeout: float) -> BurstCost:
    """Write `burst` to production as fast as it takes it; CPU, wire and writes from the
    first write until every target holds the final state."""
    roles = product.processes()
    before, idle_wire, began = sample_roles(roles), pair.net.snapshot(), time.monotonic()
    time.sleep(IDLE_SECONDS)
    idle = system_seconds(process_rows(roles, before, sample_roles(roles)))
    polled = wire_delta(idle_wire, pair.net.snapshot()).get("prod", {}).get("messages_up", 0)
    idle_seconds = time.monotonic() - began
    idle_rate = idle / idle_seconds
    load = os.getloadavg()[0]
    cpu, wire = sample_roles(roles), pair.net.snapshot()
    oplog = oplog_position(pair.staging_client)
    started, written = apply_burst(pair.prod_orders(), burst.ops)
    done = wait_landed(pair, where, burst, timeout)
    rows = process_rows(roles, cpu, sample_roles(roles))
    wire_used = wire_delta(wire, pair.net.snapshot())
    writes = oplog_writes(pair.staging_client, oplog)
    return BurstCost(
        environments=len(env_databases), changes=len(burst.ops), seconds=done - started,
        writer_seconds=written - started, cpu=rows, idle_cpu_per_s=idle_rate,
        idle_prod_messages_per_s=polled / idle_seconds, wire=wire_used,
        main_written=writes_in(writes, [TARGET.partition(".")[0]]),
        environments_written=writes_in(writes, env_databases),
        load=(load, os.getloadavg()[0]))


@dataclass
class ThawCost:
    changes: int
    documents: int  # production documents the changes touched
    remembered: int  # the environment's backlog when thawed
    written_frozen: int  # documents written into the environment while it was frozen
    written_by_thaw: int  # ... by the thaw (the target: <= documents)
    seconds: float  # `env thaw --wait`, wall


def measure_thaw(pair: Pair, product: Product, name: str, where: Target, changes: Burst,
                 env_databases: Sequence[str], main: Target, timeout: float) -> ThawCost:
    """Freeze `name`, write `changes` to production, wait until the main staging has them
    and the environment's backlog holds every touched document, then `env thaw --wait`;
    count what was written into the environment's databases in each window."""
    product.run("env", "freeze", name)
    frozen_at = oplog_position(pair.staging_client)
    apply_burst(pair.prod_orders(), changes.ops)
    wait_landed(pair, [main], changes, timeout)
    backlog = EnvironmentBacklog(pair.staging_client[STATE_DB])
    touched = len(changes.expected)
    # The environments are applied right after the main staging, by the same task.
    wait_until(lambda: backlog.count(name) >= touched, timeout, f"{name}'s backlog",
               lambda: product.procs.check_alive())
    remembered = backlog.count(name)
    written_frozen = writes_in(oplog_writes(pair.staging_client, frozen_at), env_databases)
    thawed_at = oplog_position(pair.staging_client)
    seconds, _ = product.run("env", "thaw", name, "--wait")
    written_by_thaw = writes_in(oplog_writes(pair.staging_client, thawed_at), env_databases)
    wait_landed(pair, [where], changes, 60)  # and the environment holds the final state
    return ThawCost(len(changes.ops), touched, remembered, written_frozen, written_by_thaw,
                    seconds)


def live_orders(orders: Sequence[dict[str, Any]], burst: Burst) -> list[dict[str, Any]]:
    """The seeded orders the burst did not delete, in seed order."""
    return [doc for doc in orders
            if not (doc["_id"] in burst.expected and burst.expected[doc["_id"]].deleted)]
