"""The figures of the environments bench (issue 29's targets): pure arithmetic and the table.

Why apart from the measuring code: each target is a ratio or a bound computed from a few
measured numbers, and getting one of them wrong (which CPU is divided by what) would be
invisible in a run's output; these functions are unit-tested (tests/unit/test_bench_env_figures.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.table import Table
from stagesync.rules.identity import encode_id
from stagesync.rules.subset import in_sample

from bench.product import PII_SECRET


@dataclass(frozen=True)
class Figure:
    """One measured figure beside its target: met when `value <= limit`."""

    name: str
    value: float | None  # None: not measured (a step failed)
    limit: float
    unit: str  # "s", "x", "documents"
    detail: str = ""  # how it was obtained, the numbers it is made of

    @property
    def met(self) -> bool | None:
        return None if self.value is None else self.value <= self.limit

    def verdict(self) -> str:
        return {True: "met", False: "NOT met", None: "not measured"}[self.met]

    def value_text(self) -> str:
        if self.value is None:
            return "—"
        if self.unit == "x":
            return f"{self.value:.2f}x"
        if self.unit == "s":
            return f"{self.value:.1f} s"
        return f"{self.value:,.0f} {self.unit}"

    def limit_text(self) -> str:
        if self.unit == "x":
            return f"≤ {self.limit:g}x"
        if self.unit == "s":
            return f"≤ {self.limit:g} s"
        return f"≤ {self.limit:,.0f} {self.unit}"


def ratio(value: float | None, base: float | None) -> float | None:
    """`value / base`; None when either is missing or the base is not positive."""
    if value is None or base is None or base <= 0:
        return None
    return value / base


def per_change(total: float | None, changes: int) -> float | None:
    if total is None or changes <= 0:
        return None
    return total / changes


def extra_environment_cost(with_none: float | None, with_n: float | None, n: int
                           ) -> float | None:
    """What one more environment adds, relative to the main staging's own cost:
    `(with_n - with_none) / n / with_none` (issue 29: CPU per change per extra environment
    over the main staging's). Per-change figures in, a ratio out."""
    if with_none is None or with_n is None or n <= 0 or with_none <= 0:
        return None
    return (with_n - with_none) / n / with_none


def environment_databases(staging_db: str, template: str, names: Sequence[str]) -> list[str]:
    """The databases the environments' copies live in (`environments.database`, default
    `{db}__{env}`), for one staging database."""
    return [template.replace("{db}", staging_db).replace("{env}", name) for name in names]


def writes_in(written: Mapping[str, Counter[str]], databases: Sequence[str]) -> int:
    """Documents written (oplog entries, `bench.costs.oplog_writes`) in those databases."""
    prefixes = tuple(f"{db}." for db in databases)
    return sum(sum(ops.values()) for ns, ops in written.items() if ns.startswith(prefixes))


def figures_table(figures: Sequence[Figure], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column, justify in (("figure", "left"), ("measured", "right"), ("target", "right"),
                            ("", "left"), ("how", "left")):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for figure in figures:
        table.add_row(figure.name, figure.value_text(), figure.limit_text(), figure.verdict(),
                      figure.detail)
    return table


def figures_markdown(figures: Sequence[Figure]) -> str:
    """The same table in Markdown, to paste into bench/README.md."""
    lines = ["| figure | measured | target | | how |", "|---|---|---|---|---|"]
    lines += [f"| {f.name} | **{f.value_text()}** | {f.limit_text()} | {f.verdict()} | "
              f"{f.detail} |" for f in figures]
    return "\n".join(lines)


def order_in_environment(customer: Any, percent: float | None) -> bool:
    """Does an environment created with `--sample percent` (None: a full one) hold an order
    with this `customerId`? The users are sampled by the product's own keyed hash
    (`rules.subset.in_sample`, as `tasks.apply.targets.environment_settings` configures it,
    with the bench's `pii_secret`) and the orders follow their user."""
    if percent is None:
        return True
    return customer is not None and in_sample(encode_id(customer), percent,
                                              PII_SECRET.encode())
