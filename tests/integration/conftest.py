"""Fixtures only some integration tests need (the session-wide ones are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
