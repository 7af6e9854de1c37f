"""Byte-level snapshots of a deployment, to prove stagesync left it unchanged."""

from __future__ import annotations

from typing import Any

from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient


def production_snapshot(client: MongoClient[Any]) -> dict[str, Any]:
    """Every collection: its index names and raw documents."""
    snapshot: dict[str, Any] = {}
    for database in sorted(client.list_database_names()):
        if database in ("admin", "local", "config"):
            continue
        for name in sorted(client[database].list_collection_names()):
            collection = client[database].get_collection(name)
            raw = collection.with_options(codec_options=collection.codec_options.with_options(
                document_class=RawBSONDocument))
            snapshot[f"{database}.{name}"] = {
                "indexes": sorted(collection.index_information()),
                "documents": sorted(bytes(d.raw) for d in raw.find({})),
            }
    return snapshot
