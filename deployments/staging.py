"""The staging connection every process opens: watcher, workers and the CLI alike.

Reads on `_sync.*` and on the raw business-key fields state the simple collation (`SIMPLE`),
the collation of stagesync's indexes: a staging collection restored with a case-insensitive
default collation would otherwise make `_sync.pid`s and `_sync.key`s that differ only in case
match each other.
"""

from __future__ import annotations

from typing import Any

from pymongo import MongoClient
from pymongo.collation import Collation
from stagesync.settings.model import StagingSettings

SIMPLE = Collation(locale="simple")


def connect_staging(settings: StagingSettings, **client_options: Any
                    ) -> MongoClient[dict[str, Any]]:
    # socketTimeoutMS: a staging server that stops answering fails the call (a transient
    # error, retried) instead of hanging the process.
    options = {"socketTimeoutMS": 60_000, **client_options}
    return MongoClient(settings.uri, w=settings.write_concern, appname="stagesync", **options)
