"""The environments bench's building blocks: servers, the product's processes, its commands.

Why not `bench.run`'s runner: that one measures one system per fresh server pair and one
scenario per row; the environments' figures are made of several steps on one deployment
(resync, bootstrap, env create, a burst, freeze, thaw), and each is timed as the user sees it:
the wall time of the `stagesync` command that does it. The pieces it shares with the other
benches are reused as they are: the SecantusDB servers, the 2 ms delay proxies and their
counters (`bench.network`), the product's configuration and processes (`bench.product`),
the workload generators (`bench.workload`) and the cost counters (`bench.costs`).

Redis: the machine's shared server (127.0.0.1:6379), databases 8 (the measured product) and
9 (the untimed bootstrap and the resync baseline's workers), each emptied before use.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from pymongo import MongoClient
from pymongo.collection import Collection
from stagesync.cli.local_servers import LocalServer, start_mongo_test_server
from stagesync.protocol.names import RESYNCS

from bench.network import Network, open_network
from bench.procs import collection
from bench.product import (
    STATE_DB,
    VENV_BIN,
    ProductProcesses,
    Tuning,
    bootstrap_steps,
    child_env,
    state_collection,
    wait_streaming,
    wait_until,
    watcher_doc,
    write_config,
)
from bench.systems import BenchContext
from bench.workload import CUSTOMER, USERS, seed_production

VARIANT = "follow"  # users, and orders that reference and follow them (product.Variant)
SOURCE, TARGET = "production.orders", "staging.orders"
LIFETIME = 4 * 3600.0  # the product's processes SIGTERM themselves after this long


@dataclass
class Pair:
    """A production and a staging server, seeded, with a 2 ms proxy in front of each."""

    prod: LocalServer
    staging: LocalServer
    net: Network
    prod_client: MongoClient[Any]
    staging_client: MongoClient[Any]
    workdir: Path

    def context(self) -> BenchContext:
        """What the product's configuration needs: proxied URIs for it, direct ones for us."""
        return BenchContext("burst", "2ms", self.net.prod_uri, self.net.staging_uri,
                            self.prod.uri, self.staging.uri, self.workdir, LIFETIME,
                            SOURCE, TARGET)

    def orders(self, target: str = TARGET) -> Collection[Any]:
        return collection(self.staging_client, target)

    def prod_orders(self) -> Collection[Any]:
        return collection(self.prod_client, SOURCE)

    def infra(self) -> dict[str, int]:
        return {"prod-server": self.prod.pid, "staging-server": self.staging.pid,
                **{f"proxy-{name}": p.process.pid for name, p in self.net.proxies.items()}}


def start_pair(stack: contextlib.ExitStack, workdir: Path, users: list[dict[str, Any]],
               orders: list[dict[str, Any]]) -> Pair:
    """Fresh servers (stopped by `stack`), production seeded directly, proxies opened."""
    prod = start_mongo_test_server(workdir=workdir / "prod-server")
    stack.callback(prod.stop)
    staging = start_mongo_test_server(workdir=workdir / "staging-server")
    stack.callback(staging.stop)
    prod_client: MongoClient[Any] = MongoClient(prod.uri)
    stack.callback(prod_client.close)
    staging_client: MongoClient[Any] = MongoClient(staging.uri)
    stack.callback(staging_client.close)
    source = collection(prod_client, SOURCE)
    seed_production(source.database[USERS], users)
    seed_production(source, orders)
    # An application that keeps orders per customer reads them by customer: the index that
    # lets a sampled environment read only its users' orders (`tasks.full_resync.by_parents`),
    # and that `stagesync check` asks for on a followed path.
    source.create_index(CUSTOMER)
    net = open_network("2ms", prod, staging, workdir)
    stack.callback(net.stop)
    return Pair(prod, staging, net, prod_client, staging_client, workdir)


def empty_redis(url: str) -> None:
    """Empty one of the bench's own Redis databases (8 or 9), never another."""
    client = redis.Redis.from_url(url, socket_timeout=10)
    with contextlib.closing(client):
        client.flushdb()


def redis_db(base: str, db: int) -> str:
    return f"{base.rstrip('/')}/{db}"


def bootstrap(ctx: BenchContext, tuning: Tuning, redis_url: str) -> None:
    """The main staging "already synced", untimed, over direct connections: the product's own
    bootstrap (`bench.product`'s prepare, users first, then orders), on `redis_url`."""
    empty_redis(redis_url)
    workdir = ctx.workdir / "prepare"
    steps = bootstrap_steps(VARIANT)
    for step, names in enumerate(steps):
        config = write_config(workdir / f"stagesync-{step}.yaml", ctx, ctx.prod_direct_uri,
                              ctx.staging_direct_uri, redis_url, tuning, VARIANT, only=names)
        procs = ProductProcesses(workdir, config, tuning, redis_url, LIFETIME,
                                 tag=f"prepare-{step}-")
        client: MongoClient[Any] = MongoClient(ctx.staging_direct_uri)

        def bootstrapped(names: tuple[str, ...] = names,
                         client: MongoClient[Any] = client) -> bool:
            docs = [watcher_doc(client, name) for name in names]
            return all(d.get("token") and d.get("lastResync") and not d.get("resyncPending")
                       for d in docs)

        try:
            procs.start_workers()
            procs.start_watcher()
            wait_until(bootstrapped, 3600, f"the bootstrap of {names}", procs.check_alive, 0.5)
        finally:
            procs.stop()
            client.close()
    empty_redis(redis_url)


@dataclass
class Product:
    """The measured watcher and workers (through the proxies), and its commands."""

    procs: ProductProcesses
    tuning: Tuning
    log: Path
    commands: list[str] = field(default_factory=list)  # every command run, for the report

    def processes(self) -> dict[str, int]:
        return self.procs.processes()

    def run(self, *args: str, timeout: float = 3600) -> tuple[float, str]:
        """`stagesync ARGS` with this configuration; (wall seconds, output). Raises when it
        fails: a figure from a failed command is no figure."""
        self.commands.append("stagesync " + " ".join(args))
        started = time.monotonic()
        done = subprocess.run([str(VENV_BIN / "stagesync"), *args], capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=timeout,
                              env=child_env(self.procs.config, self.tuning), check=False)
        seconds = time.monotonic() - started
        with open(self.log, "a") as out:
            out.write(f"$ stagesync {' '.join(args)}  # {seconds:.2f} s, exit "
                      f"{done.returncode}\n{done.stdout}{done.stderr}\n")
        if done.returncode != 0:
            raise RuntimeError(f"stagesync {' '.join(args)} exited with {done.returncode}:\n"
                               f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return seconds, done.stdout

    def stop(self) -> None:
        self.procs.stop()


def start_product(ctx: BenchContext, tuning: Tuning, redis_url: str, tag: str = "",
                  watcher: bool = True) -> Product:
    """Workers (and the watcher, resuming from the bootstrap's checkpoint) on the proxied
    URIs; returns once the workers are ready and the watcher streams every collection."""
    config = write_config(ctx.workdir / f"{tag}stagesync.yaml", ctx, ctx.prod_uri,
                          ctx.staging_uri, redis_url, tuning, VARIANT)
    procs = ProductProcesses(ctx.workdir, config, tuning, redis_url, LIFETIME, tag=tag)
    try:
        procs.start_workers()
        if watcher:
            procs.start_watcher()
        procs.wait_workers_ready()
        if watcher:
            wait_streaming(procs, ctx.staging_direct_uri, names=(USERS, "orders"))
    except BaseException:
        procs.stop()
        raise
    return Product(procs, tuning, ctx.workdir / f"{tag}commands.log")


def resync_span(client: MongoClient[Any], names: list[str]) -> float | None:
    """Seconds from the first `startedAt` to the last `finishedAt` of the newest resync
    record of each of `names` (`orders`, or an environment's `orders@pr-1`): the copy's own
    time, without the command's start-up, settling and polling."""
    records = []
    for name in names:
        found = list(state_collection(client, RESYNCS).find(
            {"kind": {"$eq": "resync"}, "collection": {"$eq": name}})
                     .sort("startedAt", -1).limit(1))
        if not found or not found[0].get("finishedAt"):
            return None
        records.append(found[0])
    return (max(r["finishedAt"] for r in records)
            - min(r["startedAt"] for r in records)).total_seconds()


def measure_resync(ctx: BenchContext, tuning: Tuning, redis_url: str) -> tuple[float, float |
                                                                                 None]:
    """`stagesync resync users --wait` then `resync orders --wait` (orders follow users, so
    in that order, as an environment's copy runs them) into the empty staging, with workers
    only; (wall seconds of both commands, the resync records' own span). Then the staging
    and state databases are dropped, for the bootstrap that follows."""
    empty_redis(redis_url)
    product = start_product(ctx, tuning, redis_url, tag="resync-", watcher=False)
    try:
        wall = sum(product.run("resync", name, "--wait")[0] for name in (USERS, "orders"))
    finally:
        product.stop()
    client: MongoClient[Any] = MongoClient(ctx.staging_direct_uri)
    try:
        span = resync_span(client, [USERS, "orders"])
        client.drop_database(TARGET.partition(".")[0])
        client.drop_database(STATE_DB)
    finally:
        client.close()
    empty_redis(redis_url)
    return wall, span
