"""The guard refuses two connection strings naming one host before asking any server."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from rich.console import Console
from stagesync.cli.check import run_check
from stagesync.deployments.guard import SameDeploymentError, assert_distinct_deployments
from stagesync.settings.model import Settings


class Untouchable:
    """Stands in for both clients: any use of it is a server being asked."""

    load_balanced = False

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a server was asked ({name}) although the URIs already decide")


def settings(prod_uri: str, staging_uri: str) -> Settings:
    return Settings(prod={"uri": prod_uri}, staging={"uri": staging_uri},
                    collections=[{"name": "orders", "source": "p.orders",
                                  "target": "s.orders", "business_key": ["k"]}])


@pytest.mark.parametrize("staging_uri", [
    "mongodb://writer:pw@prod-1.corp.test,prod-2.corp.test:27017/?replicaSet=rs0",
    "mongodb://PROD-2.corp.test:27017/?directConnection=true",
])
def test_shared_hosts_are_refused_before_any_server_is_asked(staging_uri: str) -> None:
    config = settings("mongodb://reader:pw@prod-1.corp.test:27017,prod-2.corp.test/"
                      "?replicaSet=rs0", staging_uri)
    with pytest.raises(SameDeploymentError, match=re.escape("prod-2.corp.test:27017")):
        assert_distinct_deployments(Untouchable(), Untouchable(), config,  # type: ignore[arg-type]
                                    Untouchable())


def test_check_refuses_shared_hosts_without_connecting() -> None:
    # An address nothing answers on: connecting would take the 5 s server selection timeout
    # and report "unreachable" instead of the refusal.
    config = settings("mongodb://192.0.2.1:27017/", "mongodb://192.0.2.1:27017/")
    out = io.StringIO()
    assert run_check(config, Console(file=out, width=200)) == 1
    assert "reaches the production deployment" in out.getvalue()
    assert "unreachable" not in out.getvalue()
