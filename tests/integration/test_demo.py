"""`stagesync demo` end to end, from one small kept demo run in a pseudo-terminal (about 20 s
of demo), to stay quick:
- its live screen's clock moves at least every 5 s, through the burst until it is drained;
- `--keep` leaves a working deployment: `status`, `verify` and `resync` work against it from
  its directory, and `demo --stop` ends every process it started (their children too).
The plain-output progress (no terminal) is tested in tests/unit/test_first_use.py.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

STAGESYNC = str(Path(sys.executable).parent / "stagesync")
SMALL = ["--documents", "100", "--burst", "300", "--burst-seconds", "3", "--steady-seconds", "2"]
SCREEN_CLOCK = re.compile(rb"stagesync status  (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC")


@dataclass
class KeptDemo:
    cwd: Path
    returncode: int | None = None
    screen: bytes = b""
    clocks: list[tuple[float, bytes]] = field(default_factory=list)  # (seen at, clock shown)
    burst_at: float | None = None
    drained_at: float | None = None


def _run(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STAGESYNC, *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def _running(pid: int) -> bool:
    try:
        process = psutil.Process(pid)
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture(scope="module")
def kept_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeptDemo]:
    """`stagesync demo --keep` on a pseudo-terminal (Rich's live screen), read as it comes."""
    demo = KeptDemo(tmp_path_factory.mktemp("demo"))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    process = subprocess.Popen(
        [STAGESYNC, "demo", "--keep", *SMALL], cwd=demo.cwd, stdin=slave, stdout=slave,
        stderr=slave, start_new_session=True,
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "200", "LINES": "50"},
    )
    os.close(slave)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the demo closed the terminal
                break
            if not chunk:
                break
            now = time.monotonic()
            demo.screen += chunk
            for clock in SCREEN_CLOCK.findall(chunk):
                if not demo.clocks or demo.clocks[-1][1] != clock:
                    demo.clocks.append((now, clock))
            if demo.burst_at is None and b"burst: up to" in demo.screen:
                demo.burst_at = now
            if demo.drained_at is None and b"burst drained" in demo.screen:
                demo.drained_at = now
        demo.returncode = process.wait(30)
        yield demo
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
        os.close(master)
        if (demo.cwd / ".stagesync-demo.json").exists():  # a test failed before --stop
            _run(["demo", "--stop"], demo.cwd)


@pytest.mark.slow
def test_interactive_demo_screen_clock_advances_through_the_burst(kept_demo: KeptDemo) -> None:
    """The status table's title carries the time it was drawn: from the burst until it is
    drained, it changes at least every 5 s."""
    text = kept_demo.screen.decode(errors="replace")
    assert kept_demo.returncode == 0, text[-3000:]
    assert "demo passed: staging converged" in text
    assert re.search(r"steady p99 lag \d+\.\d\d s", text), text[-2000:]
    assert re.search(r"burst drain time \d+\.\d s", text), text[-2000:]
    assert kept_demo.burst_at is not None and kept_demo.drained_at is not None, text[-3000:]
    seen = [when for when, _ in kept_demo.clocks
            if kept_demo.burst_at - 5 <= when <= kept_demo.drained_at + 5]
    assert len(seen) >= 2, kept_demo.clocks
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert max(gaps) <= 5, gaps


@pytest.mark.slow
def test_kept_demo_answers_status_verify_resync_and_stops_everything(
        kept_demo: KeptDemo) -> None:
    cwd = kept_demo.cwd
    assert kept_demo.returncode == 0, kept_demo.screen[-3000:].decode(errors="replace")
    assert b"stagesync demo --stop" in kept_demo.screen
    assert b"stagesync env create pr-1 --sample 10 --wait" in kept_demo.screen
    state_file = cwd / ".stagesync-demo.json"
    state = json.loads(state_file.read_text())
    assert (cwd / "stagesync.yaml").exists()
    pids = {p["pid"] for p in state["processes"]}
    for pid in list(pids):
        pids |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
    assert all(_running(pid) for pid in pids)

    status = _run(["status", "--wide"], cwd)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "unlimited" in status.stdout and "none (none)" not in status.stdout
    verify = _run(["verify", "orders"], cwd)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    resync = _run(["resync", "orders", "--wait", "--timeout", "60"], cwd)
    assert resync.returncode == 0, resync.stdout + resync.stderr
    # The environment the kept demo suggests, then seen by status.
    created = _run(["env", "create", "pr-1", "--sample", "10", "--wait"], cwd)
    assert created.returncode == 0, created.stdout + created.stderr
    listed = json.loads(_run(["status", "--json"], cwd).stdout)["environments"]
    assert [(e["name"], e["state"]) for e in listed] == [("pr-1", "live")]

    stopped = _run(["demo", "--stop"], cwd)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    left = [pid for pid in pids if _running(pid)]
    assert not left, [psutil.Process(pid).cmdline() for pid in left]
    assert not state_file.exists()
    assert not (cwd / "stagesync.yaml").exists()
    assert not Path(state["workdir"]).exists()
