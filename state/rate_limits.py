"""Per-queue rate limits changed at run time (`stagesync ratelimit NAME RATE`), in the state
database's `runtime` collection. Each change is announced (`deployments.broker.ChangeSignal`,
RATE_LIMITS_CHANGED_KEY), and every worker reads the overrides again at its next apply.

The limit itself is enforced in Redis (`tasks.apply.rate_limit`); only the override must
survive a Redis wipe and be shared by every worker, so it lives here. `runtime` also holds the
PII masking records (`state.pii_state`); the two keep apart by `_id` prefix.
"""

from __future__ import annotations

from typing import Any

from pymongo.database import Database
from stagesync.deployments.broker import ChangeSignal
from stagesync.protocol.names import RUNTIME
from stagesync.settings.model import Settings
from stagesync.settings.values import parse_rate_limit

COLLECTION = RUNTIME
RATE = "rate"  # the override, as written by the user ("2000/s")


def override_id(collection: str) -> str:
    return f"rate_limit:{collection}"


def set_rate_override(state_db: Database[dict[str, Any]], collection: str, rate: str | None,
                      signal: ChangeSignal) -> None:
    """Store (or with None, remove) the run-time rate of a collection's queues, and announce
    it to the workers."""
    if rate is not None:
        parse_rate_limit(rate)  # refuse a rate no worker could parse
    try:
        if rate is None:
            state_db[COLLECTION].delete_one({"_id": override_id(collection)})
        else:
            state_db[COLLECTION].update_one(
                {"_id": override_id(collection)}, {"$set": {RATE: rate}}, upsert=True
            )
    finally:
        signal.announce()


def effective_rate(
    settings: Settings, state_db: Database[dict[str, Any]], collection: str
) -> tuple[str | None, str]:
    """(rate, source) where source is 'runtime', 'config' or 'none'."""
    override = state_db[COLLECTION].find_one({"_id": override_id(collection)})
    if override and override.get(RATE):
        return str(override[RATE]), "runtime"
    configured = settings.collection(collection).rate_limit
    return (configured, "config") if configured else (None, "none")
