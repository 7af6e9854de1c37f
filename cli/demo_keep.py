"""`stagesync demo --keep` and `--stop`: a demo left running to explore, and its end.

`--keep` records what it leaves running (PIDs with their start times, so a reused PID is never
mistaken for the demo's) and the configuration it wrote; `--stop` ends exactly those processes,
watcher and worker before the servers, and removes the configuration only if it is unedited.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
from rich.console import Console

if TYPE_CHECKING:
    from stagesync.cli.demo import Demo

STATE_FILE = ".stagesync-demo.json"  # in the working directory: what `--stop` ends
CONFIG_FILE = "stagesync.yaml"


def keep_running(console: Console, demo: Demo, orders: str, users: str) -> None:
    """Leave everything running; write the configuration and the PIDs where `--stop` and the
    other commands find them."""
    config = Path(CONFIG_FILE)
    text = demo.config_path.read_text()
    wrote_config = False
    if config.exists():
        config_shown = str(demo.config_path)
        console.print(f"./{CONFIG_FILE} exists and is left alone; the demo's configuration is "
                      f"{config_shown}", highlight=False)
        prefix = f"STAGESYNC_CONFIG={config_shown} "
    else:
        config.write_text(text)
        wrote_config = True
        config_shown = str(config.absolute())
        prefix = ""
    processes = [{"name": name, "pid": p.pid, "started": _started(p.pid)}
                 for name, p in demo.processes]
    processes += [{"name": s.name, "pid": s.pid, "started": _started(s.pid)}
                  for s in demo.servers]
    Path(STATE_FILE).write_text(json.dumps({
        "workdir": str(demo.workdir), "config": config_shown, "wrote_config": wrote_config,
        "config_sha256": hashlib.sha256(text.encode()).hexdigest(), "processes": processes,
    }, indent=2))
    console.print(f"\nthe demo keeps running ({len(processes)} processes, PIDs in "
                  f"./{STATE_FILE}); configuration: {config_shown}", highlight=False)
    console.print("try:", highlight=False)
    for command in (
        "stagesync status --watch", f"stagesync verify {orders}",
        f"stagesync resync {orders} --wait",
        "stagesync env create pr-1 --sample 10 --wait   (an environment: a masked 10 % copy)",
        "celery -A stagesync.tasks flower   (then http://localhost:5555)",
        f"stagesync pii scan {users}", "stagesync demo --stop     (ends all of it)",
    ):
        console.print(f"  {prefix}{command}", highlight=False, markup=False)


def stop_demo(console: Console) -> int:
    """End a kept demo: the processes it recorded (only those, by PID and start time)."""
    state_file = Path(STATE_FILE)
    if not state_file.exists():
        console.print(f"no kept demo here (./{STATE_FILE} does not exist); run `stagesync demo "
                      "--stop` in the directory where `stagesync demo --keep` ran",
                      highlight=False)
        return 1
    state = json.loads(state_file.read_text())
    recorded = [(p["name"], p["pid"]) for p in state["processes"]
                if _started(p["pid"]) == p["started"]]  # a reused PID is someone else's
    stop_processes(recorded)
    config = Path(CONFIG_FILE)
    if state.get("wrote_config") and config.exists():
        if hashlib.sha256(config.read_bytes()).hexdigest() == state["config_sha256"]:
            config.unlink()
        else:
            console.print(f"./{CONFIG_FILE} was edited: left in place", highlight=False)
    shutil.rmtree(state["workdir"], ignore_errors=True)
    state_file.unlink()
    console.print(f"stopped the kept demo ({len(recorded)} processes)", highlight=False)
    return 0


SERVERS = ("mongodb", "redis")


def stop_processes(processes: list[tuple[str, int]], grace: float = 15.0) -> None:
    """The watcher and the worker first, while the servers still answer them (a watcher
    whose staging is gone waits for it before it gives up its lease), then the servers."""
    _stop_wave([p for p in processes if p[0] not in SERVERS], grace)
    _stop_wave([p for p in processes if p[0] in SERVERS], grace)


def _stop_wave(processes: list[tuple[str, int]], grace: float) -> None:
    """SIGTERM each recorded process and its group (each was started in a session of its own,
    so the group is its children: Celery's pool, nothing else), then SIGKILL what is left."""
    targets: list[psutil.Process] = []
    for _, pid in processes:
        with suppress(psutil.Error):
            process = psutil.Process(pid)
            targets += [process, *process.children(recursive=True)]
    # The group only: a signal straight to a pool child would make Celery's main process
    # replace it and wait on it, not stop.
    for _, pid in processes:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    alive = _wait_gone(targets, grace)
    for target in alive:
        with suppress(psutil.Error):
            target.kill()
    _wait_gone(alive, 5)


def _wait_gone(targets: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """The targets still running after up to `timeout` seconds. A zombie counts as gone: a
    kept demo's processes outlived their parent, and what adopts them may never reap them."""
    deadline = time.monotonic() + timeout
    alive = targets
    while True:
        for target in alive:
            with suppress(psutil.Error, ChildProcessError):
                target.wait(0)  # reaps our own children (a plain demo's)
        alive = [t for t in alive if _running(t)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def _running(target: psutil.Process) -> bool:
    try:
        return target.is_running() and target.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None
