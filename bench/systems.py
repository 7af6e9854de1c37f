"""The registry of systems a benchmark measures, and the two baselines.

Why a registry: the runner (`bench.run`) knows how to build servers, networks and workloads,
time them and verify the result; it does not know how to start any particular sync system. A
system is a `SystemSpec`: how to bring staging to the "already synced" starting state, how to
start the system so it sees every change written from then on, how to find a staging document
for a production one, and how to verify. Modules listed in `SYSTEM_MODULES` each provide
`systems(options) -> list[SystemSpec]`.

Registered: this module (the baselines `naive`, `limit`, `minimal`, `minimal-idx` and, for the
resync scenario, `copy` and `copy-idx`)
and `bench.product` (stagesync itself). Another system plugs in the same way; see
bench/README.md, "Adding another system".
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import Any, Protocol

from pymongo import MongoClient
from stagesync.rules.sync_meta import SYNC

from bench.completion import ByProductionId, StagingLocator
from bench.minimal_sync import DEFAULT_IN_LIST_MAX as BASELINE_IN_LIST_MAX
from bench.minimal_sync import SOFT_DELETE_FIELD, prepare_staging
from bench.naive_sync import create_key_index
from bench.procs import (
    collection,
    python_module,
    read_json,
    spawn,
    stop_process,
    wait_for_file,
)
from bench.verify_equal import VerifyResult, verify_uris
from bench.workload import BUSINESS_KEY, Expected

# Modules providing `systems(options) -> list[SystemSpec]`, in table order.
SYSTEM_MODULES: list[str] = ["bench.systems", "bench.product"]
READY_TIMEOUT = 60.0  # seconds a system may take to start


@dataclass(frozen=True)
class RunOptions:
    """Sizes and knobs of a run, as given on the command line."""

    docs: int = 20_000
    changes: int = 100_000
    naive_changes: int = 3_000
    rate: float = 300.0
    duration: float = 60.0
    seed: int = 1
    timeout: float | None = None  # per measurement; None = derived from the sizes
    profile_staging: bool = False  # the staging server's profiler on (bench.staging_profile)
    py_spy: bool = False  # py-spy on the system's processes while measured (bench.pyspy)
    # The burst's mix (bench.workload.make_ops): the share of documents that is hot (30 % of
    # the updates go to them) and the share of deletes. Issue 30's burst: 0.10 and 0.03.
    hot_share: float = 0.05
    delete_share: float = 0.05


@dataclass(frozen=True)
class BenchContext:
    """Everything a system needs to know about one measured run."""

    scenario: str  # "burst" | "steady" | "resync"
    network: str  # "loopback" | "2ms"
    prod_uri: str  # what the system must use (through the delay proxy at 2 ms)
    staging_uri: str
    prod_direct_uri: str  # for untimed preparation and for verification only
    staging_direct_uri: str
    workdir: Path  # logs and scratch files of this run
    max_seconds: float  # the system must stop by itself after this long
    source: str = "production.orders"
    target: str = "staging.orders"
    business_key: tuple[str, ...] = BUSINESS_KEY
    redis_url: str | None = None  # a private Redis, started when the spec asks for one


class RunningSystem(Protocol):
    """A started system: its processes (for peak RSS) and how to stop it."""

    def processes(self) -> dict[str, int]:
        """Role -> PID of each main process; descendants are found from /proc."""
        ...

    def stop(self) -> dict[str, Any]:
        """Stop everything it started (idempotent); returns counters worth showing."""
        ...


@dataclass
class ResyncOutcome:
    """One measured full copy of production into staging (scenario "resync")."""

    documents: int
    seconds: float  # the copy's own start -> done
    wall_seconds: float | None = None  # command launched -> exited, when run as a command
    summary: dict[str, int] = field(default_factory=dict)  # created / updated / unchanged ...
    rss: dict[str, float] = field(default_factory=dict)  # of processes that already ended
    # CPU seconds the copy's process spent before its clock started (interpreter start-up,
    # imports, connections): left out of its cost, as its time leaves them out.
    setup_cpu: float = 0.0


@dataclass(frozen=True)
class SystemSpec:
    name: str
    summary: str
    # Bring staging to the "already synced" starting state, untimed (direct URIs allowed).
    prepare: Callable[[BenchContext, Sequence[dict[str, Any]]], None]
    # Start the system; return only once it will see every change written from now on.
    start: Callable[[BenchContext], RunningSystem]
    # Find staging documents for production ones (completion and lag probes).
    locator: StagingLocator
    # Whole-collection check after the run (direct connections).
    verify: Callable[[BenchContext], VerifyResult]
    # Largest burst it is measured on (None = the full burst); its rate is then extrapolated.
    max_changes: int | None = None
    scenarios: frozenset[str] = frozenset({"burst", "steady"})
    needs_redis: bool = False
    notes: list[str] = field(default_factory=list)
    # Scenario "resync": copy all of production into staging with the started system. Cases:
    # "empty" (staging empty) and "again" (`prepare` ran first: staging already holds them).
    resync: Callable[[BenchContext, RunningSystem], ResyncOutcome] | None = None
    resync_cases: tuple[str, ...] = ()
    # A system that copies only part of production: does it copy this document? Those it
    # does not are expected absent from staging (`bench.completion.expectations`). None: all.
    copies: Callable[[Expected], bool] | None = None
    # Measured only when named in `--systems` (variants that would otherwise lengthen every
    # default run, e.g. the product with references or a subset configured).
    opt_in: bool = False


def load_systems(options: RunOptions, modules: Sequence[str] | None = None) -> list[SystemSpec]:
    """Every registered system, in `SYSTEM_MODULES` order."""
    specs: list[SystemSpec] = []
    for name in modules or SYSTEM_MODULES:
        specs.extend(importlib.import_module(name).systems(options))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate system names: {names}")
    return specs


# -- the baselines ---------------------------------------------------------------------------
@dataclass
class ProcessSystem:
    """Child processes started by `spawn`; stats files are read back after they stop."""

    procs: dict[str, Popen[bytes]]
    stats_files: dict[str, Path]

    def processes(self) -> dict[str, int]:
        return {role: p.pid for role, p in self.procs.items()}

    def stop(self) -> dict[str, Any]:
        for proc in self.procs.values():
            stop_process(proc)
        out: dict[str, Any] = {}
        for path in self.stats_files.values():
            out.update(read_json(path))
        return out


def _baseline_start(name: str, module: str, *extra: str) -> Callable[[BenchContext], RunningSystem]:
    def start(ctx: BenchContext) -> RunningSystem:
        ready, stats = ctx.workdir / f"{name}.ready", ctx.workdir / f"{name}.stats.json"
        argv = python_module(
            module, "--prod", ctx.prod_uri, "--staging", ctx.staging_uri, "--source", ctx.source,
            "--target", ctx.target, "--key", ",".join(ctx.business_key),
            "--ready-file", str(ready), "--stats-file", str(stats),
            "--max-seconds", str(ctx.max_seconds), *extra,
        )
        proc = spawn(argv, ctx.workdir, name)
        try:
            wait_for_file(ready, proc, READY_TIMEOUT)
        except BaseException:
            stop_process(proc)
            raise
        return ProcessSystem({name: proc}, {name: stats})

    return start


def _copy_prepare(with_key_index: bool) -> Callable[[BenchContext, Sequence[dict[str, Any]]], None]:
    """Staging starts as a straight copy of production (same `_id`s), as after a full copy."""

    def prepare(ctx: BenchContext, docs: Sequence[dict[str, Any]]) -> None:
        client: MongoClient[Any] = MongoClient(ctx.staging_direct_uri)
        try:
            staging = collection(client, ctx.target)
            if with_key_index:
                create_key_index(staging, ctx.business_key)
            for start in range(0, len(docs), 5000):
                staging.insert_many(list(docs[start : start + 5000]), ordered=False)
        finally:
            client.close()

    return prepare


def _verify_by_id(ctx: BenchContext) -> VerifyResult:
    return verify_uris(ctx.prod_direct_uri, ctx.staging_direct_uri, ctx.source, ctx.target,
                       match_on=("_id",))


@dataclass
class NoProcesses:
    """A system whose measured work runs inside its `resync` call (the copy baseline)."""

    def processes(self) -> dict[str, int]:
        return {}

    def stop(self) -> dict[str, Any]:
        return {}


def _minimal_prepare(product_indexes: bool
                     ) -> Callable[[BenchContext, Sequence[dict[str, Any]]], None]:
    def prepare(ctx: BenchContext, docs: Sequence[dict[str, Any]]) -> None:
        client: MongoClient[Any] = MongoClient(ctx.staging_direct_uri)
        try:
            prepare_staging(collection(client, ctx.target), ctx.source, ctx.business_key, docs,
                            product_indexes)
        finally:
            client.close()

    return prepare


def _verify_soft_deleted(product_indexes: bool) -> Callable[[BenchContext], VerifyResult]:
    def verify(ctx: BenchContext) -> VerifyResult:
        return verify_uris(ctx.prod_direct_uri, ctx.staging_direct_uri, ctx.source, ctx.target,
                           match_on=("_id",), soft_delete_field=SOFT_DELETE_FIELD,
                           ignore_fields=[SYNC] if product_indexes else [])

    return verify


def _copy_system(name: str, summary: str, *flags: str) -> SystemSpec:
    """A resync-only baseline: `bench.plain_copy` with these flags, into an empty staging."""
    return SystemSpec(
        name=name,
        summary=summary,
        prepare=lambda _ctx, _docs: None,
        start=lambda _ctx: NoProcesses(),
        locator=ByProductionId(),
        verify=(_verify_soft_deleted(product_indexes=True) if "--product-indexes" in flags
                else _verify_by_id),
        scenarios=frozenset({"resync"}),
        resync=lambda ctx, _system: _copy(ctx, name, *flags),
        resync_cases=("empty",),
    )


def _copy(ctx: BenchContext, name: str, *extra: str) -> ResyncOutcome:
    stats_file = ctx.workdir / f"{name}.stats.json"
    proc = spawn(python_module("bench.plain_copy", "--prod", ctx.prod_uri, "--staging",
                               ctx.staging_uri, "--source", ctx.source, "--target", ctx.target,
                               "--stats-file", str(stats_file), *extra), ctx.workdir, name)
    try:
        code = proc.wait(ctx.max_seconds)
    finally:
        stop_process(proc)
    stats = read_json(stats_file)
    if code != 0 or not stats:
        raise RuntimeError(f"{name} exited with {code} (see {ctx.workdir / (name + '.log')})")
    return ResyncOutcome(int(stats["documents"]), float(stats["seconds"]),
                         rss={name: float(stats["peak_rss_mb"])},
                         setup_cpu=float(stats.get("setup_cpu_seconds") or 0.0))


def systems(options: RunOptions) -> list[SystemSpec]:
    """The two baselines of issue 5, and the plain-copy baseline of issue 4's resync."""
    return [
        SystemSpec(
            name="naive",
            summary="per event: read prod by _id, find staging by business key, insert/replace",
            prepare=_copy_prepare(with_key_index=True),
            start=_baseline_start("naive", "bench.naive_sync"),
            locator=ByProductionId(),
            verify=_verify_by_id,
            max_changes=options.naive_changes,
        ),
        SystemSpec(
            name="limit",
            summary="stream ids -> $in read -> unordered ReplaceOne/DeleteOne by _id",
            prepare=_copy_prepare(with_key_index=False),
            start=_baseline_start("limit", "bench.limit_copy"),
            locator=ByProductionId(),
            verify=_verify_by_id,
        ),
        SystemSpec(
            name="minimal",
            summary="one process: stream of documentKeys -> gather 1000 / 20 ms -> $in read -> "
                    "unordered bulk of ReplaceOne by business key (upsert) + soft deletes",
            prepare=_minimal_prepare(product_indexes=False),
            start=_baseline_start("minimal", "bench.minimal_sync", "--in-list-max",
                                  str(BASELINE_IN_LIST_MAX)),
            locator=ByProductionId(SOFT_DELETE_FIELD),
            verify=_verify_soft_deleted(product_indexes=False),
        ),
        SystemSpec(
            name="minimal-idx",
            summary="minimal, into staging with the product's index set and a _sync per doc",
            prepare=_minimal_prepare(product_indexes=True),
            start=_baseline_start("minimal-idx", "bench.minimal_sync", "--product-indexes",
                                  "--in-list-max", str(BASELINE_IN_LIST_MAX)),
            locator=ByProductionId(SOFT_DELETE_FIELD),
            verify=_verify_soft_deleted(product_indexes=True),
        ),
        _copy_system("copy-idx", "copy into staging with the product's index set, a _sync per "
                     "document", "--product-indexes"),
        _copy_system("copy-idx-after", "copy-idx the bulk loader's way: documents first, the "
                     "index set built after", "--product-indexes", "--indexes-after"),
        _copy_system("copy", "full copy: find (batches of 1000) + unordered insert_many into "
                     "empty staging"),
    ]
