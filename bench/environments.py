"""Environments (issue 29's targets), one command: `python -m bench.environments`.

What it measures, at 2 ms round trips, on production holding users and orders that reference
and follow them (bench/README.md, "Environments"):
1. `stagesync env create NAME --sample P --wait`, wall time;
2. a full `env create --wait` against `stagesync resync users --wait` + `resync orders --wait`
   into an empty staging (the same staging server, earlier in the same run);
3. the same burst (`bench.workload.make_ops`, as `bench.run`'s burst) with N live
   environments and with none (two fresh deployments, the same seeded production):
   production messages per change, and the product's CPU per change per extra environment
   over the main staging's own;
4. a thaw after M production changes to K documents while frozen: documents written into
   the environment by the thaw (staging's oplog entries in the environment's databases).
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from stagesync.state.environments import LIVE, EnvironmentStore
from stagesync.state.index_mirror_records import IndexMirrorRecords

from bench.costs import top_commands
from bench.env_figures import (
    Figure,
    environment_databases,
    extra_environment_cost,
    figures_markdown,
    figures_table,
    order_in_environment,
    per_change,
    ratio,
)
from bench.env_measure import (
    BurstCost,
    ThawCost,
    live_orders,
    measure_burst,
    measure_thaw,
    targets,
)
from bench.env_steps import (
    SOURCE,
    TARGET,
    Pair,
    Product,
    bootstrap,
    empty_redis,
    measure_resync,
    redis_db,
    resync_span,
    start_pair,
    start_product,
)
from bench.product import STATE_DB, Tuning, strict_verify, wait_until
from bench.workload import CUSTOMER, USERS, Burst, make_ops, make_orders, make_users

TEMPLATE = "{db}__{env}"  # environments.database, the product's default
STAGING_DB = TARGET.partition(".")[0]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark environments (issue 29).")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--orders", type=int, default=60_000)
    parser.add_argument("--burst", type=int, default=12_000, help="changes in each burst")
    parser.add_argument("--environments", type=int, default=10,
                        help="live environments during the second burst")
    parser.add_argument("--sample", type=float, default=5.0, help="env create --sample P")
    parser.add_argument("--burst-environments", choices=("sampled", "full"), default="sampled",
                        help="the burst's environments: --sample P, or full copies")
    parser.add_argument("--thaw-documents", type=int, default=1_000)
    parser.add_argument("--thaw-changes", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379",
                        help="Redis server; databases 8 (measured) and 9 (bootstrap, resync)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per wait, seconds")
    return parser.parse_args(argv)


class Run:
    """One invocation's workload, processes and results."""

    def __init__(self, args: argparse.Namespace, root: Path, console: Console) -> None:
        self.args, self.root, self.console = args, root, console
        self.tuning = Tuning.from_env()
        self.redis, self.scratch = redis_db(args.redis, 8), redis_db(args.redis, 9)
        self.users = make_users(args.users, args.seed)
        user_ids = [user["_id"] for user in self.users]
        self.orders = make_orders(args.orders, args.seed, customers=user_ids)
        # bench.run's burst: the same generator, mix and seed (seed * 1000 + its index, 0).
        self.burst = make_ops(self.orders, args.burst, seed=args.seed * 1000,
                              customers=user_ids)
        self.user_ids = user_ids
        self.sampled = args.burst_environments == "sampled"
        self.notes: list[str] = []

    def say(self, text: str) -> None:
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')} {text}[/dim]")

    def deployment(self, stack: contextlib.ExitStack, name: str) -> tuple[Pair, Product]:
        """Fresh servers, production seeded, main staging bootstrapped, product streaming."""
        self.say(f"{name}: servers, {len(self.users):,} users and {len(self.orders):,} orders")
        pair = start_pair(stack, self.root / name, self.users, self.orders)
        return pair, self._streaming(stack, pair)

    def _streaming(self, stack: contextlib.ExitStack, pair: Pair) -> Product:
        self.say("bootstrap of the main staging (untimed, direct)")
        bootstrap(pair.context(), self.tuning, self.scratch)
        empty_redis(self.redis)
        product = start_product(pair.context(), self.tuning, self.redis)
        stack.callback(product.stop)
        return product

    def verify_main(self, pair: Pair) -> None:
        result = strict_verify(pair.context(), "follow")
        if not result.ok:
            raise RuntimeError(f"the main staging does not equal production: {result.missing} "
                               f"missing, {result.extra} extra, {result.different} different; "
                               + "; ".join(result.examples[:3]))
        self.notes.append(f"{pair.workdir.name}: main staging verified equal to production "
                          f"({result.compared:,} documents, users and orders)")

    # -- the two deployments ----------------------------------------------------------------
    def without_environments(self) -> BurstCost:
        with contextlib.ExitStack() as stack:
            pair, product = self.deployment(stack, "none")
            self.say(f"burst of {len(self.burst.ops):,} changes, no environment")
            cost = measure_burst(pair, product, self.burst, targets(pair, {}), [],
                                 self.args.timeout)
            self.verify_main(pair)
            return cost

    def with_environments(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with contextlib.ExitStack() as stack:
            self.say("environments: servers, seeded")
            pair = start_pair(stack, self.root / "environments", self.users, self.orders)
            self.say("resync of users and orders into the empty staging")
            out["resync"] = measure_resync(pair.context(), self.tuning, self.scratch)
            product = self._streaming(stack, pair)
            client = pair.staging_client
            self.say("env create full --wait")
            out["full"] = (product.run("env", "create", "full", "--wait")[0],
                           resync_span(client, [f"{USERS}@full", "orders@full"]))
            self._wait_mirrored(pair, product, "full")
            name = f"s{self.args.sample:g}".replace(".", "-")
            self.say(f"env create {name} --sample {self.args.sample:g} --wait")
            out["sampled"] = (product.run("env", "create", name, "--sample",
                                          f"{self.args.sample:g}", "--wait")[0],
                              resync_span(client, [f"{USERS}@{name}", f"orders@{name}"]))
            names = self._burst_environments(product, pair, "full", name)
            percent = self.args.sample if self.sampled else None
            databases = environment_databases(STAGING_DB, TEMPLATE, names)
            self.say(f"burst of {len(self.burst.ops):,} changes, {len(names)} environments")
            where = targets(pair, dict.fromkeys(databases, percent))
            out["burst"] = measure_burst(pair, product, self.burst, where, databases,
                                         self.args.timeout)
            self.verify_main(pair)
            out["thaw"] = self._thaw(pair, product, names, where, percent)
        return out

    def _wait_mirrored(self, pair: Pair, product: Product, name: str) -> None:
        """Until the environment's orders hold production's indexes (the mirror's pass is
        recorded). A copy into an empty target builds them after it, in the background, once
        the environment is already `live`; on the test server the build over 60,000 orders
        holds the staging server for seconds, and a create timed meanwhile measures that build
        (one run measured the sampled create at 22.5 s so, its orders chunk at 13 s)."""
        records = IndexMirrorRecords(pair.staging_client[STATE_DB],
                                     f"{SOURCE.partition('.')[2]}@{name}")
        began = time.monotonic()
        wait_until(records.last_pass, self.args.timeout, f"{name}'s indexes mirrored",
                   product.procs.check_alive, 0.5)
        self.notes.append(f"{name}: production's indexes mirrored "
                          f"{time.monotonic() - began:.1f} s after `env create --wait` returned")

    def _burst_environments(self, product: Product, pair: Pair, full: str, sampled: str
                            ) -> list[str]:
        """The burst's environments: the kept one of the two just created, and more of the
        same kind (the other is deleted)."""
        keep, drop = (sampled, full) if self.sampled else (full, sampled)
        product.run("env", "delete", drop)
        names = [keep] + [f"e{n}" for n in range(2, self.args.environments + 1)]
        extra = ["--sample", f"{self.args.sample:g}"] if self.sampled else []
        self.say(f"env create {' '.join(names[1:])} {' '.join(extra)}")
        began = time.monotonic()
        for name in names[1:]:
            product.run("env", "create", name, *extra)
        store = EnvironmentStore(pair.staging_client[STATE_DB])
        wait_until(lambda: all((e := store.get(n)) is not None and e.state == LIVE
                               for n in names), self.args.timeout, "the environments live",
                   product.procs.check_alive, 1.0)
        kind = "sampled" if self.sampled else "full"
        self.notes.append(f"{len(names) - 1} more environments ({kind}) created together, "
                          f"live after {time.monotonic() - began:.0f} s")
        return names

    def _thaw(self, pair: Pair, product: Product, names: list[str], where: list[Any],
              percent: float | None) -> ThawCost:
        """The first environment frozen, the others deleted (so the changes are applied to
        the main staging and remembered, nothing else)."""
        name, others = names[0], names[1:]
        for other in others:
            product.run("env", "delete", other)
        members = [doc for doc in live_orders(self.orders, self.burst)
                   if order_in_environment(doc.get(CUSTOMER), percent)]
        chosen = members[: self.args.thaw_documents]
        if len(chosen) < self.args.thaw_documents:
            self.notes.append(f"thaw: only {len(chosen)} orders of {name} were available")
        changes: Burst = make_ops(chosen, self.args.thaw_changes, seed=self.args.seed * 1000 + 7,
                                  insert_share=0.0, delete_share=0.0, customers=self.user_ids,
                                  first_seq=len(self.burst.ops) + 1)
        self.say(f"freeze {name}, {len(changes.ops):,} changes to {len(changes.expected):,} "
                 "documents, thaw --wait")
        databases = environment_databases(STAGING_DB, TEMPLATE, [name])
        return measure_thaw(pair, product, name, where[1], changes, databases, where[0],
                            self.args.timeout)


# -- the report -------------------------------------------------------------------------------
def figures(args: argparse.Namespace, none: BurstCost, envs: dict[str, Any]) -> list[Figure]:
    resync_wall, resync_own = envs["resync"]
    full_wall, full_own = envs["full"]
    sampled_wall, sampled_own = envs["sampled"]
    burst: BurstCost = envs["burst"]
    thaw: ThawCost = envs["thaw"]
    messages = [per_change(cost.messages_up("prod"), cost.changes) for cost in (none, burst)]
    reads = [per_change(cost.prod_reads(), cost.changes) for cost in (none, burst)]
    cpu = [per_change(cost.product_cpu, cost.changes) for cost in (none, burst)]
    kind = (f"sampled ({args.sample:g} %)" if args.burst_environments == "sampled"
            else "full")
    own = ratio(full_own, resync_own)
    return [
        Figure(f"env create --sample {args.sample:g} --wait", sampled_wall, 10, "s",
               f"wall time of the command; its copy's own time {_s(sampled_own)}"),
        Figure("full env create / resync into an empty staging", ratio(full_wall, resync_wall),
               1.2, "x", f"{full_wall:.1f} s vs {resync_wall:.1f} s (wall of `env create "
               f"--wait` vs `resync users --wait` + `resync orders --wait`); the copies' own "
               f"time {_s(full_own)} vs {_s(resync_own)}"
               + (f" = {own:.2f}x" if own is not None else "")),
        Figure(f"production messages per change, {burst.environments} environments / none",
               ratio(messages[1], messages[0]), 1.2, "x",
               f"{_k(messages[1])} vs {_k(messages[0])} messages up per 1,000 changes "
               f"(environments: {kind}); the workers' reads of documents (`find`, "
               f"`aggregate`): {_k(reads[1])} vs {_k(reads[0])} = "
               f"{_x(ratio(reads[1], reads[0]))}; the rest are the watcher's getMores, a rate "
               f"per second over a burst that lasted {burst.seconds:.0f} s vs "
               f"{none.seconds:.0f} s"),
        Figure("product CPU per change per extra environment / main staging's",
               extra_environment_cost(cpu[0], cpu[1], burst.environments), 0.7, "x",
               f"{_us(cpu[1])} with {burst.environments} {kind} vs {_us(cpu[0])} with none "
               "(watcher + workers)"),
        Figure(f"documents written by the thaw ({thaw.changes:,} changes to "
               f"{thaw.documents:,} documents while frozen)", thaw.written_by_thaw,
               args.thaw_documents, "documents",
               f"staging oplog entries in the environment's databases; while frozen: "
               f"{thaw.written_frozen}; backlog {thaw.remembered:,}; `env thaw --wait` "
               f"{thaw.seconds:.1f} s"),
    ]


def burst_table(costs: Sequence[BurstCost]) -> Table:
    table = Table(title="the two bursts", title_justify="left")
    for column in ("environments", "changes", "seconds", "writer ops/s", "CPU µs/change",
                   "per process µs/change", "idle ms/s", "idle prod msgs/s", "prod msgs up /1k",
                   "staging msgs up /1k", "docs written /1k main + envs", "load"):
        table.add_column(column, overflow="fold")
    for cost in costs:
        per = {row: f"{spent * 1e6 / cost.changes:.0f}" for row, spent in cost.cpu.items()}
        table.add_row(
            str(cost.environments), f"{cost.changes:,}", f"{cost.seconds:.1f}",
            f"{cost.changes / max(cost.writer_seconds, 1e-9):,.0f}",
            f"{cost.product_cpu * 1e6 / cost.changes:,.0f}",
            ", ".join(f"{row} {v}" for row, v in per.items()),
            f"{cost.idle_cpu_per_s * 1000:.1f}",
            f"{cost.idle_prod_messages_per_s:.1f}",
            f"{cost.messages_up('prod') * 1000 / cost.changes:,.0f}",
            f"{cost.messages_up('staging') * 1000 / cost.changes:,.0f}",
            f"{cost.main_written * 1000 / cost.changes:,.0f} + "
            f"{cost.environments_written * 1000 / cost.changes:,.0f}",
            f"{cost.load[0]:.1f} -> {cost.load[1]:.1f}")
    return table


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def _k(value: float | None) -> str:
    return "—" if value is None else f"{value * 1000:,.0f}"


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _us(value: float | None) -> str:
    return "—" if value is None else f"{value * 1e6:,.0f} µs/change"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 200)
    root = Path(tempfile.mkdtemp(prefix="stagesync-envbench-"))
    run = Run(args, root, console)
    began = time.monotonic()
    none = run.without_environments()
    envs = run.with_environments()
    results = figures(args, none, envs)
    console.print(figures_table(results, "environments (issue 29), 2 ms round trips"))
    console.print(burst_table([none, envs["burst"]]))
    for cost in (none, envs["burst"]):
        for side in ("prod", "staging"):
            console.print(f"burst with {cost.environments} environments, {side} messages up "
                          f"per 1,000 changes by command: "
                          f"{top_commands(cost.wire, side, cost.changes)}", soft_wrap=True)
    for note in run.notes:
        console.print(note, soft_wrap=True)
    console.print(f"{run.tuning.describe()}; whole run {(time.monotonic() - began) / 60:.1f} "
                  f"min; logs: {root}", soft_wrap=True)
    console.print("reproduce: " + shlex.join(["python", "-m", "bench.environments",
                                              *(sys.argv[1:] if argv is None else argv)]),
                  soft_wrap=True)
    console.print(figures_markdown(results), soft_wrap=True, markup=False)
    return 0 if all(figure.met is not None for figure in results) else 1


if __name__ == "__main__":
    sys.exit(main())
