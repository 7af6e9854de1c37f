"""`stagesync check`: is this configuration usable, here and now?

Errors (exit 1): a deployment or Redis that does not answer, staging that is production.
Warnings (exit 0): things that will not stop the sync but will surprise someone, found by
sampling production documents: the soft-delete field already used by production, business-key
fields missing, PII rules that match nothing, staging masked under older PII rules, many-to-one
PII rules on fields a unique staging index covers, index drift against production (missing,
extra, failed builds, and every translation with how). A strict collection with unclassified
paths is an error (`cli.pii_checks`).
"""

from __future__ import annotations

from typing import Any

import redis
from pymongo.errors import PyMongoError
from rich.console import Console
from stagesync.cli.index_drift import drift_of, drift_warnings
from stagesync.cli.pii_checks import unclassified_problems, unique_index_warnings
from stagesync.deployments.guard import (
    SameDeploymentError,
    assert_distinct_deployments,
    assert_distinct_uris,
)
from stagesync.deployments.production import ProductionReader
from stagesync.deployments.staging import connect_staging
from stagesync.rules.identity import business_key, key_paths
from stagesync.rules.paths import has_path, split_dotted
from stagesync.rules.pii import paths_matched
from stagesync.settings.collection import CollectionSettings
from stagesync.settings.logs import redact_uri
from stagesync.settings.model import Settings
from stagesync.state.database import state_database
from stagesync.state.guard_markers import GuardMarkers
from stagesync.state.pii_state import masking_drift

SAMPLE = 20
TIMEOUT_MS = 5000


def run_check(settings: Settings, console: Console) -> int:
    problems: list[str] = []
    warnings: list[str] = []
    console.print(f"configuration: ok ({len(settings.collections)} collection(s): "
                  f"{', '.join(c.name for c in settings.collections)})")
    try:
        assert_distinct_uris(settings)  # refused before asking any server
    except SameDeploymentError as error:
        console.print(f"[red]error:[/red] {redact_uri(str(error))}", highlight=False)
        return 1
    # Listed only while allowed (otherwise the configuration did not load).
    warnings.extend(f"allow_unsafe_concerns is set: {concern}"
                    for concern in settings.unsafe_concerns())
    production = ProductionReader(settings.prod, serverSelectionTimeoutMS=TIMEOUT_MS)
    staging = connect_staging(settings.staging, serverSelectionTimeoutMS=TIMEOUT_MS)
    reached = {"production": _reach(production.ping, "production", problems),
               "staging": _reach(lambda: staging.admin.command("ping"), "staging", problems)}
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3,
                                      socket_timeout=3)
        client.ping()
        console.print("redis: reachable")
    except redis.RedisError as error:
        problems.append(f"redis unreachable ({redact_uri(settings.redis_url)}): {error}")
    for name, ok in reached.items():
        if ok:
            console.print(f"{name}: reachable")
    if all(reached.values()):
        state_db = state_database(staging, settings.staging)
        try:
            assert_distinct_deployments(production, staging, settings, GuardMarkers(state_db))
            console.print("deployments: production and staging are distinct")
        except SameDeploymentError as error:
            problems.append(str(error))
        for collection in settings.collections:
            warnings.extend(_sample_warnings(production, collection))
            drift = masking_drift(state_db, settings, collection)
            if drift:
                warnings.append(f"{collection.name}: {drift}")
            problems.extend(unclassified_problems(
                production, state_db, collection))
            warnings.extend(unique_index_warnings(staging, collection))
            warnings.extend(_follow_index_warnings(production, collection))
            warnings.extend(_index_drift_warnings(settings, production, staging, collection))
    production.close()
    staging.close()
    for warning in warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    for problem in problems:
        console.print(f"[red]error:[/red] {redact_uri(problem)}", highlight=False)
    if problems:
        return 1
    console.print("[green]check passed[/green]")
    return 0


def _follow_index_warnings(production: ProductionReader, collection: CollectionSettings
                           ) -> list[str]:
    """A parent entering a subset brings its children in by reading production by the
    followed path: without an index there, every such read scans the collection."""
    follow = collection.subset.follow if collection.subset else None
    if follow is None:
        return []
    try:
        keys = production.collection(collection).index_keys()
    except PyMongoError as error:
        return [f"{collection.name}: cannot list production indexes ({error})"]
    if any(key and key[0] == follow for key in keys):
        return []
    return [f"{collection.name}: production {collection.source} has no index on {follow!r}; "
            "subset.follow reads children by it when a parent enters or leaves the subset"]


def _index_drift_warnings(settings: Settings, production: ProductionReader, staging: Any,
                          collection: CollectionSettings) -> list[str]:
    """Production's indexes against staging's: missing, extra, failed builds, and each
    translation with how (README, "Indexes in staging"). Warnings: the sync goes on."""
    return drift_warnings(collection.name,
                          drift_of(settings, collection, production, staging))


def _reach(ping: Any, name: str, problems: list[str]) -> bool:
    try:
        ping()
        return True
    except Exception as error:  # any failure to talk to it is the answer we report
        problems.append(f"{name} unreachable: {type(error).__name__}: {str(error)[:300]}")
        return False


def _sample_warnings(production: ProductionReader, collection: CollectionSettings) -> list[str]:
    source = production.collection(collection)
    try:
        sample = list(source.find(collection.filter or {}, limit=SAMPLE))
    except PyMongoError as error:
        return [f"{collection.name}: cannot read {collection.source}: {error}"]
    if not sample:
        return [f"{collection.name}: {collection.source} has no documents to sample"]
    found: list[str] = []
    soft_delete = split_dotted(collection.soft_delete_field)
    if any(has_path(doc, soft_delete) for doc in sample):
        found.append(
            f"{collection.name}: production documents already have a "
            f"'{collection.soft_delete_field}' field; the sync owns it in staging "
            "(set soft_delete_field to another name)"
        )
    paths = key_paths(collection.business_key)
    missing = sum(1 for doc in sample if business_key(doc, paths) is None)
    if missing:
        found.append(
            f"{collection.name}: {missing} of {len(sample)} sampled documents lack the business "
            f"key ({', '.join(collection.business_key)}); they will be dead-lettered"
        )
    matched: set[str] = set()
    for doc in sample:
        matched |= paths_matched(doc, collection.pii)
    for path in sorted(set(collection.pii) - matched):
        found.append(
            f"{collection.name}: pii rule '{path}' matches nothing in {len(sample)} sampled "
            "documents (typo?)"
        )
    return found
