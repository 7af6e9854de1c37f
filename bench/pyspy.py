"""Where a process's own CPU goes: py-spy samples of the watcher and a worker pool child.

`--py-spy` (bench.run) starts `py-spy record --format raw` on the watcher and on the first
pool child of the first worker once the system runs, stops it (SIGINT: py-spy then writes its
file) when the measurement ends, and prints the top functions of each with two shares of the
samples: *self* (the function was running) and *total* (it was on the stack). `--gil`: only
the thread holding the GIL is sampled, so the shares are of the Python CPU of the process
(pymongo's monitor threads sleeping or waiting for the GIL do not count; without it they took
~20 % of the samples of an idle pool child), not of wall time. Native work that releases
the GIL (socket reads) is left out. `--nonblocking`: the process is not paused per sample,
which keeps the overhead low at the price of a rare torn stack.

The raw format is one line per distinct stack, frames root first, separated by `;`, then a
space and the sample count: `<module>:1 (x.py);main (x.py:10);work (y.py:5) 42`.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

RATE = 100  # samples per second
_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
# "func (path/to/file.py:123)" -> "func (file.py)": lines of one function count together.
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


# The product's rooms (README, "Rooms"): a frame under one of them is stagesync's own.
PRODUCT_ROOMS = ("settings", "protocol", "rules", "deployments", "state", "watcher", "tasks",
                 "cli")


def frame_name(frame: str) -> str:
    """A frame without its line number, and its file path from the product's room on (the
    last two parts of a library's path)."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    parts = Path(match["file"]).parts
    rooms = [i for i, part in enumerate(parts[:-1]) if part in PRODUCT_ROOMS]
    kept = parts[rooms[-1]:] if rooms else parts[-2:]
    return f"{match['func']} ({'/'.join(kept)})"


@dataclass(frozen=True)
class Profile:
    samples: int
    self_counts: Counter[str]
    total_counts: Counter[str]
    stacks: tuple[tuple[tuple[str, ...], int], ...] = ()  # (frames root first, samples)

    def top(self, n: int = 12, by: str = "self") -> list[tuple[str, float, float]]:
        """(function, self %, total %) for the `n` largest by `by` ("self" or "total")."""
        counts = self.self_counts if by == "self" else self.total_counts
        if not self.samples:
            return []
        return [(name, 100 * self.self_counts[name] / self.samples,
                 100 * self.total_counts[name] / self.samples)
                for name, _ in counts.most_common(n)]

    def share(self, text: str) -> float:
        """Percent of samples with at least one frame whose name contains `text`."""
        hits = sum(count for frames, count in self.stacks
                   if any(text in name for name in frames))
        return 100 * hits / self.samples if self.samples else 0.0


def parse_raw(text: str) -> Profile:
    """Self and total sample counts per function from py-spy's raw (collapsed) output. A
    function on the stack twice (recursion) counts once per sample in its total."""
    samples = 0
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    stacks: list[tuple[tuple[str, ...], int]] = []
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if not match:
            continue
        count = int(match["count"])
        frames = [frame_name(f) for f in match["stack"].split(";") if f.strip()]
        if not frames:
            continue
        samples += count
        stacks.append((tuple(frames), count))
        self_counts[frames[-1]] += count
        for name in set(frames):
            total_counts[name] += count
    return Profile(samples, self_counts, total_counts, tuple(stacks))


def py_spy() -> str | None:
    """The py-spy executable beside this interpreter, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@dataclass
class Recording:
    label: str
    pid: int
    output: Path
    process: subprocess.Popen[bytes]

    def stop(self, timeout: float = 30.0) -> Profile | None:
        """Stop sampling and read what was sampled (None if py-spy wrote nothing)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        with contextlib.suppress(OSError):
            return parse_raw(self.output.read_text(errors="replace"))
        return None


def record(label: str, pid: int, workdir: Path) -> Recording | None:
    """Start sampling `pid` (None when py-spy is not installed)."""
    exe = py_spy()
    if exe is None:
        return None
    output = workdir / f"py-spy-{label}.txt"
    log = open(workdir / f"py-spy-{label}.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", str(RATE), "--nonblocking", "--gil",
             "--format", "raw", "--output", str(output)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        log.close()
    return Recording(label, pid, output, proc)


# Frames of the product's own code, as `frame_name` spells them (the last two path parts).
PRODUCT_FRAMES = tuple(f"({room}/" for room in PRODUCT_ROOMS)


def product_totals(profile: Profile, n: int = 10) -> list[tuple[str, float]]:
    """The product's own functions by total share (what a cut would save at most)."""
    if not profile.samples:
        return []
    ours = Counter({name: count for name, count in profile.total_counts.items()
                    if any(marker in name for marker in PRODUCT_FRAMES)})
    return [(name, 100 * count / profile.samples) for name, count in ours.most_common(n)]


def describe(label: str, profile: Profile, n: int = 12) -> str:
    """One line of the notes: the top functions by self time, with their totals, then the
    product's own functions by total."""
    parts = [f"{name} {self_pct:.1f}% (total {total_pct:.1f}%)"
             for name, self_pct, total_pct in profile.top(n)]
    ours = [f"{name} {pct:.1f}%" for name, pct in product_totals(profile)]
    return (f"py-spy {label} ({profile.samples:,} samples at {RATE}/s, GIL holder): by self: "
            + "; ".join(parts) + ". stagesync's functions by total: " + "; ".join(ours))
