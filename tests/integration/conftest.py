"""Fixtures only some integration tests need (the session-wide ones are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from stagesync.deployments.production import ProductionReader, ReadOnlyCollection
from stagesync.settings.model import ProductionSettings

from tests.support.backends import MongoPair
from tests.support.own_servers import OwnServers


@pytest.fixture
def own_servers(mongo_pair: MongoPair, redis_url: str, tmp_path: Path) -> Iterator[OwnServers]:
    """Servers of the test's own (see tests/support/own_servers.py); SecantusDB only."""
    if not mongo_pair.is_test_server:
        pytest.skip("needs servers of its own started here (a short oplog, a restartable "
                    "storage directory): only with the SecantusDB backend")
    servers = OwnServers(mongo_pair, redis_url, tmp_path / "own")
    yield servers
    servers.stop()


@pytest.fixture(scope="module")
def clients(mongo_pair: MongoPair) -> Iterator[tuple[ProductionReader, Any, Any]]:
    """In-process applies wired like a worker's: a read-only production reader, a staging
    client, and a production writer for the test's own history."""
    reader = ProductionReader(ProductionSettings(uri=mongo_pair.prod_uri))
    staging: MongoClient[Any] = MongoClient(mongo_pair.staging_uri)
    writer: MongoClient[Any] = MongoClient(mongo_pair.prod_uri)
    yield reader, staging, writer
    reader.close()
    staging.close()
    writer.close()


@pytest.fixture
def production_finds(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every query this process sends to production (the read-only reader's finds)."""
    seen: list[dict[str, Any]] = []
    real = ReadOnlyCollection.find

    def counted(self: ReadOnlyCollection, query: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(dict(query))
        return real(self, query, *args, **kwargs)

    monkeypatch.setattr(ReadOnlyCollection, "find", counted)
    return seen
