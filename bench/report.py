"""The cost table: what each system spent per 1,000 changes (or documents), beside throughput.

Why its own table: these figures do not depend on how fast the test server is (bench.costs),
so they are the ones that carry over to MongoDB: CPU of the system's own processes per change
(how many processes a user must run), messages and bytes each way (round trips), documents
written in staging. Ratios compare with the floors of the same run: the minimal sync
(`minimal`) and the same writes into the product's index set (`minimal-idx`); for a resync,
the plain copy (`copy`) and the copy into the product's index set (`copy-idx`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from rich.table import Table

from bench.costs import Costs, is_system_row, micros_per_unit, per_k, ratio, role_of

TARGET = "staging.orders"  # the namespace every system writes (bench.systems.BenchContext)


class CostRow(Protocol):
    scenario: str
    network: str
    system: str
    case: str
    changes: int
    costs: Costs | None

    @property
    def label(self) -> str: ...

    @property
    def data_verified(self) -> bool: ...


def floors(scenario: str) -> tuple[str, str]:
    return ("copy", "copy-idx") if scenario == "resync" else ("minimal", "minimal-idx")


def _same_run(row: CostRow, rows: Sequence[CostRow], system: str) -> CostRow | None:
    for other in rows:
        if ((other.scenario, other.network, other.system) == (row.scenario, row.network, system)
                and other.costs is not None and other.changes and other.data_verified):
            return other
    return None


def cpu_per_unit(row: CostRow) -> float | None:
    """µs of the system's own CPU per change (or document)."""
    return None if row.costs is None else micros_per_unit(row.costs.system_cpu(), row.changes)


def written_per_k(row: CostRow) -> float | None:
    return None if row.costs is None else per_k(row.costs.target_writes(TARGET), row.changes)


def staging_msgs_per_k(row: CostRow) -> float | None:
    return None if row.costs is None else per_k(row.costs.messages("staging"), row.changes)


def ratios(row: CostRow, rows: Sequence[CostRow]) -> str:
    """CPU, documents written and staging messages over each floor of the same run."""
    parts = []
    for base_name in floors(row.scenario):
        if row.system == base_name:
            continue
        base = _same_run(row, rows, base_name)
        if base is None:
            continue
        figures = [("cpu", ratio(cpu_per_unit(row), cpu_per_unit(base))),
                   ("docs", ratio(written_per_k(row), written_per_k(base))),
                   ("msgs", ratio(staging_msgs_per_k(row), staging_msgs_per_k(base)))]
        shown = ", ".join(f"{name} {value:.2f}x" for name, value in figures if value is not None)
        if shown:
            parts.append(f"{base_name}: {shown}")
    return "; ".join(parts) or "—"


def _num(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _processes(costs: Costs, units: int) -> str:
    """µs per unit of each of the system's own processes, largest first."""
    own = [(row, spent) for row, spent in costs.cpu.items() if is_system_row(row)]
    own.sort(key=lambda item: -item[1])
    return ", ".join(f"{row} {_num(micros_per_unit(spent, units))}" for row, spent in own
                     if spent >= 0.005) or "—"


def _wire(costs: Costs, side: str, units: int) -> str:
    """Messages up/down and KiB up/down per 1,000 units to one side."""
    if side not in costs.wire:
        return "—"
    up, down = costs.messages(side, "up"), costs.messages(side, "down")
    kib_up, kib_down = costs.bytes(side, "up"), costs.bytes(side, "down")
    return (f"{_num(per_k(up, units))}/{_num(per_k(down, units))} msgs, "
            f"{_num(per_k((kib_up or 0) / 1024, units))}/"
            f"{_num(per_k((kib_down or 0) / 1024, units))} KiB")


def _infra(costs: Costs, role: str, units: int) -> str:
    spent = costs.role_cpu(role)
    return _num(micros_per_unit(spent, units)) if spent else "—"


def cost_table(rows: Sequence[CostRow]) -> Table:
    table = Table(title="cost per change (per document for resync): independent of the test "
                        "server's speed", show_lines=False, header_style="bold")
    for name in ["scenario", "network", "system", "units", "own CPU µs/unit",
                 "idle ms/s", "per process µs/unit", "redis µs",
                 "staging srv µs", "prod srv µs",
                 "prod wire /1k (up/down)", "staging wire /1k (up/down)", "docs written /1k",
                 "state writes /1k", "staging ins/upd/del cmds /1k", "replans",
                 "ratios to the floors"]:
        table.add_column(name, overflow="fold")
    for row in rows:
        costs = row.costs
        if costs is None or not row.changes:
            continue
        units = row.changes
        staging_ops = costs.staging_ops
        table.add_row(
            row.scenario, row.network, row.label, f"{units:,}",
            _num(cpu_per_unit(row)),
            _num(None if costs.idle_cpu_per_s is None else costs.idle_cpu_per_s * 1000, 1),
            _processes(costs, units),
            _infra(costs, "redis", units), _infra(costs, "staging-server", units),
            _infra(costs, "prod-server", units),
            _wire(costs, "prod", units), _wire(costs, "staging", units),
            _num(written_per_k(row)), _num(per_k(costs.other_writes(TARGET), units)),
            "/".join(_num(per_k(staging_ops.get(k), units)) for k in ("insert", "update",
                                                                       "delete"))
            if staging_ops else "—",
            _replans(costs), _batches(costs), ratios(row, rows),
        )
    return table


def _replans(costs: Costs) -> str:
    rounds = costs.rounds
    if not rounds or not rounds.get("applies"):
        return "—"
    return (f"{rounds['replanned']}/{rounds['applies']} applies "
            f"(+{rounds['extra_rounds']} rounds)")


def _batches(costs: Costs) -> str:
    """Median and p99 of the changes per applied message (the published batch sizes)."""
    if not costs.batches:
        return "—"
    ordered = sorted(costs.batches)
    p50 = ordered[(len(ordered) - 1) // 2]
    p99 = ordered[min(len(ordered) - 1, round(0.99 * len(ordered) + 0.5) - 1)]
    return f"{p50}/{p99} ({len(ordered):,} applies)"


def cost_notes(rows: Sequence[Any]) -> list[str]:
    if not any(getattr(r, "costs", None) is not None for r in rows):
        return []
    notes = [
        "cost table: own CPU = user + system CPU seconds of the system's own processes (watcher, "
        "each worker parent and pool child, a baseline's process, `command` = what the runner ran "
        "while measuring: `stagesync resync --wait` with its start-up and its waiting, the copy "
        "without its start-up, which its process measures), read from the OS at the start and "
        "end of the measurement, in µs per change (resync: per document); pool children that "
        "exited meanwhile are counted through their parent's reaped-children time. Redis and "
        "the servers are not in it: their own columns. idle ms/s = CPU milliseconds per second "
        "the same processes burnt in the 3 s before the measurement, nothing being written "
        "(polling, heartbeats, leases): on this server a run lasts long, and time-driven work "
        "weighs on every change (it is not subtracted: a busy loop replaces its idle polling). "
        "Wire: messages (by their 16-byte "
        "headers) and KiB per 1,000 units each way, counted by the 2 ms delay proxies (at "
        "loopback there is no proxy: no counts; see bench/network.py). docs written = entries "
        "of staging's local.oplog.rs for staging.orders; state writes = entries for every "
        "other staging namespace (stagesync's state database). staging ins/upd/del cmds = "
        "staging serverStatus.opcounters (commands, not documents). replans = applies the "
        "workers logged with more than one planning round (a write lost a race and was "
        "planned again).",
    ]
    infra = sorted({role_of(row) for r in rows if getattr(r, "costs", None) is not None
                    for row in r.costs.cpu if not is_system_row(row)})
    if infra:
        notes.append("processes outside `own CPU`: " + ", ".join(infra) + " (the proxies' CPU "
                     "is the harness's network, not the system's).")
    return notes
