"""`stagesync demo`: the whole product on this machine, in about a minute, with nothing to set up.

Starts two MongoDB-compatible servers (production, staging) and a Redis of its own, writes a
configuration, starts a watcher and a worker as real processes, seeds realistic orders and users
(with personal data and staging-only QA fields), then shows three things:
1. near-real-time sync: paced production traffic, with the lag of every change measured
   (production write to the apply that read it: `_sync.at` minus the document's `updatedAt`);
2. a burst written as fast as production takes it, absorbed (micro-batches grow) and drained;
3. verification: staging equals production on production's fields, QA notes survived, no raw
   personal data reached staging.
The live status runs in a thread of its own from bounded reads, so the screen (and, without a
terminal, a progress line at least every `PROGRESS_SECONDS`) never waits on a busy server.

It ends by itself after its summary and stops everything it started (Ctrl-C stops it early).
With `--keep` it leaves the servers, Redis, watcher and worker running for `status`, `verify`,
`resync`, Flower and the PII scan, writes `./stagesync.yaml`, and records their PIDs in
`./.stagesync-demo.json`; `stagesync demo --stop` ends exactly those processes.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from bson import ObjectId
from pymongo import ASCENDING, DeleteOne, InsertOne, MongoClient, UpdateOne
from rich.console import Console
from rich.live import Live
from stagesync.cli.demo_keep import CONFIG_FILE, STATE_FILE, keep_running, stop_processes
from stagesync.cli.demo_report import SEED_PROMISE, Figures, Outcome, percentile, print_summary
from stagesync.cli.local_servers import LocalServer, start_mongo_test_server, start_redis
from stagesync.cli.status import StatusPoller
from stagesync.settings import load_settings
from stagesync.settings.model import Settings
from stagesync.state.checkpoints import bootstrapped, read_all
from stagesync.state.database import state_database
from stagesync.tasks.verification.verifier import verify_collection

CITIES = ["Oslo", "Lyon", "Porto", "Turku", "Ghent", "Graz", "Malmo", "Cork"]
STATUSES = ["new", "paid", "packed", "shipped", "delivered"]
RAW_MARKER = "@real-customer.invalid"  # every raw email carries it; it must never reach staging
PROGRESS_SECONDS = 3.0  # plain output: a progress line at least this often
STEADY_RATE = 20  # production changes per second in the steady phase
BURST_CHUNK = 100  # changes per bulk write in the burst (the burst's time is checked between)
ORDERS, USERS = "orders", "users"


class Demo:
    def __init__(self, console: Console, interactive: bool, documents: int, burst: int,
                 steady_seconds: float, burst_seconds: float) -> None:
        self.console = console
        self.interactive = interactive
        self.documents = documents
        self.burst = burst
        self.steady_seconds = steady_seconds
        self.burst_seconds = burst_seconds
        self.workdir = Path(tempfile.mkdtemp(prefix="stagesync-demo-"))
        self.servers: list[LocalServer] = []
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.rng = random.Random(7)
        self.changes = 0
        self.order_ids: list[Any] = []
        self.live: set[Any] = set()
        self.next_order = documents
        self.figures = Figures()
        self.config_path = self.workdir / CONFIG_FILE

    # -- setup ----------------------------------------------------------------------------
    def start_services(self) -> Settings:
        self.say("starting two MongoDB-compatible servers (production, staging) and Redis ...")
        prod = start_mongo_test_server(workdir=self.workdir / "prod")
        staging = start_mongo_test_server(workdir=self.workdir / "staging")
        # A Redis of its own: its queues and keys cannot meet another app's or another demo's.
        redis_server = start_redis(workdir=self.workdir / "redis")
        self.servers += [prod, staging, redis_server]
        config = {
            "prod": {"uri": prod.uri},
            "staging": {"uri": staging.uri},
            "redis_url": redis_server.uri,
            "pii_secret": uuid.uuid4().hex,
            "collections": [
                {"name": ORDERS, "source": "shop.orders", "target": "shop_staging.orders",
                 "business_key": ["userEmail", "orderNo"],
                 "staging_fields": ["qaNotes"],
                 "partitions": 2,
                 # Written as the staging _id of the user's copy: relations hold in staging.
                 "references": {"customerId": USERS},
                 "pii": {"userEmail": "hash", "customer.name": "fake:name",
                         "customer.phone": "fake:phone", "customer.address": "fake:address"}},
                {"name": USERS, "source": "shop.users", "target": "shop_staging.users",
                 "business_key": ["email"],
                 "staging_fields": ["qaFlags"],
                 "pii": {"email": "hash", "name": "fake:name", "phone": "drop"}},
            ],
            # A busy pipeline gathers changes for up to a second: bigger batches in a burst
            # (an apply's fixed cost paid once for more changes), no wait while it is quiet.
            "watcher": {"lease_seconds": 5, "checkpoint_interval_seconds": 0.5,
                        "busy_batch_wait_ms": 1000},
            "worker": {"visibility_timeout_seconds": 60, "task_time_limit_seconds": 50,
                       "retry_backoff_max_seconds": 5},
            "status": {"lag_threshold_seconds": 30, "stalled_after_seconds": 60},
            # The demo runs on SecantusDB, whose `$in` is quadratic (README, in_list_max).
            "in_list_max": 200,
        }
        self.config_path.write_text(
            "# Written by `stagesync demo`: local throw-away servers; see README, Quickstart.\n"
            + yaml.safe_dump(config, sort_keys=False))
        return load_settings(self.config_path)

    def start_pipeline(self) -> None:
        env = {**os.environ, "STAGESYNC_CONFIG": str(self.config_path), "PYTHONUNBUFFERED": "1"}
        bin_dir = Path(sys.executable).parent
        self.say("starting the watcher and a worker (2 processes) ...")
        for name, argv in (
            ("watcher", [str(bin_dir / "stagesync"), "watch"]),
            # Warnings only: on 2 cores, a log line per task costs the worker real time.
            ("worker", [str(bin_dir / "celery"), "-A", "stagesync.tasks", "worker", "-c", "2",
                        "--without-mingle", "--without-gossip", "-l", "WARNING", "-n",
                        f"demo{uuid.uuid4().hex[:4]}@%h"]),
        ):
            log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - child's
            self.processes.append((name, subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=self.workdir, start_new_session=True,
            )))

    def stop(self) -> None:
        stop_processes([(name, p.pid) for name, p in self.processes]
                       + [(s.name, s.pid) for s in self.servers])
        for _, process in self.processes:
            with suppress(subprocess.TimeoutExpired):
                process.wait(1)
        for server in self.servers:
            with suppress(subprocess.TimeoutExpired):
                server.process.wait(1)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- data -----------------------------------------------------------------------------
    def seed(self, settings: Settings) -> tuple[MongoClient[Any], Any, Any]:
        client: MongoClient[Any] = MongoClient(settings.prod.uri)
        shop = client["shop"]
        # Production's own unique indexes on the business keys (as a real shop would have);
        # `stagesync init` proposes business keys from them.
        shop.users.create_index([("email", ASCENDING)], unique=True)
        shop.orders.create_index([("userEmail", ASCENDING), ("orderNo", ASCENDING)],
                                 unique=True)
        users = [self.user(i) for i in range(max(10, self.documents // 4))]
        shop.users.insert_many(users)
        self.users = users
        result = shop.orders.insert_many([self.order(i) for i in range(self.documents)])
        self.order_ids = list(result.inserted_ids)
        self.live = set(self.order_ids)  # order _ids not deleted (targets may name others)
        self.say(f"seeded production: {self.documents} orders, {len(users)} users "
                 "(emails, names, phones, addresses)")
        return client, shop.orders, shop.users

    def user(self, i: int) -> dict[str, Any]:
        return {"email": f"customer{i}{RAW_MARKER}", "name": f"Customer Number{i}",
                "phone": f"+47 9{i:07d}", "tier": self.rng.choice(["basic", "gold"])}

    def order(self, i: int) -> dict[str, Any]:
        user = self.rng.choice(self.users)
        return {
            "userEmail": user["email"], "customerId": user["_id"], "orderNo": i,
            "status": self.rng.choice(STATUSES),
            "total": round(self.rng.uniform(5, 500), 2),
            "items": [{"sku": f"SKU-{self.rng.randint(1, 999)}", "qty": self.rng.randint(1, 3)}
                      for _ in range(self.rng.randint(1, 4))],
            "customer": {"name": user["name"], "phone": user["phone"],
                         "address": {"street": f"{self.rng.randint(1, 99)} Main St",
                                     "city": self.rng.choice(CITIES)}},
            "updatedAt": datetime.now(UTC),
        }

    def targets(self, count: int, distinct: bool) -> list[Any]:
        """Order `_id`s to change; `distinct`: no document twice, so each change's own lag
        can be read back from staging."""
        if distinct:
            return self.rng.sample(self.order_ids, min(count, len(self.order_ids)))
        return [self.rng.choice(self.order_ids) for _ in range(count)]

    def write(self, orders: Any, targets: list[Any]) -> None:
        """Mixed production writes by `_id` (mostly updates, some inserts and deletes) in
        bulks of at most 500, each change stamped with `updatedAt` just before its bulk is
        sent: staging's `_sync.at` minus it is that change's lag."""
        for start in range(0, len(targets), 500):
            orders.bulk_write(self._operations(targets[start:start + 500]), ordered=True)
        self.changes += len(targets)

    def _operations(self, targets: list[Any]) -> list[Any]:
        now = datetime.now(UTC)
        operations: list[Any] = []
        for target in targets:
            roll = self.rng.random()
            if roll < 0.85 or target not in self.live:
                operations.append(UpdateOne({"_id": target}, {"$set": {
                    "status": self.rng.choice(STATUSES), "total": self.rng.randint(1, 999),
                    "updatedAt": now}}))
            elif roll < 0.95:
                order = self.order(self.next_order)
                self.next_order += 1
                order["_id"] = ObjectId()
                order["updatedAt"] = now
                self.order_ids.append(order["_id"])
                self.live.add(order["_id"])
                operations.append(InsertOne(order))
            else:
                self.live.discard(target)
                operations.append(DeleteOne({"_id": target}))
        return operations

    def say(self, message: str) -> None:
        self.console.print(f"[bold cyan]demo[/bold cyan] {message}", highlight=False)


def run_demo(console: Console, non_interactive: bool, documents: int, burst: int,
             steady_seconds: float = 10.0, burst_seconds: float = 5.0, keep: bool = False
             ) -> int:
    if keep and Path(STATE_FILE).exists():
        console.print(f"[red]demo:[/red] a kept demo is recorded in ./{STATE_FILE}; end it "
                      "first with `stagesync demo --stop`", highlight=False)
        return 2
    demo = Demo(console, not non_interactive and console.is_terminal, documents, burst,
                steady_seconds, burst_seconds)
    started = time.monotonic()
    kept = False
    try:
        settings = demo.start_services()
        client, orders, users = demo.seed(settings)
        demo.start_pipeline()
        poller = StatusPoller(settings, interval=1.0, timeout_seconds=2.0)
        with poller, _live(demo, poller):
            _wait(lambda: _bootstrapped(settings), 120, "the initial full resync", demo)
            demo.say("initial sync done; QA adds staging-only notes to some documents")
            staging: MongoClient[Any] = MongoClient(settings.staging.uri)
            staged_orders = staging["shop_staging"]["orders"]
            qa_ids = [d["_id"] for d in staged_orders.find({}, {"_id": 1}).limit(20)]
            staged_orders.update_many({"_id": {"$in": qa_ids}},
                                      {"$set": {"qaNotes": "checked by QA"}})
            _steady(demo, orders, users, staged_orders, poller)
            _burst(demo, orders, staged_orders, poller)
            # Still under the live view: progress goes on while verification reads.
            demo.say("verifying staging against production ...")
            verify_started = time.monotonic()
            reports = [verify_collection(settings, c.name, 0, 30)
                       for c in settings.collections]
            demo.figures.verify_seconds = time.monotonic() - verify_started
            qa_kept = staged_orders.count_documents({"qaNotes": "checked by QA"})
            leaked = _raw_pii_in_staging(staging)
        ok = all(r.equal for r in reports) and qa_kept == len(qa_ids) and not leaked
        print_summary(console, demo.figures, Outcome(
            reports, demo.changes, qa_kept, len(qa_ids), leaked, time.monotonic() - started, ok))
        staging.close()
        client.close()
        if keep:
            keep_running(console, demo, ORDERS, USERS)
            kept = True
        return 0 if ok else 1
    except KeyboardInterrupt:
        console.print("\ninterrupted: stopping everything the demo started")
        return 130
    except TimeoutError as error:
        console.print(f"[red]demo: {error}[/red]")
        for name in ("watcher", "worker"):
            log = demo.workdir / f"{name}.log"
            if log.exists():
                console.print(f"--- last lines of {name}.log", highlight=False)
                console.print("\n".join(log.read_text(errors="replace").splitlines()[-15:]),
                              highlight=False, markup=False)
        return 1
    finally:
        if not kept:
            demo.stop()


def _steady(demo: Demo, orders: Any, users: Any, staged_orders: Any,
            poller: StatusPoller) -> None:
    """Paced traffic, each change on a document of its own, then every change's lag."""
    seconds = demo.steady_seconds
    demo.say(f"steady traffic: {STEADY_RATE} changes/s for {seconds:.0f} s; every change's lag "
             "is measured ...")
    began = datetime.now(UTC)
    started = time.monotonic()
    ticks = max(1, int(seconds * 4))
    per_tick = max(1, STEADY_RATE // 4)
    # Distinct documents over the whole phase: one write each, so each lag can be read back.
    plan = demo.targets(ticks * per_tick, distinct=True)
    for tick in range(ticks):
        demo.write(orders, plan[tick * per_tick:(tick + 1) * per_tick])
        if tick % 4 == 0:
            users.update_one({"_id": demo.rng.choice(demo.users)["_id"]},
                             {"$set": {"tier": "gold"}})
        time.sleep(max(0.0, started + (tick + 1) * 0.25 - time.monotonic()))
    demo.figures.steady_seconds = time.monotonic() - started
    demo.figures.steady_changes = len(plan)
    ended = time.time()
    _wait(lambda: _caught_up(poller, ended), 60, "the steady changes to be applied", demo)
    demo.figures.steady_lags = _lags(staged_orders, began)
    lags = demo.figures.steady_lags
    if lags:
        demo.say(f"steady lag: p50 {percentile(lags, 50):.2f} s, p99 "
                 f"{percentile(lags, 99):.2f} s over {len(lags)} changes "
                 f"(promise: {SEED_PROMISE})")


def _burst(demo: Demo, orders: Any, staged_orders: Any, poller: StatusPoller) -> None:
    """Changes as fast as production takes them; then how long staging took to drain them."""
    demo.say(f"burst: up to {demo.burst} changes as fast as production accepts them, for at "
             f"most {demo.burst_seconds:.0f} s ...")
    began = datetime.now(UTC)
    started = time.time()
    written_count = 0
    # Sized by what this server takes: the burst stops at its count or its time, whichever
    # comes first, so a slow machine shows a smaller burst rather than a longer demo.
    while written_count < demo.burst and time.time() - started < demo.burst_seconds:
        chunk = min(BURST_CHUNK, demo.burst - written_count)
        demo.write(orders, demo.targets(chunk, distinct=False))
        written_count += chunk
    written = time.time()
    demo.figures.burst_changes = written_count
    demo.figures.burst_write_seconds = written - started
    demo.say(f"burst: {written_count} changes written in {written - started:.1f} s "
             f"({written_count / max(written - started, 1e-3):.0f} changes/s); draining ...")
    _wait(lambda: _caught_up(poller, written), 180, "the pipeline to drain the burst", demo)
    last_apply = _last_apply(staged_orders, began)
    if last_apply is not None:
        demo.figures.burst_drain_seconds = max(0.0, last_apply - written)
        demo.figures.burst_total_seconds = max(0.0, last_apply - started)
    demo.figures.burst_lags = _lags(staged_orders, began)
    demo.say(f"burst drained {demo.figures.burst_drain_seconds or 0.0:.1f} s after its last "
             "write")


def _lags(staged: Any, since: datetime) -> list[float]:
    """Per live staging document changed since `since`: its apply time (`_sync.at`) minus
    the production write time it carries (`updatedAt`); its last change only."""
    lags = []
    for doc in staged.find({"updatedAt": {"$gte": since}, "deleted": False},
                           {"updatedAt": 1, "_sync.at": 1}):
        applied = (doc.get("_sync") or {}).get("at")
        if isinstance(applied, datetime) and isinstance(doc.get("updatedAt"), datetime):
            lags.append(max(0.0, (applied - doc["updatedAt"]).total_seconds()))
    return lags


def _last_apply(staged: Any, since: datetime) -> float | None:
    """Epoch of the last apply that wrote a change made since `since` (soft deletes too)."""
    latest: datetime | None = None
    for doc in staged.find({"$or": [{"updatedAt": {"$gte": since}},
                                    {"_sync.deletedAt": {"$gte": since}}]},
                           {"_sync.at": 1, "_sync.deletedAt": 1}):
        meta = doc.get("_sync") or {}
        for moment in (meta.get("at"), meta.get("deletedAt")):
            if isinstance(moment, datetime) and (latest is None or moment > latest):
                latest = moment
    if latest is None:
        return None
    return (latest if latest.tzinfo else latest.replace(tzinfo=UTC)).timestamp()


@contextmanager
def _live(demo: Demo, poller: StatusPoller) -> Iterator[None]:
    """The live status: redrawn from the poller's last rows by Rich's own refresh thread (the
    screen's clock moves even while a read is slow), or, without a terminal, a line per
    collection every `PROGRESS_SECONDS` from a thread of its own."""
    if demo.interactive:
        with Live(get_renderable=poller.renderable, console=demo.console,
                  refresh_per_second=2, transient=False):
            yield
        return
    stop = threading.Event()

    def progress() -> None:
        while not stop.wait(PROGRESS_SECONDS):
            rows, stale = poller.snapshot()
            note = f" (status {stale})" if stale else ""
            clock = f"{datetime.now(UTC):%H:%M:%S}"
            if not rows:
                demo.say(f"{clock} waiting for the first status read{note}")
            for row in rows:
                demo.say(f"{clock} {row['collection']}: {row['health']}, lag "
                         f"{row['lag_seconds']:.1f}s, pending {row['pending_changes']}, "
                         f"queue {row['queue_depth']}, read {row['counters']['read']}{note}")

    thread = threading.Thread(target=progress, name="demo-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def _wait(check: Callable[[], bool], timeout: float, what: str, demo: Demo) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for _, p in demo.processes):
            raise TimeoutError(f"a demo process exited while waiting for {what}")
        if check():
            return
        time.sleep(0.25)
    raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f}s")


def _bootstrapped(settings: Settings) -> bool:
    client: MongoClient[Any] = MongoClient(settings.staging.uri, timeoutMS=2000)
    try:
        records = read_all(state_database(client, settings.staging))
    except Exception:  # a slow answer is "not yet"
        return False
    finally:
        client.close()
    return all(bootstrapped(records.get(c.name, {})) for c in settings.collections)


def _caught_up(poller: StatusPoller, since: float) -> bool:
    """Every watcher found its stream empty, with nothing in flight, after `since` (which
    only a status read made after `since` can show)."""
    rows, _ = poller.snapshot()
    return bool(rows) and all(
        (row["watcher"]["idle_at"] or 0) > since for row in rows)


def _raw_pii_in_staging(staging: MongoClient[Any]) -> int:
    """Documents in staging that still hold a raw email (all raw ones carry the marker)."""
    found = 0
    for name in ("orders", "users"):
        for doc in staging["shop_staging"][name].find({}):
            if RAW_MARKER in repr(doc):
                found += 1
    return found
