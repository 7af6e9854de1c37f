"""`stagesync demo` end to end, kept small (about 15 s of demo each).

- `--keep`: the demo leaves a working deployment behind; `status`, `verify` and `resync` work
  against it from its directory, and `demo --stop` ends every process it started (their
  children too). Without a terminal it prints progress at least every 5 s.
- In a pseudo-terminal: the live screen's clock moves at least every 5 s, through the burst.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest

STAGESYNC = str(Path(sys.executable).parent / "stagesync")
SMALL = ["--documents", "100", "--burst", "300", "--burst-seconds", "3", "--steady-seconds", "2"]
SCREEN_CLOCK = re.compile(rb"stagesync status  (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC")
PLAIN_CLOCK = re.compile(r"^demo (\d\d:\d\d:\d\d) ", re.MULTILINE)


def _run(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STAGESYNC, *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def _running(pid: int) -> bool:
    try:
        process = psutil.Process(pid)
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.slow
def test_kept_demo_answers_status_verify_resync_and_stops_everything(tmp_path: Path) -> None:
    started = _run(["demo", "--non-interactive", "--keep", *SMALL], tmp_path, timeout=240)
    state_file = tmp_path / ".stagesync-demo.json"
    try:
        assert started.returncode == 0, started.stdout[-4000:] + started.stderr[-4000:]
        out = started.stdout
        assert "demo passed: staging converged" in out
        assert "staging documents holding a raw email: 0" in out
        assert re.search(r"steady p99 lag \d+\.\d\d s", out), out[-2000:]
        assert re.search(r"burst drain time \d+\.\d s", out), out[-2000:]
        assert "stagesync demo --stop" in out
        # Without a terminal: a progress line at least every 5 s (its clock, HH:MM:SS).
        clocks = [datetime.strptime(t, "%H:%M:%S") for t in PLAIN_CLOCK.findall(out)]
        assert len(clocks) >= 3, out[-3000:]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(clocks)]
        assert max(gaps) <= 5, gaps

        state = json.loads(state_file.read_text())
        assert (tmp_path / "stagesync.yaml").exists()
        pids = {p["pid"] for p in state["processes"]}
        for pid in list(pids):
            pids |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
        assert all(_running(pid) for pid in pids)

        status = _run(["status"], tmp_path)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "unlimited" in status.stdout and "none (none)" not in status.stdout
        verify = _run(["verify", "orders"], tmp_path)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        resync = _run(["resync", "orders", "--wait", "--timeout", "60"], tmp_path)
        assert resync.returncode == 0, resync.stdout + resync.stderr
    finally:
        stopped = _run(["demo", "--stop"], tmp_path)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    left = [pid for pid in pids if _running(pid)]
    assert not left, [psutil.Process(pid).cmdline() for pid in left]
    assert not state_file.exists()
    assert not (tmp_path / "stagesync.yaml").exists()
    assert not Path(state["workdir"]).exists()


@pytest.mark.slow
def test_interactive_demo_screen_clock_advances_through_the_burst(tmp_path: Path) -> None:
    """Rich's live screen in a pseudo-terminal: the status table's title carries the time it
    was drawn; from the burst until it is drained it must change at least every 5 s."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    process = subprocess.Popen(
        [STAGESYNC, "demo", *SMALL], cwd=tmp_path, stdin=slave, stdout=slave, stderr=slave,
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "200", "LINES": "50"},
        start_new_session=True,
    )
    os.close(slave)
    screen = b""
    changes: list[tuple[float, bytes]] = []  # (when seen, clock shown), each new clock value
    burst_at = drained_at = None
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                now = time.monotonic()
                screen += chunk
                for clock in SCREEN_CLOCK.findall(chunk):
                    if not changes or changes[-1][1] != clock:
                        changes.append((now, clock))
                if burst_at is None and b"burst: up to" in screen:
                    burst_at = now
                if drained_at is None and b"burst drained" in screen:
                    drained_at = now
            elif process.poll() is not None:
                break
        assert process.wait(30) == 0, screen[-3000:].decode(errors="replace")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
        os.close(master)
    assert b"demo passed: staging converged" in screen
    assert burst_at is not None and drained_at is not None, screen[-3000:]
    seen = [when for when, _ in changes if burst_at - 5 <= when <= drained_at + 5]
    assert len(seen) >= 2, changes
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert max(gaps) <= 5, gaps
