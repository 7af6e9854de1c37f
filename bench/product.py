"""The product as a benchmarked system: `stagesync watch` plus Celery workers on a private Redis.

What runs (see bench/README.md, "The product"):
- a YAML configuration written into the run's workdir, pointing at `ctx.prod_uri` /
  `ctx.staging_uri` (through the delay proxies at 2 ms) and the private Redis the runner starts;
  one collection `orders`, business key `userEmail, accountId`, no PII rules, staging write
  concern `majority` (the product's default, which the test server accepts);
- `stagesync watch` and N x `celery -A stagesync.tasks worker -c K -P prefork --without-mingle
  --without-gossip -n bench-wN@%h`, each its own session, `STAGESYNC_CONFIG` set, inherited
  `STAGESYNC_*` variables removed (so the shell running the benchmark cannot change the config).

`prepare` (untimed, direct URIs, its own throw-away Redis) is the product's own bootstrap: a
watcher started with no checkpoint opens the stream, keeps its token and runs a full resync as
Celery tasks; prepare waits until the watcher records the resync as finished (`watchers` doc:
`lastResync` set, `resyncPending` cleared), then stops watcher and workers. The checkpoint it
leaves is where the measured watcher resumes.

`start` returns once every worker logged "ready" and the new watcher owns the collection (its
process id in the `watchers` doc), holds a checkpoint (`token`) and reports `streaming` in its Redis
heartbeat — i.e. its change stream is open. In the resync scenario only workers are started.

The product cannot watch its parent, so its processes get `PR_SET_PDEATHSIG` (SIGTERM when the
runner dies) and a timer SIGTERMs them after `ctx.max_seconds`.

Variants (`Variant`, bench/README.md "References and subsets"): `stagesync-refs` also configures
`users` and translates each order's `customerId` into the staging `_id` of its user's copy;
`stagesync-subset` copies a 10 % keyed sample of the users and exactly their orders. Both run
the same burst on orders; the harness decides subset membership with the product's own pure
`in_sample` and the same secret, never by reading staging.

Tuning, for trying alternatives without editing code: `BENCH_STAGESYNC_*` variables (see
`Tuning`; defaults are the settled configuration, 1 worker x -c 2 with the product's batching
defaults and `max_inflight_batches` = worker processes, resync chunks of 5000), e.g.
    BENCH_STAGESYNC_WORKERS=2 BENCH_STAGESYNC_BATCH=default python -m bench.run ...
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import redis
import yaml
from pymongo import MongoClient
from pymongo.collation import Collation
from pymongo.collection import Collection
from stagesync.protocol.names import RESYNCS, WATCHERS, watcher_key
from stagesync.rules.identity import encode_id
from stagesync.rules.subset import in_sample
from stagesync.rules.sync_meta import KEY_FIELD, PID_FIELD, SYNC, read_meta
from stagesync.settings import load_settings

from bench.procs import collection, spawn
from bench.systems import (
    BenchContext,
    ResyncOutcome,
    RunningSystem,
    RunOptions,
    SystemSpec,
)
from bench.verify_equal import VerifyResult, verify_equal, verify_uris
from bench.workload import BUSINESS_KEY, CUSTOMER, MARKER, USERS, USERS_KEY, Expected

VENV_BIN = Path(sys.executable).parent
COLLECTION = "orders"
SOFT_DELETE_FIELD = "deleted"
STATE_DB = "stagesync"
READY_TIMEOUT = 90.0  # seconds for workers to log "ready" and the watcher to stream
STOP_TIMEOUT = 30.0  # SIGTERM -> SIGKILL: the watcher drains for up to 5 s, workers finish a task
ENV_PREFIX = "BENCH_STAGESYNC_"
SIMPLE_COLLATION = Collation(locale="simple")
# `in_list_max` of the product and the length of the baselines' `$in` reads on the test server
# (MongoDB's default is 1000; SecantusDB's `$in` costs time quadratic in the list's length).
TEST_SERVER_IN_LIST_MAX = 200
# The test server decodes its whole oplog, holding its storage lock, for each read of the
# oplog window (settings: watcher.oplog_check_seconds); every 30 s that took a tenth or more of
# production's time in a seeded bench. MongoDB reads two entries and a statistic.
TEST_SERVER_OPLOG_CHECK_SECONDS = 600.0

# What the product is configured to sync: `plain` = orders alone (the `stagesync` row); `refs`
# = users too, orders.customerId declared a reference to them; `subset` = a `percent` sample
# of the users and the orders that follow them through that reference; `follow` = refs, and
# orders follow their users with every user kept (the environments bench: `env create
# --sample P` then samples the users, and the orders follow).
Variant = Literal["plain", "refs", "subset", "follow"]
SUBSET_PERCENT = 10.0
# Fixed, so the harness can tell which documents the product copies (`subset_member`) with
# the same keyed hash; it keys nothing else here (no PII rules are configured).
PII_SECRET = "stagesync-bench-subset-sample"


# -- tuning --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tuning:
    """Process layout and the few settings worth varying; None = the product's default."""

    workers: int = 1
    concurrency: int = 2
    batch: int | None = None  # watcher.batch_max_size (product default 2000)
    batch_wait_ms: int | None = None  # watcher.batch_max_wait_ms (product default 20)
    busy_wait_ms: int | None = None  # watcher.busy_batch_wait_ms (product default 250)
    partitions: int | None = None  # collections[].partitions (product default 1)
    fetch_gap_ms: int | None = None  # watcher.stream_fetch_gap_ms (product default 50; 0: off)
    hold: str | None = None  # watcher.hold_changes_in_flight: "true" / "false" (default true)
    resync_chunk: int | None = 5000  # collections[].resync_chunk_size (product default 1000)
    write_concern: str = "majority"
    log_level: str = "INFO"
    pool: str = "prefork"
    # Resync cases measured: "empty" and/or "again" (an already-synced staging).
    resync_cases: str = "empty,again"
    # The product's `in_list_max`: the test server's value unless set; None ("default") is the
    # product's own, MongoDB's 1000, which shows the staging messages per apply there (the
    # view reads are `$in` lists of this length).
    in_list_max: int | None = TEST_SERVER_IN_LIST_MAX

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Tuning:
        values: dict[str, Any] = {}
        for item in fields(cls):
            raw = env.get(ENV_PREFIX + item.name.upper())
            if raw is None or raw == "":
                continue
            if raw.lower() == "default" and item.name in _INT_TUNING[2:]:
                values[item.name] = None  # the product's own default
                continue
            values[item.name] = int(raw) if item.name in _INT_TUNING else raw
        return cls(**values)

    def describe(self) -> str:
        parts = [f"{self.workers} worker{'s' if self.workers != 1 else ''} x -c "
                 f"{self.concurrency} ({self.pool})",
                 f"batch_max_size {self.batch or 'default (2000)'}",
                 f"max_inflight_batches {self.workers * self.concurrency}",
                 f"batch_max_wait_ms {self.batch_wait_ms or 'default (20)'}",
                 f"busy_batch_wait_ms {self.busy_wait_ms or 'default (250)'}",
                 f"partitions {self.partitions or 'default (1)'}",
                 "stream_fetch_gap_ms "
                 + ("default (50)" if self.fetch_gap_ms is None else str(self.fetch_gap_ms)),
                 f"hold_changes_in_flight {self.hold or 'default (true)'}",
                 f"resync_chunk_size {self.resync_chunk or 'default (1000)'}",
                 f"staging w={self.write_concern}", f"log {self.log_level}",
                 f"in_list_max {self.in_list_max or 'default (1000)'}"]
        return ", ".join(parts)

    def env_assignments(self) -> str:
        """The BENCH_STAGESYNC_* settings that differ from the defaults, for reproducing."""
        default = Tuning()
        return " ".join(f"{ENV_PREFIX}{f.name.upper()}={getattr(self, f.name)}"
                        for f in fields(self) if getattr(self, f.name) != getattr(default,
                                                                                  f.name))


# Integer tunings; all but the first two may be `default` (the product's own value).
_INT_TUNING = ("workers", "concurrency", "batch", "batch_wait_ms", "busy_wait_ms",
               "partitions", "fetch_gap_ms", "resync_chunk", "in_list_max")


# -- configuration ---------------------------------------------------------------------------------
def users_namespaces(ctx: BenchContext) -> tuple[str, str]:
    """(production, staging) namespaces of the users, beside the orders on each side."""
    return (f"{ctx.source.partition('.')[0]}.{USERS}", f"{ctx.target.partition('.')[0]}.{USERS}")


def collection_names(variant: Variant) -> tuple[str, ...]:
    """The configured collections, referenced ones first (the order `prepare` bootstraps)."""
    return (COLLECTION,) if variant == "plain" else (USERS, COLLECTION)


def collection_configs(
    ctx: BenchContext, tuning: Tuning, variant: Variant = "plain",
    only: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The `collections` entries of a variant (those named in `only`, when given)."""
    users_source, users_target = users_namespaces(ctx)
    entries: dict[str, dict[str, Any]] = {
        USERS: {"name": USERS, "source": users_source, "target": users_target,
                "business_key": list(USERS_KEY), "soft_delete_field": SOFT_DELETE_FIELD},
        COLLECTION: {"name": COLLECTION, "source": ctx.source, "target": ctx.target,
                     "business_key": list(ctx.business_key),
                     "soft_delete_field": SOFT_DELETE_FIELD},
    }
    if variant != "plain":
        entries[COLLECTION]["references"] = {CUSTOMER: USERS}
    if variant == "subset":
        entries[USERS]["subset"] = {"percent": SUBSET_PERCENT}
    if variant in ("subset", "follow"):
        entries[COLLECTION]["subset"] = {"follow": CUSTOMER}
    out = []
    for name in collection_names(variant):
        if only is not None and name not in only:
            continue
        entry = entries[name]
        if tuning.partitions:
            entry["partitions"] = tuning.partitions
        if tuning.resync_chunk:
            entry["resync_chunk_size"] = tuning.resync_chunk
        out.append(entry)
    return out


def write_config(
    path: Path, ctx: BenchContext, prod_uri: str, staging_uri: str, redis_url: str,
    tuning: Tuning, variant: Variant = "plain", only: Sequence[str] | None = None,
) -> Path:
    """A stagesync YAML configuration (validated by the product's own loader); `only` limits
    it to some of the variant's collections (the two-step bootstrap of `_prepare`)."""
    write_concern: str | int = (int(tuning.write_concern) if tuning.write_concern.isdigit()
                                else tuning.write_concern)
    data: dict[str, Any] = {
        "prod": {"uri": prod_uri},
        "staging": {"uri": staging_uri, "write_concern": write_concern, "state_db": STATE_DB},
        "redis_url": redis_url,
        "collections": collection_configs(ctx, tuning, variant, only),
        # A numeric write concern is a measured trade-off here, not a production setting.
        "allow_unsafe_concerns": write_concern != "majority",
        # The test server's `$in` is quadratic in the list's length (README, in_list_max).
    }
    if tuning.in_list_max is not None:
        data["in_list_max"] = tuning.in_list_max
    if variant in ("subset", "follow"):
        data["pii_secret"] = PII_SECRET
    # One batch in flight per worker process: more only queue up as small batches.
    watcher = {"batch_max_size": tuning.batch, "batch_max_wait_ms": tuning.batch_wait_ms,
               "busy_batch_wait_ms": tuning.busy_wait_ms,
               "stream_fetch_gap_ms": tuning.fetch_gap_ms,
               "hold_changes_in_flight": (None if tuning.hold is None
                                          else tuning.hold.lower() == "true"),
               "max_inflight_batches": tuning.workers * tuning.concurrency,
               "oplog_check_seconds": TEST_SERVER_OPLOG_CHECK_SECONDS}
    data["watcher"] = {k: v for k, v in watcher.items() if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    load_settings(path)  # fail here, readably, rather than in four child processes
    return path


def child_env(config: Path, tuning: Tuning) -> dict[str, str]:
    """The runner's environment without any STAGESYNC_* override, plus the config path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGESYNC_")}
    env["STAGESYNC_CONFIG"] = str(config)
    env["STAGESYNC_LOG_LEVEL"] = tuning.log_level
    return env


# -- processes -------------------------------------------------------------------------------------
@dataclass
class ProductProcesses:
    """The watcher and workers of one run; stop() is idempotent and returns Redis counters."""

    workdir: Path
    config: Path
    tuning: Tuning
    redis_url: str
    max_seconds: float
    tag: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _baseline: dict[str, int] | None = None
    _counters: dict[str, Any] | None = None
    _timer: threading.Timer | None = None
    _window: WindowSampler | None = None

    def __post_init__(self) -> None:
        self._timer = threading.Timer(self.max_seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _spawn(self, role: str, argv: list[str]) -> subprocess.Popen[bytes]:
        proc = spawn(argv, self.workdir, f"{self.tag}{role}",
                     env=child_env(self.config, self.tuning), die_with_parent=True)
        self.procs[role] = proc
        return proc

    def start_workers(self) -> None:
        for n in range(1, self.tuning.workers + 1):
            self._spawn(f"worker-{n}", [
                str(VENV_BIN / "celery"), "-A", "stagesync.tasks", "worker", "-c",
                str(self.tuning.concurrency), "-P", self.tuning.pool,
                "-n", f"bench-{self.tag}w{n}@%h", "--without-mingle", "--without-gossip",
                "-l", self.tuning.log_level,
            ])

    def start_watcher(self) -> subprocess.Popen[bytes]:
        return self._spawn("watcher", [str(VENV_BIN / "stagesync"), "watch"])

    def log_path(self, role: str) -> Path:
        return self.workdir / f"{self.tag}{role}.log"

    def check_alive(self) -> None:
        for role, proc in self.procs.items():
            if proc.poll() is not None:
                tail = self.log_path(role).read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(f"{role} exited with {proc.returncode}:\n" + "\n".join(tail))

    def wait_workers_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until every worker logged Celery's "<name>@<host> ready." line."""
        waiting = {role for role in self.procs if role.startswith("worker-")}

        def all_ready() -> bool:
            for role in list(waiting):
                if _logged_ready(self.log_path(role), f"bench-{self.tag}w{role[7:]}@"):
                    waiting.discard(role)
            return not waiting

        wait_until(all_ready, timeout, "workers ready", self.check_alive)

    def snapshot_redis(self) -> None:
        """Start counting Redis commands from here (`INFO commandstats` deltas)."""
        self._baseline = redis_command_calls(self.redis_url)
        if "watcher" in self.procs:
            self._window = WindowSampler(self.redis_url)

    def processes(self) -> dict[str, int]:
        return {role: proc.pid for role, proc in self.procs.items()}

    def stop(self) -> dict[str, Any]:
        if self._counters is not None:
            return self._counters
        counters: dict[str, Any] = {}
        if self._baseline is not None:
            with contextlib.suppress(redis.RedisError):
                counters = redis_counters(self._baseline, redis_command_calls(self.redis_url))
        if self._window is not None:
            counters["window"] = self._window.stop()
        self._terminate()
        if self._timer is not None:
            self._timer.cancel()
        self._counters = counters
        return counters

    def _terminate(self) -> None:
        # The watcher first: it stops publishing, drains and saves its checkpoint.
        order = sorted(self.procs, key=lambda role: role != "watcher")
        for role in order:
            self._signal(self.procs[role], signal.SIGTERM)
            if role == "watcher":
                _wait(self.procs[role], STOP_TIMEOUT)
        for role in order:
            _wait(self.procs[role], STOP_TIMEOUT)

    def _expire(self) -> None:
        for proc in self.procs.values():
            self._signal(proc, signal.SIGTERM)

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # the Celery main process; its pool children die with it
        proc.wait(10)


def _logged_ready(log: Path, name: str) -> bool:
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            if name in line and " ready." in line:
                return True
    return False


def wait_until(
    check: Callable[[], Any], timeout: float, what: str, alive: Callable[[], None],
    interval: float = 0.1,
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive()
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


class WindowSampler:
    """Samples, twice a second while a row is measured, what the watcher reports in its Redis
    heartbeat (groups and changes in flight, its state) and the depth of the queue: the groups
    in flight and the time under backpressure of the bench's notes."""

    def __init__(self, redis_url: str, name: str = COLLECTION, interval: float = 0.5) -> None:
        self._client = redis.Redis.from_url(redis_url, socket_timeout=10, decode_responses=True)
        self._name, self._interval = name, interval
        self._done = threading.Event()
        self.samples: list[tuple[int, int, int, str]] = []  # groups, unapplied, queue, state
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from stagesync.deployments.broker import queue_depth
        from stagesync.protocol.names import queue_names

        queue = queue_names(self._name, 1)[0]
        while not self._done.wait(self._interval):
            with contextlib.suppress(redis.RedisError, ValueError):
                state = self._client.hgetall(watcher_key(self._name))
                self.samples.append((int(state.get("groups") or 0),
                                     int(state.get("unapplied") or 0),
                                     queue_depth(self._client, queue), state.get("state", "")))

    def stop(self) -> dict[str, Any]:
        self._done.set()
        self._thread.join(5)
        self._client.close()
        busy = [s for s in self.samples if s[0]]
        if not busy:
            return {}
        groups = sorted(s[0] for s in busy)
        return {"groups_p50": groups[(len(groups) - 1) // 2], "groups_max": groups[-1],
                "unapplied_max": max(s[1] for s in busy), "queue_max": max(s[2] for s in busy),
                "backpressure_s": self._interval * sum(s[3] == "backpressure" for s in busy),
                "samples": len(self.samples)}


# -- Redis accounting ------------------------------------------------------------------------------
def redis_command_calls(url: str) -> dict[str, int]:
    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def redis_counters(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, Any]:
    """Commands the system sent between two snapshots (the snapshots' own INFO excluded)."""
    delta = {name: calls - before.get(name, 0) for name, calls in after.items()
             if name != "info" and calls - before.get(name, 0) > 0}
    top = sorted(delta.items(), key=lambda item: -item[1])[:8]
    return {
        "redis_calls": sum(delta.values()),
        "redis_lpush": delta.get("lpush", 0),  # Celery task messages published to queues
        "redis_rpush": delta.get("rpush", 0),  # workers' done reports to the watcher
        "redis_publish": delta.get("publish", 0),  # Celery events (pub/sub)
        "redis_top": ", ".join(f"{name} {calls}" for name, calls in top),
    }


# -- the watcher's records in staging ----------------------------------------------------------
def state_collection(client: MongoClient[Any], name: str) -> Collection[Any]:
    return client[STATE_DB][name]


def watcher_doc(client: MongoClient[Any], name: str = COLLECTION) -> dict[str, Any]:
    return state_collection(client, WATCHERS).find_one({"_id": name}) or {}


def wait_streaming(
    procs: ProductProcesses, staging_direct_uri: str, timeout: float = READY_TIMEOUT,
    names: Sequence[str] = (COLLECTION,),
) -> None:
    """Until the watcher we started owns each collection, holds a checkpoint and streams."""
    pid = procs.procs["watcher"].pid
    client: MongoClient[Any] = MongoClient(staging_direct_uri)
    heartbeat = redis.Redis.from_url(procs.redis_url, socket_timeout=10)
    try:
        def one_streaming(name: str) -> bool:
            doc = watcher_doc(client, name)
            if doc.get("processId") != pid or not doc.get("owner") or not doc.get("token"):
                return False
            state = heartbeat.hgetall(watcher_key(name))
            return (state.get(b"owner") == str(doc["owner"]).encode()
                    and state.get(b"state") in (b"streaming", b"backpressure"))

        def streaming() -> bool:
            return all(one_streaming(name) for name in names)

        wait_until(streaming, timeout, "the watcher streaming", procs.check_alive)
    finally:
        client.close()
        heartbeat.close()


# -- the spec's callables --------------------------------------------------------------------------
def bootstrap_steps(variant: Variant) -> list[tuple[str, ...]]:
    """The collections configured at each step of `prepare`. Referenced collections come
    first, alone: an order bootstrapped before its user's copy exists would keep production's
    `customerId` (pending until the copy arrives) or, following a subset, be left out until the
    user's entry brings it in, all asynchronously; in two steps the second bootstrap finds
    every copy it references, and its end is the end of the work."""
    names = collection_names(variant)
    return [names[:n] for n in range(1, len(names) + 1)]


def _prepare(
    tuning: Tuning, variant: Variant = "plain"
) -> Callable[[BenchContext, Sequence[dict[str, Any]]], None]:
    """Bootstrap, untimed, over direct connections and a throw-away Redis (see module doc)."""

    def prepare(ctx: BenchContext, docs: Sequence[dict[str, Any]]) -> None:
        from stagesync.cli.local_servers import start_redis

        workdir = ctx.workdir / "prepare"
        scratch = start_redis(workdir=workdir / "redis")
        timeout = 120 + len(docs) / 20
        client: MongoClient[Any] = MongoClient(ctx.staging_direct_uri)
        try:
            steps = bootstrap_steps(variant)
            for step, names in enumerate(steps):
                # The last step keeps the names the single-collection bootstrap always had.
                suffix = "" if step == len(steps) - 1 else f"-{'-'.join(names)}"
                config = write_config(workdir / f"stagesync{suffix}.yaml", ctx,
                                      ctx.prod_direct_uri, ctx.staging_direct_uri, scratch.uri,
                                      tuning, variant, only=names)
                procs = ProductProcesses(workdir, config, tuning, scratch.uri, timeout + 60,
                                         tag=f"prepare{suffix}-")
                try:
                    procs.start_workers()
                    procs.start_watcher()

                    def bootstrapped(names: tuple[str, ...] = names) -> bool:
                        docs = [watcher_doc(client, name) for name in names]
                        return all(doc.get("token") and doc.get("lastResync")
                                   and not doc.get("resyncPending") for doc in docs)

                    wait_until(bootstrapped, timeout, f"the bootstrap resync of {names}",
                               procs.check_alive, 0.5)
                finally:
                    procs.stop()
        finally:
            client.close()
            scratch.stop()

    return prepare


def _start(
    tuning: Tuning, locator: BySyncPid, variant: Variant = "plain"
) -> Callable[[BenchContext], RunningSystem]:
    def start(ctx: BenchContext) -> RunningSystem:
        if ctx.redis_url is None:
            raise RuntimeError("stagesync needs the runner's private Redis (needs_redis=True)")
        config = write_config(ctx.workdir / "stagesync.yaml", ctx, ctx.prod_uri,
                              ctx.staging_uri, ctx.redis_url, tuning, variant)
        procs = ProductProcesses(ctx.workdir, config, tuning, ctx.redis_url, ctx.max_seconds)
        try:
            procs.start_workers()
            if ctx.scenario != "resync":
                procs.start_watcher()
            procs.wait_workers_ready()
            if ctx.scenario != "resync":
                wait_streaming(procs, ctx.staging_direct_uri, names=collection_names(variant))
            if ctx.scenario != "resync":
                prime_locator(locator, ctx)
            procs.snapshot_redis()
        except BaseException:
            procs.stop()
            raise
        return procs

    return start


def prime_locator(locator: BySyncPid, ctx: BenchContext) -> None:
    client: MongoClient[Any] = MongoClient(ctx.staging_direct_uri)
    try:
        db, _, name = ctx.target.partition(".")
        locator.prime(client[db][name])
    finally:
        client.close()


def _resync(tuning: Tuning) -> Callable[[BenchContext, RunningSystem], ResyncOutcome]:
    """`stagesync resync orders --wait` against the started workers, timed two ways."""

    def resync(ctx: BenchContext, system: RunningSystem) -> ResyncOutcome:
        assert isinstance(system, ProductProcesses)
        client: MongoClient[Any] = MongoClient(ctx.staging_direct_uri)
        try:
            before = {d["_id"] for d in state_collection(client, RESYNCS).find(
                {"kind": {"$eq": "resync"}}, {"_id": 1})}
            log = ctx.workdir / "resync-command.log"
            started = time.monotonic()
            with open(log, "ab") as out:
                code = subprocess.run(
                    [str(VENV_BIN / "stagesync"), "resync", COLLECTION, "--wait", "--timeout",
                     str(int(ctx.max_seconds))],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=child_env(system.config, tuning), timeout=ctx.max_seconds + 60,
                    check=False,
                ).returncode
            wall = time.monotonic() - started
            records = [d for d in state_collection(client, RESYNCS).find(
                {"kind": {"$eq": "resync"}}) if d["_id"] not in before]
        finally:
            client.close()
        if code != 0 or len(records) != 1:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
            raise RuntimeError(f"stagesync resync exited with {code} "
                               f"({len(records)} new resync records):\n{tail}")
        record = records[0]
        seconds = (record["finishedAt"] - record["startedAt"]).total_seconds()
        if not 0 < seconds <= wall + 1:  # clocks disagree: fall back to the command's time
            seconds = wall
        return ResyncOutcome(int(record.get("total") or 0), seconds, wall_seconds=wall,
                             summary={k: int(v) for k, v in (record.get("summary") or {}).items()})

    return resync


@dataclass
class ProductVerifyResult(VerifyResult):
    """The harness's strict comparison, and the product's own `stagesync verify`."""

    tool_exit: int | None = None
    tool_problem: str = ""  # what `stagesync verify` reported, when it failed

    @property
    def data_ok(self) -> bool:
        """The harness's own document-by-document comparison passed."""
        return super().ok

    @property
    def ok(self) -> bool:
        return self.data_ok and self.tool_exit == 0


def subset_member(production_id: Any) -> bool:
    """Is this production user in the subset variant's sample? The product's own pure function
    (`rules.subset.in_sample`, as `tasks.apply.applier.ApplyContext.sampled` calls it) over the
    same encoded `_id`, percent and secret as the configuration `write_config` writes."""
    return in_sample(encode_id(production_id), SUBSET_PERCENT, PII_SECRET.encode())


def order_member(customer: Any) -> bool:
    """Does the subset variant copy an order with this `customerId`? It follows its user: in
    exactly when the user is (users are never deleted or changed here, so a sampled user
    always has a live copy); an order with no customer references nothing and is out."""
    return customer is not None and subset_member(customer)


def order_copied(expected: Expected) -> bool:
    """`SystemSpec.copies` of the subset variant (the burst never changes `customerId`)."""
    return order_member(expected.customer)


def live_copies(coll: Collection[Any]) -> dict[str, Any]:
    """Encoded production `_id` -> staging `_id` of every live synced document (the product's
    notion of live, as its reference lookup reads it)."""
    out: dict[str, Any] = {}
    for doc in coll.find({}, {SYNC: 1, SOFT_DELETE_FIELD: 1}):
        meta = read_meta(doc)
        if isinstance(meta.pid, str) and not meta.deleted and not doc.get(SOFT_DELETE_FIELD):
            out[meta.pid] = doc["_id"]
    return out


def translated_references(copies: Mapping[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A production order as staging must hold it: `customerId` = the staging `_id` of its
    user's live copy. (With `staging_ids: production` that is usually production's own value,
    so a plain comparison could not tell a translated reference from an untouched one; this
    one fails when the copy is missing or has another `_id`.)"""

    def expected(doc: dict[str, Any]) -> dict[str, Any]:
        value = doc.get(CUSTOMER)
        if value is None:
            return doc
        copy = copies.get(encode_id(value))
        return {**doc, CUSTOMER: copy if copy is not None
                else f"<no live staging copy of {USERS} {value!r}>"}

    return expected


def strict_verify(ctx: BenchContext, variant: Variant) -> VerifyResult:
    """The harness's document-by-document comparison: orders (and, for the variants, users,
    counted in the same result), restricted to the subset when there is one."""
    if variant == "plain":
        return verify_uris(ctx.prod_direct_uri, ctx.staging_direct_uri, ctx.source, ctx.target,
                           match_on=tuple(ctx.business_key), ignore_fields=[SYNC],
                           soft_delete_field=SOFT_DELETE_FIELD)
    users_source, users_target = users_namespaces(ctx)
    sampled = variant == "subset"
    prod: MongoClient[Any] = MongoClient(ctx.prod_direct_uri, serverSelectionTimeoutMS=10000)
    staging: MongoClient[Any] = MongoClient(ctx.staging_direct_uri,
                                            serverSelectionTimeoutMS=10000)
    try:
        users = verify_equal(
            collection(prod, users_source), collection(staging, users_target),
            match_on=USERS_KEY, ignore_fields=[SYNC], soft_delete_field=SOFT_DELETE_FIELD,
            include=(lambda doc: subset_member(doc["_id"])) if sampled else None)
        orders = verify_equal(
            collection(prod, ctx.source), collection(staging, ctx.target),
            match_on=tuple(ctx.business_key), ignore_fields=[SYNC],
            soft_delete_field=SOFT_DELETE_FIELD,
            include=(lambda doc: order_member(doc.get(CUSTOMER))) if sampled else None,
            expected=translated_references(live_copies(collection(staging, users_target))))
    finally:
        prod.close()
        staging.close()
    orders.add(users, USERS)
    return orders


def _verify(tuning: Tuning, variant: Variant = "plain") -> Callable[[BenchContext], VerifyResult]:
    def verify(ctx: BenchContext) -> VerifyResult:
        result = ProductVerifyResult(**vars(strict_verify(ctx, variant)))
        # The product's own verify, over DIRECT connections (never through the proxies), of
        # every configured collection (it compares only the subset, and checks references).
        config = write_config(ctx.workdir / "stagesync-verify.yaml", ctx, ctx.prod_direct_uri,
                              ctx.staging_direct_uri, ctx.redis_url or "redis://127.0.0.1:1/0",
                              tuning, variant)
        log = ctx.workdir / "verify-command.log"
        result.tool_exit = 0
        for name in collection_names(variant):
            with open(log, "ab") as out:
                code = subprocess.run(
                    [str(VENV_BIN / "stagesync"), "verify", name, "--settle", "5"],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=child_env(config, tuning), timeout=900, check=False,
                ).returncode
            if code != 0 and result.tool_exit == 0:
                result.tool_exit = code
                if variant != "plain":
                    result.tool_problem = f"{name}: "
        if result.tool_exit != 0:
            dump = ctx.workdir / "dead-letters.json"
            reasons = dump_dead_letters(ctx, dump)
            result.tool_problem += (f"exit {result.tool_exit}" + (
                ", open dead letters: " + ", ".join(f"{n} {r}" for r, n in reasons.items())
                if reasons else ""))
            result.examples.insert(0, f"stagesync verify exited with {result.tool_exit} "
                                      f"(report: {log}; dead letters: {dump})")
        return result

    return verify


def dump_dead_letters(ctx: BenchContext, path: Path) -> dict[str, int]:
    """For a failed verification: every open dead letter, beside the staging documents that
    hold its pid or its business key, and whether production still has the document."""
    from bson import json_util
    from stagesync.protocol.names import DEAD_LETTERS
    from stagesync.rules.identity import decode_id

    staging: MongoClient[Any] = MongoClient(ctx.staging_direct_uri)
    prod: MongoClient[Any] = MongoClient(ctx.prod_direct_uri)
    try:
        target = staging[ctx.target.partition(".")[0]][ctx.target.partition(".")[2]]
        source = prod[ctx.source.partition(".")[0]][ctx.source.partition(".")[2]]
        out = []
        for entry in state_collection(staging, DEAD_LETTERS).find({"state": {"$eq": "open"}}):
            pid = entry.get("pid")
            holders = list(target.find({KEY_FIELD: {"$eq": entry.get("key")}}, {SYNC: 1,
                                       MARKER: 1, SOFT_DELETE_FIELD: 1})) if entry.get(
                                       "key") else []
            out.append({
                "entry": entry,
                "staging_by_pid": list(target.find({PID_FIELD: {"$eq": pid}},
                                                   {SYNC: 1, MARKER: 1, SOFT_DELETE_FIELD: 1})),
                "staging_by_key": holders,
                "production": source.find_one({"_id": decode_id(pid)}, {MARKER: 1})
                if pid else None,
            })
        path.write_text(json_util.dumps(out, indent=1))
        reasons: dict[str, int] = {}
        for item in out:
            reason = str(item["entry"].get("reason"))
            reasons[reason] = reasons.get(reason, 0) + 1
        return reasons
    finally:
        staging.close()
        prod.close()


@dataclass
class BySyncPid:
    """Staging documents by the production `_id` they record (`_sync.pid`), probed cheaply.

    Why not query `_sync.pid` with `$in` each time: the completion and lag probes poll every
    20-50 ms, and on SecantusDB a `$in` on the product's sparse `_sync.pid` index costs more per
    value than one on `_id`.
    Instead `prime()` (called at the end of `start`, untimed) maps every production `_id` to its
    staging `_id` with one scan, polls use `{"_id": {"$in": ...}}`, and a document created
    during the run is found once by its business key (the product's compound index), checked
    against its recorded `_sync.pid`, and remembered. A staging document never changes its
    `_sync.pid`.
    """

    key_fields: tuple[str, ...] = BUSINESS_KEY
    soft_delete_field: str = SOFT_DELETE_FIELD
    staging_ids: dict[str, Any] = field(default_factory=dict)  # encoded pid -> staging _id
    # Not found yet: when to look again (a lookup is one indexed query per document, so they
    # are spaced by `retry_s` per document; this bounds the resolution for created documents).
    retry_s: float = 0.1
    _next_lookup: dict[str, float] = field(default_factory=dict)

    def prime(self, coll: Collection[Any]) -> None:
        self.staging_ids.clear()
        self._next_lookup.clear()
        for doc in coll.find({}, {PID_FIELD: 1}):
            pid = _recorded_pid(doc)
            if pid is not None:
                self.staging_ids[pid] = doc["_id"]

    def fetch(self, coll: Collection[Any], wanted: Sequence[Expected]) -> dict[Any, dict[str, Any]]:
        projection = {MARKER: 1, self.soft_delete_field: 1, PID_FIELD: 1}
        found: dict[str, dict[str, Any]] = {}
        # Outside a subset (`Expected.copied` False): never written, so no staging `_id` to
        # remember, and a business-key lookup each would cost ~90 % of the touched documents
        # one query apiece. One `$in` on `_sync.pid` per probe shows any copy that exists.
        outside = {encode_id(w.id): w for w in wanted if not w.copied}
        if outside:
            for doc in coll.find({PID_FIELD: {"$in": list(outside)}}, projection,
                                 collation=SIMPLE_COLLATION):
                pid = _recorded_pid(doc)
                if pid is not None:
                    found[pid] = doc
        by_pid = {encode_id(w.id): w for w in wanted if w.copied}
        known = [self.staging_ids[pid] for pid in by_pid if pid in self.staging_ids]
        if known:
            for doc in coll.find({"_id": {"$in": known}}, projection):
                pid = _recorded_pid(doc)
                if pid is not None:
                    found[pid] = doc
        now = time.monotonic()
        for pid, want in by_pid.items():
            if pid in self.staging_ids or self._next_lookup.get(pid, 0.0) > now:
                continue
            query = dict(zip(self.key_fields, want.key, strict=True))
            # The simple collation, spelled out: the same as none on MongoDB, but SecantusDB
            # uses the product's index (created with it) only for a query that names it.
            for doc in coll.find(query, projection, collation=SIMPLE_COLLATION):
                if _recorded_pid(doc) == pid:
                    self.staging_ids[pid] = doc["_id"]
                    found[pid] = doc
            if pid not in self.staging_ids:
                self._next_lookup[pid] = now + self.retry_s
        by_pid.update(outside)
        return {by_pid[pid].id: doc for pid, doc in found.items()
                if pid in by_pid and not doc.get(self.soft_delete_field)}


def _recorded_pid(doc: Mapping[str, Any]) -> str | None:
    """`_sync.pid` of a document projected on it (a dotted projection comes back nested)."""
    sync = doc.get(SYNC)
    value = sync.get("pid") if isinstance(sync, Mapping) else None
    return value if isinstance(value, str) else None


def systems(options: RunOptions) -> list[SystemSpec]:
    tuning = Tuning.from_env()
    locator = BySyncPid()
    variants = "users (production.users -> staging.users, business key email) configured too"
    return [
        SystemSpec(
            name="stagesync",
            summary="stagesync watch + Celery workers (Redis), batched upsert-merges",
            prepare=_prepare(tuning),
            start=_start(tuning, locator),
            locator=locator,
            verify=_verify(tuning),
            scenarios=frozenset({"burst", "steady", "resync"}),
            needs_redis=True,
            notes=[f"stagesync: {tuning.describe()}"
                   + (f" [{tuning.env_assignments()}]" if tuning.env_assignments() else "")],
            resync=_resync(tuning),
            resync_cases=tuple(case for case in tuning.resync_cases.split(",")
                               if case in ("empty", "again")),
        ),
        _variant_spec(tuning, "refs", "stagesync + references: orders.customerId -> users",
                      f"stagesync-refs: as stagesync, {variants}; orders.references "
                      f"{{{CUSTOMER}: {USERS}}}: one batched _sync.pid lookup on staging users "
                      "per apply"),
        _variant_spec(tuning, "subset",
                      f"stagesync + subset: {SUBSET_PERCENT:g} % of users and their orders",
                      f"stagesync-subset: as stagesync-refs, plus users.subset {{percent: "
                      f"{SUBSET_PERCENT:g}}} and orders.subset {{follow: {CUSTOMER}}} (fixed "
                      "bench pii_secret); changes = all operations written, including those "
                      "on orders outside the subset (expected absent, never written)"),
    ]


def _variant_spec(tuning: Tuning, variant: Variant, summary: str, note: str) -> SystemSpec:
    """The product with references (and a subset) configured, on the same burst (opt-in)."""
    locator = BySyncPid()
    return SystemSpec(
        name=f"stagesync-{variant}",
        summary=summary,
        prepare=_prepare(tuning, variant),
        start=_start(tuning, locator, variant),
        locator=locator,
        verify=_verify(tuning, variant),
        scenarios=frozenset({"burst"}),
        needs_redis=True,
        notes=[note],
        copies=order_copied if variant == "subset" else None,
        opt_in=True,
    )
