"""One command, one table: `python -m bench.run [--scenario burst|steady|resync|all] [--quick]`.

Why fresh servers per measured system: a system leaves state behind (staging documents, change
stream history, indexes, metadata), so each (scenario, network, system) gets its own production
and staging test servers, the same seeded documents and the same seeded operations. Baselines
run in the same invocation, so ratios compare like with like on a noisy shared machine.

What is timed (burst): from the first production write until the completion probe has seen the
final state of every document the burst touched in staging (over a direct connection, see
`bench.completion`). Then, untimed, the system's own whole-collection verification; a row that
does not verify does not count. Steady state: the lag from each write being sent to the probe
seeing it in staging (an upper bound within ~20 ms). Resync: a system's full copy of production
into an empty staging (and, case "again", into one already synced), timed by the system, beside
a plain find + insert_many copy (`copy`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

import redis
from pymongo import MongoClient
from pymongo.collection import Collection
from rich.console import Console
from rich.table import Table
from stagesync.cli.local_servers import LocalServer, start_mongo_test_server, start_redis

from bench import pyspy, staging_profile
from bench.completion import LagObserver, expectations, percentile, wait_until_applied
from bench.costs import (
    COMMAND_ROLE,
    PROD_READ_COUNTERS,
    STAGING_WRITE_COUNTERS,
    Costs,
    apply_rounds,
    batch_sizes,
    counter_delta,
    opcounters,
    oplog_position,
    oplog_writes,
    process_rows,
    runner_children,
    sample_roles,
    system_seconds,
    top_commands,
    wire_delta,
)
from bench.network import NETWORKS, Network, open_network
from bench.procs import RssSampler, collection, peak_rss_mb, process_tree, quarters
from bench.report import cost_notes, cost_table
from bench.systems import BenchContext, ResyncOutcome, RunOptions, SystemSpec, load_systems
from bench.verify_equal import VerifyResult
from bench.workload import (
    USERS,
    Burst,
    WriteRecord,
    apply_burst,
    apply_steady,
    make_ops,
    make_orders,
    make_users,
    seed_production,
    users_for,
)

SCENARIOS = ("burst", "steady", "resync")
# Seconds the system's processes are watched idle before each measurement (bench.costs).
IDLE_SECONDS = 3.0
QUICK = RunOptions(docs=2_000, changes=5_000, naive_changes=1_000, rate=300.0, duration=6.0)


@dataclass
class Row:
    scenario: str
    network: str
    system: str
    command: str
    case: str = ""  # resync: "empty" or "again"
    changes: int = 0
    seconds: float | None = None
    extrapolated: bool = False
    lag: tuple[float, float, float] | None = None  # p50, p99, max (steady)
    unseen: int = 0  # steady writes never seen in staging before the timeout
    rss: dict[str, float] = field(default_factory=dict)
    children_rss: dict[str, list[float]] = field(default_factory=dict)
    # MiB of each role's process tree, sampled every second while measured (`RssSampler`).
    rss_series: dict[str, list[float]] = field(default_factory=dict)
    staging_msgs: int | None = None
    ping_overhead_ms: float | None = None
    writer_rate: float | None = None
    verify: VerifyResult | None = None
    error: str | None = None
    counters: dict[str, Any] = field(default_factory=dict)  # what the system's stop() returned
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per role while measured
    resync: ResyncOutcome | None = None
    # 1-minute load average when the measurement began and ended: the machine is shared, and
    # other work on its 2 cores shows in every figure.
    load: tuple[float, float] | None = None
    profile: str | None = None  # --profile-staging: where the staging server's time went
    costs: Costs | None = None  # what the system spent while measured (bench.costs)
    profiles: list[str] = field(default_factory=list)  # --py-spy: top functions per process

    @property
    def label(self) -> str:
        return f"{self.system} ({self.case})" if self.case else self.system

    @property
    def rate(self) -> float | None:
        return self.changes / self.seconds if self.seconds else None

    @property
    def counts(self) -> bool:
        """A row only counts when it finished and staging verified equal."""
        return self.error is None and self.verify is not None and self.verify.ok and not self.unseen

    @property
    def data_verified(self) -> bool:
        """The harness's document-by-document comparison passed (a system may add its own
        checks on top, e.g. `stagesync verify`, whose failure keeps the row from counting)."""
        return (self.error is None and self.verify is not None and not self.unseen
                and bool(getattr(self.verify, "data_ok", self.verify.ok)))


# -- cached workloads (deterministic; generated once per size) --------------------------------
@cache
def _users(orders: int, seed: int) -> list[dict[str, Any]]:
    """The production users the orders reference (orders / 10 of them)."""
    return make_users(users_for(orders), seed)


@cache
def _docs(count: int, seed: int) -> list[dict[str, Any]]:
    return make_orders(count, seed, customers=[u["_id"] for u in _users(count, seed)])


@cache
def _ops(docs: int, seed: int, count: int, stream: str, hot_share: float = 0.05,
         delete_share: float = 0.05) -> Burst:
    """Operations on `_docs(docs, seed)`. The op seed does not depend on `count`, so a smaller
    burst is exactly the first `count` operations of the full one."""
    return make_ops(_docs(docs, seed), count, seed=seed * 1000 + SCENARIOS.index(stream),
                    customers=[u["_id"] for u in _users(docs, seed)], hot_share=hot_share,
                    delete_share=delete_share)


# -- one measured run -------------------------------------------------------------------------
def run_one(scenario: str, network: str, spec: SystemSpec, opts: RunOptions, root: Path,
            case: str = "") -> Row:
    """Fresh servers, one system, one scenario, one network condition (and resync case)."""
    row = Row(scenario, network, spec.name, reproduce(scenario, network, spec, opts), case)
    workdir = root / f"{scenario}-{network}-{spec.name}{'-' + case if case else ''}"
    with contextlib.ExitStack() as stack:
        prod = _server(stack, workdir / "prod-server")
        staging = _server(stack, workdir / "staging-server")
        prod_coll = _collection(stack, prod.uri, "production.orders")
        staging_coll = _collection(stack, staging.uri, "staging.orders")
        docs = _docs(opts.docs, opts.seed)
        seed_production(prod_coll, docs)
        # Every system gets the users its orders reference; only the product's references and
        # subset variants read them (the burst never writes them).
        seed_production(prod_coll.database[USERS], _users(opts.docs, opts.seed))
        budget = _timeout(scenario, spec, opts)
        ctx = BenchContext(scenario, network, prod.uri, staging.uri, prod.uri, staging.uri,
                           workdir, max_seconds=budget + 300)
        if scenario != "resync" or case == "again":
            spec.prepare(ctx, docs)
        net = open_network(network, prod, staging, workdir)
        stack.callback(net.stop)
        row.ping_overhead_ms = net.ping_overhead_ms
        redis_url = None
        infra = {"prod-server": prod.pid, "staging-server": staging.pid, "runner": os.getpid(),
                 **{f"proxy-{name}": proxy.process.pid for name, proxy in net.proxies.items()}}
        if spec.needs_redis:
            redis = start_redis(workdir=workdir / "redis")
            stack.callback(redis.stop)
            redis_url = redis.uri
            infra["redis"] = redis.pid
        ctx = replace(ctx, prod_uri=net.prod_uri, staging_uri=net.staging_uri,
                      redis_url=redis_url)
        system = spec.start(ctx)
        stack.callback(system.stop)
        roles = {**system.processes(), **{k: v for k, v in infra.items() if k != "runner"}}
        profiled = staging_profile.start(staging_coll.database.client) \
            if opts.profile_staging else None
        meter = CostMeter(roles, net, prod_coll.database.client, staging_coll.database.client)
        recordings = _start_py_spy(system.processes(), workdir) if opts.py_spy else []
        meter.idle()
        load_before = os.getloadavg()[0]
        meter.begin()
        sampler = RssSampler(system.processes())
        stack.callback(sampler.stop)
        if scenario == "burst":
            _measure_burst(row, spec, opts, prod_coll, staging_coll, budget)
        elif scenario == "steady":
            _measure_steady(row, spec, opts, prod_coll, staging_coll, budget)
        else:
            _measure_resync(row, spec, ctx, system)
        row.rss_series = sampler.stop()
        row.costs = meter.end()
        if row.resync is not None and row.resync.setup_cpu and COMMAND_ROLE in row.costs.cpu:
            # The copy's start-up is outside its clock; `stagesync resync --wait`'s is not
            # subtracted (it shows as the row `command`, start-up and waiting included).
            row.costs.cpu[COMMAND_ROLE] = max(row.costs.cpu[COMMAND_ROLE]
                                              - row.resync.setup_cpu, 0.0)
        row.cpu = dict(row.costs.cpu)
        row.load = (load_before, os.getloadavg()[0])
        for recording in recordings:
            sampled = recording.stop()
            if sampled is not None and sampled.samples:
                row.profiles.append(pyspy.describe(recording.label, sampled))
        if profiled is not None:
            row.profile = staging_profile.report(staging_coll.database.client, profiled,
                                                 row.seconds or 0.0)
        _record_rss(row, system.processes())
        if row.resync is not None:
            row.rss.update(row.resync.rss)
        if redis_url:
            row.rss["redis"] = redis_peak_mb(redis_url)
        row.counters = system.stop()
        net.stop()
        row.staging_msgs = row.costs.messages("staging")
        worker_logs = sorted(workdir.glob("worker-*.log"))
        if worker_logs:
            row.costs.rounds = apply_rounds(worker_logs)
            row.costs.batches = batch_sizes(worker_logs)
        row.verify = spec.verify(ctx)
    return row


class CostMeter:
    """Reads every cost counter at the start and at the end of a measurement (bench.costs)."""

    def __init__(self, roles: dict[str, int], net: Network, prod: MongoClient[Any],
                 staging: MongoClient[Any]) -> None:
        self.roles, self.net, self.prod, self.staging = roles, net, prod, staging
        self.idle_rate: float | None = None

    def idle(self, seconds: float = IDLE_SECONDS) -> None:
        """The system's own CPU per second while nothing is written (just before `begin`)."""
        before, started = sample_roles(self.roles), time.monotonic()
        time.sleep(seconds)
        spent = system_seconds(process_rows(self.roles, before, sample_roles(self.roles)))
        self.idle_rate = spent / (time.monotonic() - started)

    def begin(self) -> None:
        self.started = time.monotonic()
        self.cpu = sample_roles(self.roles)
        self.commands = runner_children(os.getpid())
        self.wire = self.net.snapshot()
        self.oplog = oplog_position(self.staging)
        self.staging_ops, self.prod_ops = opcounters(self.staging), opcounters(self.prod)

    def end(self) -> Costs:
        cpu = process_rows(self.roles, self.cpu, sample_roles(self.roles))
        commands = runner_children(os.getpid()) - self.commands
        if commands >= 0.005:
            cpu[COMMAND_ROLE] = commands
        return Costs(
            cpu=cpu,
            wire=wire_delta(self.wire, self.net.snapshot()),
            written=oplog_writes(self.staging, self.oplog),
            staging_ops=counter_delta(self.staging_ops, opcounters(self.staging),
                                      STAGING_WRITE_COUNTERS),
            prod_ops=counter_delta(self.prod_ops, opcounters(self.prod), PROD_READ_COUNTERS),
            seconds=time.monotonic() - self.started,
            idle_cpu_per_s=self.idle_rate,
        )


def _start_py_spy(processes: dict[str, int], workdir: Path) -> list[pyspy.Recording]:
    """py-spy on the watcher and on the first pool child of the first worker (the parent
    only dispatches; the children run the tasks)."""
    targets: dict[str, int] = {}
    if "watcher" in processes:
        targets["watcher"] = processes["watcher"]
    workers = sorted(role for role in processes if role.startswith("worker-"))
    if workers:
        children = process_tree(processes[workers[0]])[1:]
        if children:
            targets[f"{workers[0]}-child"] = min(children)
    for role in processes:
        if not role.startswith(("worker-", "watcher")):
            targets[role] = processes[role]  # a baseline's own process
    return [rec for label, pid in targets.items()
            if (rec := pyspy.record(label, pid, workdir)) is not None]


def _measure_burst(
    row: Row, spec: SystemSpec, opts: RunOptions, prod: Collection[Any],
    staging: Collection[Any], budget: float,
) -> None:
    count = min(opts.changes, spec.max_changes or opts.changes)
    burst = _ops(opts.docs, opts.seed, count, "burst", opts.hot_share, opts.delete_share)
    row.changes, row.extrapolated = count, count < opts.changes
    started, written = apply_burst(prod, burst.ops)
    row.writer_rate = count / max(written - started, 1e-9)
    expected = expectations(burst.expected.values(), spec.copies)
    done, pending = wait_until_applied(staging, spec.locator, expected, budget)
    if done is None:
        row.error = f"timeout after {budget:.0f}s: {pending} documents not in their final state"
    else:
        row.seconds = done - started


def _measure_steady(
    row: Row, spec: SystemSpec, opts: RunOptions, prod: Collection[Any],
    staging: Collection[Any], budget: float,
) -> None:
    steady = _ops(opts.docs, opts.seed, int(opts.rate * opts.duration), "steady")
    observer = LagObserver(staging, spec.locator)
    copies = spec.copies

    def observe(record: WriteRecord) -> None:
        """Lag of the writes the system copies (a write outside its subset has none)."""
        wanted = steady.expected[record.op.id]
        if copies is None or copies(wanted):
            observer.add(record, wanted.key)

    observer.start()
    try:
        records = apply_steady(prod, steady.ops, opts.rate, opts.duration, on_write=observe)
        row.unseen = observer.drain(budget)
    finally:
        observer.drain(0)  # stops its thread if the writer failed
    row.changes = len(records)
    row.seconds = records[-1].acked - records[0].sent if records else None
    lags = observer.lags
    row.lag = (percentile(lags, 50), percentile(lags, 99), max(lags, default=0.0))
    if row.unseen:
        row.error = f"{row.unseen} writes not seen in staging within {budget:.0f}s"


def _measure_resync(row: Row, spec: SystemSpec, ctx: BenchContext, system: Any) -> None:
    """The system copies all of production into staging; its own start -> done is timed."""
    assert spec.resync is not None
    outcome = spec.resync(ctx, system)
    row.resync = outcome
    row.changes, row.seconds = outcome.documents, outcome.seconds


def _record_rss(row: Row, processes: dict[str, int]) -> None:
    """Peak RSS of each role's main process, and of its descendants, before they stop."""
    for role, pid in processes.items():
        peak = peak_rss_mb(pid)
        if peak is not None:
            row.rss[role] = peak
        children = [p for p in (peak_rss_mb(c) for c in process_tree(pid)[1:]) if p is not None]
        if children:
            row.children_rss[role] = children


def redis_peak_mb(url: str) -> float:
    """Redis `used_memory_peak` in MiB (its own accounting: data, buffers, overhead)."""
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("memory")["used_memory_peak"]) / 2**20
    finally:
        client.close()


def _timeout(scenario: str, spec: SystemSpec, opts: RunOptions) -> float:
    if opts.timeout:
        return opts.timeout
    if scenario == "burst":
        return 120 + min(opts.changes, spec.max_changes or opts.changes) / 100
    if scenario == "resync":
        return 120 + opts.docs / 20
    return opts.duration * 3 + 30


def _server(stack: contextlib.ExitStack, workdir: Path) -> LocalServer:
    server = start_mongo_test_server(workdir=workdir)
    stack.callback(server.stop)
    return server


def _collection(stack: contextlib.ExitStack, uri: str, namespace: str) -> Collection[Any]:
    client: MongoClient[Any] = MongoClient(uri)
    stack.callback(client.close)
    return collection(client, namespace)


def reproduce(scenario: str, network: str, spec: SystemSpec, opts: RunOptions) -> str:
    argv = ["python", "-m", "bench.run", "--scenario", scenario, "--network", network,
            "--systems", spec.name, "--docs", str(opts.docs)]
    if opts.seed != RunOptions.seed:
        argv += ["--seed", str(opts.seed)]
    if scenario == "burst":
        argv += ["--changes", str(opts.changes)]
        for flag, value, default in (("--hot-share", opts.hot_share, RunOptions.hot_share),
                                     ("--delete-share", opts.delete_share,
                                      RunOptions.delete_share)):
            if value != default:
                argv += [flag, f"{value:g}"]
        if spec.max_changes is not None and spec.max_changes < opts.changes:
            argv += ["--naive-changes", str(spec.max_changes)]
    elif scenario == "steady":
        argv += ["--rate", f"{opts.rate:g}", "--duration", f"{opts.duration:g}"]
    return shlex.join(argv)


# -- the table --------------------------------------------------------------------------------
def render(rows: Sequence[Row], opts: RunOptions, root: Path, console: Console) -> None:
    table = Table(title=f"stagesync benchmark — {opts.docs:,} production documents",
                  show_lines=False, header_style="bold")
    for name, justify in [
        ("scenario", "left"), ("network", "left"), ("system", "left"), ("changes", "right"),
        ("seconds", "right"), ("changes/s", "right"), ("vs naive", "right"), ("vs limit", "right"),
        ("vs floor", "right"), ("vs floor+idx", "right"),
        ("lag p50/p99/max s", "right"), ("peak RSS", "left"), ("staging cmds/1k", "right"),
        ("redis cmds/1k", "right"), ("verified", "left"), ("reproduce", "left"),
    ]:
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in rows:
        table.add_row(
            row.scenario, row.network, row.label,
            f"{row.changes:,}{' (a)' if row.extrapolated else ''}",
            f"{row.seconds:.2f}" if row.seconds else "—",
            f"{row.rate:,.0f}" if row.rate else "—",
            _ratio(row, rows, "naive"), _ratio(row, rows, "limit"),
            _ratio(row, rows, floor_of(row.scenario)),
            _ratio(row, rows, floor_of(row.scenario, True)),
            "/".join(f"{v:.3f}" for v in row.lag) if row.lag else "—",
            _rss_text(row),
            f"{row.staging_msgs / row.changes * 1000:,.0f}"
            if row.staging_msgs is not None and row.changes else "—",
            _redis_text(row), _verified_text(row), row.command,
        )
    console.print(table)
    console.print(cost_table(rows))
    if _invocation:
        command = shlex.join(["python", "-m", "bench.run", *_invocation])
        console.print(f"reproduce both tables: {command}", soft_wrap=True)
    for note in _notes(rows, opts, root):
        console.print(note, soft_wrap=True)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def floor_of(scenario: str, with_indexes: bool = False) -> str:
    """The baseline a scenario's figures are compared with: the minimal sync for changes, the
    plain copy for a resync; `with_indexes`: the same into the product's index set."""
    base = "copy" if scenario == "resync" else "minimal"
    return f"{base}-idx" if with_indexes else base


def _ratio(row: Row, rows: Sequence[Row], base: str) -> str:
    if row.scenario == "resync":  # the floors of a full copy are the copies
        if base not in ("copy", "copy-idx"):
            return "—"
    elif row.scenario != "burst":
        return "—"
    if not row.data_verified or row.rate is None or row.system == base:
        return "—"
    for other in rows:
        same_run = (other.scenario, other.network, other.system) == (row.scenario, row.network,
                                                                       base)
        if same_run and other.counts and other.rate:
            # "*": the data verified equal, but the system's own verification failed.
            return f"{row.rate / other.rate:.2f}x{'' if row.counts else '*'}"
    return "—"


def _redis_text(row: Row) -> str:
    """Redis commands per 1,000 changes (all of them; task publishes = LPUSH to a queue)."""
    calls = row.counters.get("redis_calls")
    if calls is None or not row.changes:
        return "—"
    per_k = 1000 / row.changes
    return f"{calls * per_k:,.0f} ({row.counters.get('redis_lpush', 0) * per_k:,.1f} pub)"


def _rss_text(row: Row) -> str:
    parts = []
    for role, peak in row.rss.items():
        text = f"{role} {peak:.0f} MB"
        if children := row.children_rss.get(role):
            text += f" (+{len(children)} children ≤{max(children):.0f} MB)"
        parts.append(text)
    return ", ".join(parts) or "—"


def _rss_over_run(row: Row) -> str:
    return ", ".join(f"{role} " + " / ".join(f"{v:.0f}" for v in quarters(values))
                     for role, values in row.rss_series.items())


def _verified_text(row: Row) -> str:
    if row.error:
        return f"NO: {row.error}"
    if row.verify is None:
        return "—"
    v = row.verify
    if v.ok:
        return f"yes ({v.compared:,} docs)"
    if row.data_verified:
        return (f"NO*: data equal ({v.compared:,} docs), but stagesync verify failed "
                f"({getattr(v, 'tool_problem', '') or 'see notes'})")
    return f"NO: {v.missing} missing, {v.extra} extra, {v.different} different"


_spec_notes: list[str] = []  # the systems' own notes (configuration), set by main()
_invocation: list[str] = []  # the command line of this run, set by main()


def _notes(rows: Sequence[Row], opts: RunOptions, root: Path) -> list[str]:
    notes = [
        "seconds (burst) = first production write -> every touched document seen in its final "
        "state in staging; then the whole collection is verified (untimed). A row that does "
        "not verify does not count. Steady: lag = write sent -> seen in staging (±20 ms probe).",
    ]
    if any(r.extrapolated for r in rows):
        capped = sorted({r.changes for r in rows if r.extrapolated})
        notes.append(
            f"(a) measured on a smaller burst ({', '.join(f'{c:,}' for c in capped)} changes; same "
            f"documents, same generator) and its changes/s used as is: the naive loop handles "
            f"one event at a time with a fixed number of round trips each, so its rate does not "
            f"depend on the burst's size. At that rate, {opts.changes:,} changes would take "
            + ", ".join(f"~{_duration(opts.changes / r.rate)} at {r.network}"
                        for r in rows if r.extrapolated and r.rate and r.counts) + ". "
            "Use --naive-changes to measure it on the full burst.")
    if any(r.data_verified and not r.counts for r in rows):
        notes.append("NO* / ratio*: the harness's strict document-by-document comparison passed "
                     "(every production document equals its live staging document on every "
                     "field), but the product's own `stagesync verify` failed (see the row's "
                     "note below): the row does not count; its ratio is shown for information.")
    overheads = [r.ping_overhead_ms for r in rows if r.ping_overhead_ms is not None]
    if overheads:
        notes.append(f"2ms: a ping through the delay proxy cost {min(overheads):.2f} to "
                     f"{max(overheads):.2f} ms more than direct (target 2 ms).")
    writers = [r.writer_rate for r in rows if r.writer_rate]
    if writers:
        notes.append(f"production accepted the bursts at {min(writers):,.0f} to "
                     f"{max(writers):,.0f} ops/s (ordered bulk_write, 500 ops per call).")
    notes.append("staging cmds/1k = wire messages the system sent to staging (through the 2 ms "
                 "proxy, monitoring included) per 1,000 changes while measured. vs floor = "
                 "changes/s over the minimal sync's (resync: the plain copy's); vs floor+idx = "
                 "over the same baseline writing into the product's index set (minimal-idx, "
                 "copy-idx).")
    by_command = [(r, top_commands(r.costs.wire, "staging", r.changes)) for r in rows
                  if r.costs is not None and r.changes and r.label.startswith("stagesync")]
    if any(text for _, text in by_command):
        notes.append("staging messages up per 1,000 changes by command and collection (the "
                     "proxy reads each message's first bytes): " + "; ".join(
                         f"{r.scenario}/{r.network}/{r.label}: {text}"
                         for r, text in by_command if text))
    if any(r.counters.get("redis_calls") is not None for r in rows):
        notes.append("redis cmds/1k = commands the system sent to its private Redis per 1,000 "
                     "changes (INFO commandstats delta from ready to stop; pub = LPUSH of task "
                     "messages onto queues). Per run: "
                     + "; ".join(f"{r.scenario}/{r.network}/{r.label}: {r.counters['redis_top']}"
                                 for r in rows if r.counters.get("redis_top")))
    series = [(r, _rss_over_run(r)) for r in rows if r.rss_series]
    if series:
        notes.append("memory over the run: MiB of each role's process tree (pool children "
                     "included), the largest of each quarter of the measurement, sampled every "
                     "second: " + "; ".join(f"{r.scenario}/{r.network}/{r.label}: {text}"
                                           for r, text in series))
    loads = [r for r in rows if r.load]
    if loads:
        notes.append("machine load (1-minute load average, 2 cores, everyone's work included) "
                     "when each measurement began -> ended: " + "; ".join(
                         f"{r.scenario}/{r.network}/{r.label} {r.load[0]:.1f} -> {r.load[1]:.1f}"
                         for r in loads if r.load))
    windows = [r for r in rows if r.counters.get("window")]
    if windows:
        notes.append("in flight (watcher heartbeat and queue sampled every 0.5 s while "
                     "measured, samples with work in flight): " + "; ".join(
                         f"{r.scenario}/{r.network}/{r.label}: groups p50 "
                         f"{w['groups_p50']:,} max {w['groups_max']:,}, changes in flight max "
                         f"{w['unapplied_max']:,}, queue max {w['queue_max']:,} messages, "
                         f"backpressure ~{w['backpressure_s']:.0f} s"
                         for r in windows if (w := r.counters["window"])))
    resyncs = [r for r in rows if r.resync is not None]
    if resyncs:
        notes.append(
            "resync: changes = production documents copied; seconds = the copy's own start -> "
            "done (stagesync: its `resyncs` record, startedAt -> finishedAt, chunks and sweep "
            "included; copy: first find -> last insert ack); vs floor = ratio to the plain "
            "find + insert_many copy (`copy`) on the same network, vs floor+idx to the same copy "
            "into the product's index set (`copy-idx`). (empty) = empty staging, "
            "(again) = staging already synced by a previous full resync. Only workers run (no "
            "watcher). " + "; ".join(
                f"{r.network}/{r.label}: `stagesync resync --wait` took {r.resync.wall_seconds:.1f}"
                f" s end to end, summary {r.resync.summary}" for r in resyncs
                if r.resync is not None and r.resync.wall_seconds is not None))
    for spec_note in _spec_notes:
        notes.append(spec_note)
    notes.extend(cost_notes(rows))
    for row in rows:
        if row.profile:
            notes.append(f"{row.scenario}/{row.network}/{row.label}: {row.profile}")
        for profile in row.profiles:
            notes.append(f"{row.scenario}/{row.network}/{row.label}: {profile}")
    for row in rows:
        if row.verify is not None and row.verify.examples:
            notes.append(f"{row.scenario}/{row.network}/{row.label}: "
                         + "; ".join(row.verify.examples[:3]))
    notes.append(f"logs: {root}")
    return notes


# -- command line ---------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark stagesync against its baselines.")
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--network", choices=[*NETWORKS, "both"], default="both")
    parser.add_argument("--systems", default="", help="comma-separated names (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (2k docs, 5k changes, 6 s steady): about 2 minutes")
    parser.add_argument("--docs", type=int, help="production documents (default 20000)")
    parser.add_argument("--changes", type=int, help="burst size (default 100000)")
    parser.add_argument("--naive-changes", type=int,
                        help="burst size for the naive loop, rate extrapolated (default 3000)")
    parser.add_argument("--rate", type=float, help="steady changes/s (default 300)")
    parser.add_argument("--duration", type=float, help="steady seconds (default 60)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hot-share", type=float,
                        help="burst: share of documents that is hot, 30%% of the updates go to "
                             "them (default 0.05; issue 30's burst: 0.1)")
    parser.add_argument("--delete-share", type=float,
                        help="burst: share of deletes (default 0.05; issue 30's burst: 0.03)")
    parser.add_argument("--timeout", type=float, help="per measurement, seconds")
    parser.add_argument("--profile-staging", action="store_true",
                        help="profile every staging operation and print where the time went "
                             "(the profiler slows the server: not for the ratios)")
    parser.add_argument("--py-spy", action="store_true",
                        help="sample the watcher, one worker pool child and each baseline "
                             "process with py-spy and print their top functions (py-spy's "
                             "sampling costs some CPU: not for the ratios)")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> RunOptions:
    base = QUICK if args.quick else RunOptions()
    given = {k: getattr(args, k) for k in ("docs", "changes", "naive_changes", "rate",
                                            "duration", "timeout", "hot_share",
                                            "delete_share") if getattr(args, k)}
    return RunOptions(**{**base.__dict__, **given, "seed": args.seed,
                         "profile_staging": args.profile_staging, "py_spy": args.py_spy})


def _interrupt(_signum: int, _frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _invocation[:] = list(sys.argv[1:] if argv is None else argv)
    opts = options_from(args)
    signal.signal(signal.SIGTERM, _interrupt)  # so `finally` blocks stop every child
    specs = load_systems(opts)
    if args.systems:
        wanted = args.systems.split(",")
        unknown = set(wanted) - {s.name for s in specs}
        if unknown:
            print(f"unknown systems {sorted(unknown)}; known: {[s.name for s in specs]}")
            return 2
        # In the order given: a run that must start one system first (before code changes
        # under it, say) can.
        specs = sorted((s for s in specs if s.name in wanted), key=lambda s: wanted.index(s.name))
    else:
        specs = [s for s in specs if not s.opt_in]
    _spec_notes[:] = [note for spec in specs for note in spec.notes]
    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    networks = NETWORKS if args.network == "both" else (args.network,)
    root = Path(tempfile.mkdtemp(prefix="stagesync-bench-"))
    console = Console(width=None if sys.stdout.isatty() else int(os.environ.get("COLUMNS")
                                                                    or 250))
    rows: list[Row] = []
    interrupted = False
    try:
        for scenario in scenarios:
            for network in networks:
                for spec in specs:
                    if scenario not in spec.scenarios:
                        continue
                    cases = spec.resync_cases if scenario == "resync" else ("",)
                    for case in cases:
                        console.print(f"[dim]{time.strftime('%H:%M:%S')} {scenario} / {network}"
                                      f" / {spec.name}{' / ' + case if case else ''} ...[/dim]")
                        try:
                            rows.append(run_one(scenario, network, spec, opts, root, case))
                        except Exception as exc:  # one system failing must not hide the others
                            traceback.print_exc()
                            row = Row(scenario, network, spec.name,
                                      reproduce(scenario, network, spec, opts), case)
                            row.error = f"{type(exc).__name__}: {exc}"
                            rows.append(row)
    except KeyboardInterrupt:
        interrupted = True
        console.print("[red]interrupted: partial results[/red]")
    render(rows, opts, root, console)
    if interrupted:
        return 130
    return 0 if rows and all(r.counts for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
