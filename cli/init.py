"""`stagesync init`: a commented starter configuration, proposed from production when reachable.

Production is only read, through the read-only production reader: the collections
(`listDatabases`, `listCollections`), their indexes, an estimate of their size and a sample of
their newest documents. From those: a business key per collection (`cli.starter_config`:
unique indexes first) and PII rules from the same scanner as `stagesync pii scan`
(`cli.pii_proposal`). Values never leave this process: the file holds field names, rules
and counts only. An existing file is never overwritten.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from pymongo.errors import PyMongoError
from rich.console import Console
from stagesync.cli.pii_proposal import scan_documents
from stagesync.cli.starter_config import (
    ProposedCollection,
    collection_name,
    key_candidates,
    starter_yaml,
)
from stagesync.deployments.production import ProductionReader
from stagesync.settings.collection import CollectionSettings
from stagesync.settings.logs import redact_uri
from stagesync.settings.model import ProductionSettings

TIMEOUT_MS = 3000  # production unreachable: say so soon, write the example
PLACEHOLDER_PROD = "mongodb://prod-host:27017/?replicaSet=rs0"
PLACEHOLDER_STAGING = "mongodb://staging-host:27017/"


def run_init(console: Console, output: Path, prod_uri: str | None, staging_uri: str | None,
             redis_url: str, sample: int, databases: list[str]) -> int:
    if output.exists():
        console.print(f"[red]stagesync init:[/red] {output} exists and is left as it is; "
                      "choose another path with --output, or move it away", highlight=False)
        return 2
    proposed: list[ProposedCollection] = []
    reached: str | None = "no --prod-uri given"
    if prod_uri:
        try:
            proposed = _sample(console, prod_uri, sample, databases)
            reached = None
        except PyMongoError as error:
            reached = f"{redact_uri(prod_uri)} did not answer: {type(error).__name__}"
            console.print(f"[yellow]production not reached[/yellow] ({reached}); writing an "
                          "example to edit", highlight=False)
    text = starter_yaml(prod_uri or PLACEHOLDER_PROD, staging_uri or PLACEHOLDER_STAGING,
                        redis_url, secrets.token_hex(24), proposed, reached)
    try:
        with output.open("x", encoding="utf-8") as handle:  # "x": never overwrite
            handle.write(text)
    except FileExistsError:
        console.print(f"[red]stagesync init:[/red] {output} appeared meanwhile; left as it is",
                      highlight=False)
        return 2
    usable = sum(1 for c in proposed if c.candidates)
    console.print(f"wrote {output}: {usable} collection(s) proposed"
                  + (f", {len(proposed) - usable} left commented out (no business key found)"
                     if len(proposed) > usable else ""), highlight=False)
    console.print(f"next: review it, then `stagesync check --config {output}`",
                  highlight=False)
    return 0


def staging_namespace(database: str, collection: str) -> str:
    """`shop.orders` -> `shop_staging.orders`: a staging namespace never equal to production's
    (the configuration refuses equal ones: a swapped URI would write into production)."""
    return f"{database[:55]}_staging.{collection}"


def _sample(console: Console, prod_uri: str, sample: int,
            databases: list[str]) -> list[ProposedCollection]:
    production = ProductionReader(ProductionSettings(uri=prod_uri),
                                  serverSelectionTimeoutMS=TIMEOUT_MS)
    try:
        production.ping()
        namespaces = [ns for ns in production.namespaces()
                      if not databases or ns.partition(".")[0] in databases]
        taken: set[str] = set()
        proposed = []
        for namespace in namespaces:
            database, _, name = namespace.partition(".")
            reader = production.collection(namespace)
            documents = list(reader.find({}, sort=[("_id", -1)], limit=sample))
            candidates = key_candidates(reader.list_indexes(), documents)
            entry = ProposedCollection(
                name=collection_name(database, name, taken), source=namespace,
                target=staging_namespace(database, name), documents=reader.estimated_count(),
                sampled=len(documents), candidates=candidates)
            if documents and candidates:
                scan = scan_documents(documents, CollectionSettings(
                    name=entry.name, source=namespace, target=entry.target,
                    business_key=candidates[0].fields))
                entry.pii, entry.allow, entry.warnings = scan.pii, scan.allow, scan.warnings
            proposed.append(entry)
            console.print(f"sampled {namespace}: {len(documents)} document(s), "
                          f"{len(candidates)} business-key candidate(s), "
                          f"{len(entry.pii)} PII rule(s)", highlight=False)
        return proposed
    finally:
        production.close()
