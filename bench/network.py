"""The two network conditions: loopback, or 2 ms round trips through delay proxies.

Why proxies in their own processes: the runner's own thread writes the workload at full speed;
a proxy sharing its GIL would delay chunks by whatever the writer happens to hold. Each proxy
(one for production, one for staging) is a `python -m bench.delay_proxy` child, stopped by PID;
it logs its counters (messages and bytes each way) on SIGUSR1 and on exit; the runner reads them
at the start and at the end of each measurement (`Network.snapshot`).

At loopback there is no proxy, so no wire counts: a counting proxy on loopback would add a hop
and a Python process of its own to every round trip (on 2 cores, CPU taken from the system
under test) and change the loopback rows it is meant to describe. Messages and bytes are a
property of the system's batching, reported from the 2 ms rows.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import Any

from stagesync.cli.local_servers import LocalServer, free_port

from bench.delay_proxy import measure_ping
from bench.procs import python_module, spawn, stop_process

NETWORKS = ("loopback", "2ms")
DELAY_MS = 1.0  # per direction: 2 ms per round trip
MAX_SECONDS = 6 * 3600  # a proxy stops by itself after this long, whatever happens


@dataclass
class ProxyProcess:
    name: str
    port: int
    process: Popen[bytes]
    log: Path

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def stop(self) -> dict[str, Any]:
        """Stop it; return the counters it logged on exit ({} if it had none)."""
        stop_process(self.process)
        return self._last_counters()

    def snapshot(self, timeout: float = 10.0) -> dict[str, Any]:
        """Its counters now, without stopping it (SIGUSR1: it logs them as a JSON line)."""
        before = self._counter_lines()
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._counter_lines() > before:
                return self._last_counters()
            time.sleep(0.01)
        raise RuntimeError(f"delay proxy {self.name} logged no counters (see {self.log})")

    def _lines(self) -> list[str]:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace").splitlines()
        return []

    def _counter_lines(self) -> int:
        return sum(1 for line in self._lines() if line.startswith("{"))

    def _last_counters(self) -> dict[str, Any]:
        for line in reversed(self._lines()):
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    return dict(json.loads(line))
        return {}


def start_proxy(target: LocalServer, workdir: Path, name: str, delay_ms: float) -> ProxyProcess:
    port = free_port()
    proc = spawn(python_module("bench.delay_proxy", "--target", f"127.0.0.1:{target.port}",
                               "--listen-port", str(port), "--delay-ms", str(delay_ms),
                               "--exit-with-parent", "--max-seconds", str(MAX_SECONDS)),
                 workdir, name)
    proxy = ProxyProcess(name, port, proc, workdir / f"{name}.log")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if "listening" in proxy.log.read_text(errors="replace"):
            return proxy
        time.sleep(0.05)
    proxy.stop()
    raise RuntimeError(f"delay proxy {name} did not start (see {proxy.log})")


@dataclass
class Network:
    """The URIs a system uses under one condition, and the proxies behind them."""

    condition: str
    prod_uri: str
    staging_uri: str
    proxies: dict[str, ProxyProcess] = field(default_factory=dict)
    ping_overhead_ms: float | None = None  # through the proxy minus direct, measured at start

    def stop(self) -> dict[str, dict[str, Any]]:
        """Stop the proxies; their counters by name ("prod", "staging")."""
        return {name: proxy.stop() for name, proxy in self.proxies.items()}

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The proxies' counters now, by name ({} at loopback: no proxy, nothing counted)."""
        return {name: proxy.snapshot() for name, proxy in self.proxies.items()}


def open_network(condition: str, prod: LocalServer, staging: LocalServer, workdir: Path) -> Network:
    """Direct URIs on loopback; at 2 ms, start a proxy per server and measure its overhead."""
    if condition == "loopback":
        return Network(condition, prod.uri, staging.uri)
    if condition != "2ms":
        raise ValueError(f"unknown network condition {condition!r}; expected one of {NETWORKS}")
    net = Network(condition, "", "")
    try:
        for name, server in (("prod", prod), ("staging", staging)):
            net.proxies[name] = start_proxy(server, workdir, f"proxy-{name}", DELAY_MS)
        net.prod_uri, net.staging_uri = net.proxies["prod"].uri, net.proxies["staging"].uri
        # Through the production proxy: the staging proxy's command count must stay the system's.
        net.ping_overhead_ms = measure_ping(net.prod_uri, 100) - measure_ping(prod.uri, 100)
    except BaseException:
        net.stop()
        raise
    return net
