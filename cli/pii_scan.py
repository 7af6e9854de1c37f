"""`stagesync pii scan NAME [--sample N]`: classify production's fields, propose `pii` and `allow`.

Reads the N newest documents of the collection (by `_id`, where fields added lately show up
first; within the configured filter) through the read-only production reader, and prints:
- a table: every leaf path, the kind of personal data found, the share of values that match,
  the shape of one matching value (`aaaa@aaaa.aaa`, never a value) and the proposal;
- a YAML block with the proposed `pii` rules and `allow` entries, to paste into the
  collection's configuration as it is (it passes the configuration's validation).
The detection itself is pure (`cli.pii_proposal`, `rules.pii_detect`).
"""

from __future__ import annotations

from pymongo.errors import PyMongoError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from stagesync.cli.pii_proposal import PathFinding, ScanResult, kind_label, scan_documents
from stagesync.deployments.production import ProductionReader
from stagesync.settings.model import Settings

TIMEOUT_MS = 10_000
DECISIONS = {
    "rule": "[yellow]{rule}[/yellow]",
    "configured": "masked (configured)",
    "allow": "[green]allow[/green]",
    "allowed": "allowed (configured)",
    "key": "kept (business key)",
    "id": "kept (_id)",
    "unsupported": "[red]cannot be masked[/red]",
}


def run_scan(settings: Settings, name: str, sample: int, console: Console) -> int:
    collection = settings.collection(name)
    production = ProductionReader(settings.prod, serverSelectionTimeoutMS=TIMEOUT_MS)
    try:
        documents = production.collection(collection).find(
            collection.filter or {}, sort=[("_id", -1)], limit=sample
        )
        result = scan_documents(documents, collection)
    except PyMongoError as error:
        console.print(f"[red]error:[/red] cannot read {collection.source}: "
                      f"{type(error).__name__}", highlight=False)
        return 1
    finally:
        production.close()
    if not result.sampled:
        console.print(f"{collection.source} has no documents to scan")
        return 1
    console.print(render_table(result))
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    keyed = any(rule == "hash" or rule.startswith("fake") for rule in result.pii.values())
    if keyed and not settings.secret_bytes():
        console.print("[yellow]note:[/yellow] hash and fake rules need pii_secret "
                      "(set STAGESYNC_PII_SECRET)", highlight=False)
    console.print()
    console.print(result.proposal_yaml(), markup=False, highlight=False, soft_wrap=True)
    return 0


def render_table(result: ScanResult) -> Table:
    table = Table(title=f"{result.collection}: {result.sampled} document(s) sampled from "
                        f"{result.source}")
    for column in ("path", "kind", "matching", "example shape", "documents", "proposal"):
        table.add_column(column)
    for finding in result.findings:
        table.add_row(
            escape(finding.path), _kind(finding), _share(finding),
            escape(finding.example or "-"),
            f"{finding.documents}/{result.sampled}",
            _decision(finding),
        )
    return table


def _kind(finding: PathFinding) -> str:
    if finding.kind is None:
        return "-"
    label = kind_label(finding.kind)
    if finding.inside:
        label += " (" + ", ".join(kind_label(kind) for kind in finding.inside) + ")"
    return label


def _share(finding: PathFinding) -> str:
    if finding.kind is None:
        return "-" if finding.values else "no values"
    if finding.by_name:
        return "by name"
    return f"{(finding.share or 0.0):.0%} of {finding.values}"


def _decision(finding: PathFinding) -> str:
    text = DECISIONS[finding.decision].format(rule=escape(finding.rule or ""))
    return f"{text} [dim]{escape(finding.note)}[/dim]" if finding.note else text
