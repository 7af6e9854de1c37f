"""Process plumbing for the benchmark: children that always end, and their peak memory.

Why: every measured system runs in its own process so its peak RSS (`VmHWM`, read from /proc:
no extra dependency) is its own, not the runner's. Children are started in their own session
(Ctrl-C in a terminal reaches only the runner, which then stops them in order), are stopped by
PID, and stop by themselves when their parent dies or their time budget runs out.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection

PR_SET_PDEATHSIG = 1


def stop_event(max_seconds: float) -> threading.Event:
    """An event set on SIGTERM/SIGINT, when the parent process dies, or after `max_seconds`.

    For child processes' main loops: every loop checks it, so no child outlives its runner.
    """
    stop = threading.Event()
    parent = os.getppid()
    deadline = time.monotonic() + max_seconds

    def on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)

    def watchdog() -> None:
        while not stop.wait(0.5):
            if os.getppid() != parent or time.monotonic() > deadline:
                stop.set()

    threading.Thread(target=watchdog, name="stop-watchdog", daemon=True).start()
    return stop


def spawn(
    argv: list[str],
    workdir: Path,
    name: str,
    env: dict[str, str] | None = None,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session, output to `workdir/<name>.log`.

    `env` replaces the inherited environment (PYTHONUNBUFFERED is always set).
    `die_with_parent`: the kernel sends the child SIGTERM when the runner dies (Linux
    `PR_SET_PDEATHSIG`), for programs that cannot watch their parent themselves (the product).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parent.parent, start_new_session=True,
            env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
            preexec_fn=_term_on_parent_death() if die_with_parent else None,
        )
    finally:
        log.close()


def _term_on_parent_death() -> Callable[[], None] | None:
    """A pre-exec hook that asks the kernel to SIGTERM the child when its parent exits (Linux
    `prctl(PR_SET_PDEATHSIG)`). libc is loaded here, in the parent: nothing but the `prctl`
    call runs between fork and exec."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None

    def hook() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def wait_for_file(path: Path, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until a child writes `path` (its readiness signal); fail if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return
        if process.poll() is not None:
            raise RuntimeError(f"{path.name}: process exited with {process.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"{path.name} did not appear within {timeout:.0f}s")


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    """Write atomically, so a reader polling for the file never sees half of it."""
    if path is None:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    return {}


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size (`VmHWM`) of a live process, in MiB; None if unreadable."""
    return _status_mb(pid, "VmHWM:")


def rss_mb(pid: int) -> float | None:
    """Current resident set size (`VmRSS`) of a live process, in MiB; None if unreadable."""
    return _status_mb(pid, "VmRSS:")


def _status_mb(pid: int, field: str) -> float | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return None


class RssSampler:
    """Each role's resident memory over a measurement: the sum of `VmRSS` over its process
    tree (a worker's pool children included), every `interval` seconds, from a thread.

    Why a series and not only the peak (`VmHWM`): a long copy must hold its memory flat, and a
    peak cannot tell a process that grows with the documents it has done from one that
    reached its working size in the first second (issue 31: "memory flat across the run").
    """

    def __init__(self, processes: Mapping[str, int], interval: float = 1.0) -> None:
        self.processes = dict(processes)
        self.interval = interval
        self.series: dict[str, list[float]] = {role: [] for role in self.processes}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            for role, pid in self.processes.items():
                sizes = [size for size in map(rss_mb, process_tree(pid)) if size is not None]
                if sizes:
                    self.series[role].append(sum(sizes))
            if self._stop.wait(self.interval):
                return

    def stop(self) -> dict[str, list[float]]:
        self._stop.set()
        self._thread.join(timeout=10)
        return {role: values for role, values in self.series.items() if values}


def quarters(values: list[float]) -> list[float]:
    """The largest value of each quarter of a series (fewer than four values: as they are)."""
    if len(values) < 4:
        return list(values)
    bounds = [round(len(values) * n / 4) for n in range(5)]
    return [max(values[lo:hi]) for lo, hi in itertools.pairwise(bounds)]


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (e.g. a Celery worker's pool children)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        with contextlib.suppress(OSError, ValueError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return out


def baseline_args(description: str, argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments shared by the baseline sync processes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--prod", required=True, help="production URI (through the proxy at 2 ms)")
    parser.add_argument("--staging", required=True, help="staging URI (through the proxy at 2 ms)")
    parser.add_argument("--source", default="production.orders", help="db.collection")
    parser.add_argument("--target", default="staging.orders", help="db.collection")
    parser.add_argument("--key", default="userEmail,accountId", help="business key fields")
    parser.add_argument("--ready-file", type=Path, help="written once the stream is open")
    parser.add_argument("--stats-file", type=Path, help="counters written at exit")
    parser.add_argument("--max-seconds", type=float, default=3600, help="stop by itself after")
    return parser.parse_args(argv)


def collection(client: MongoClient[Any], dotted: str) -> Collection[Any]:
    """`client["db"]["coll"]` from `"db.coll"`."""
    db, _, coll = dotted.partition(".")
    return client[db][coll]


# What a baseline process runs: (production collection, staging collection, on_ready) -> stats.
BaselineWork = Callable[[Collection[Any], Collection[Any], Callable[[], None]], Mapping[str, Any]]


def run_baseline(args: argparse.Namespace, work: BaselineWork) -> int:
    """Connect to both servers, run a baseline's work, write its counters, close: the same for
    every baseline process, so only the work differs."""
    prod_client: MongoClient[Any] = MongoClient(args.prod)
    staging_client: MongoClient[Any] = MongoClient(args.staging)
    try:
        stats = work(collection(prod_client, args.source), collection(staging_client, args.target),
                     lambda: write_json(args.ready_file, {"ready": time.time()}))
        write_json(args.stats_file, dict(stats))
    finally:
        prod_client.close()
        staging_client.close()
    return 0
