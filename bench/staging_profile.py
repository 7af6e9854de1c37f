"""Where a system's staging server time goes: the server's own profiler, summed per command.

`--profile-staging` turns the database profiler on (level 2: every operation) in every
staging database before a row is measured, and sums `millis` per namespace and command shape
afterwards. The row's figures are then measured with the profiler on, which costs the server
some time of its own: use it to see the split, not for the table's ratios.

Why the server's profiler rather than counting wire messages: a bulk write of 500 updates is
one message, yet it costs the server 500 index-maintaining updates. The per-process CPU in the
table says which server is busy; this says with what.

On MongoDB the profile collection is capped at 1 MB, so a long run keeps only its end; it is
recreated larger here where the server allows it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

PROFILE_BYTES = 512 * 1024 * 1024
SKIPPED_DATABASES = ("admin", "config", "local")


def start(client: MongoClient[Any]) -> list[str]:
    """Profile every operation in every staging database that exists now; the names."""
    names = [name for name in client.list_database_names() if name not in SKIPPED_DATABASES]
    for name in names:
        database = client[name]
        database.command("profile", 0)
        try:
            database.drop_collection("system.profile")
            database.create_collection("system.profile", capped=True, size=PROFILE_BYTES)
        except PyMongoError:
            pass  # a server that keeps its profile its own way: use it as it is
        database.command("profile", 2)
    return names


def shape(entry: dict[str, Any]) -> str:
    """A command without its values: the operation, its collection, and what kind of write or
    read it is (`update` by the first update's operators or pipeline, `find` by filter keys)."""
    command = entry.get("command") or {}
    op = str(entry.get("op", "?"))
    collection = str(entry.get("ns", "?"))
    if op == "update":
        update = (command.get("u") if "u" in command else
                  (command.get("updates") or [{}])[0].get("u"))
        form = "pipeline" if isinstance(update, list) else ",".join(sorted(update or {}))
        return f"{collection} update {form}"
    if op in ("query", "getmore"):
        query = command.get("filter") or {}
        return f"{collection} {op} {{{','.join(sorted(query))}}}"
    return f"{collection} {op}"


def report(client: MongoClient[Any], names: list[str], seconds: float, top: int = 8) -> str:
    """The profiled time per command shape, largest first, as one line of the table's notes."""
    millis: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for name in names:
        database = client[name]
        database.command("profile", 0)
        for entry in database["system.profile"].find({}, {"op": 1, "ns": 1, "command": 1,
                                                          "millis": 1}):
            key = shape(entry)
            millis[key] += int(entry.get("millis") or 0)
            counts[key] += 1
    total = sum(millis.values()) / 1000
    parts = [f"{key} {spent / 1000:.1f} s ({counts[key]:,} ops)"
             for key, spent in millis.most_common(top)]
    return (f"staging server profile: {total:.1f} s of operations in {seconds:.0f} s; "
            + "; ".join(parts))
