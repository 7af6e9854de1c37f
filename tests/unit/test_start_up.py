"""The watcher and the worker prepare staging through one function, `prepare_staging`: the
guard first (a refusal creates nothing anywhere), then the target and state indexes."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from stagesync.deployments.guard import SameDeploymentError
from stagesync.settings.model import Settings
from stagesync.state import start_up
from stagesync.state.guard_markers import GuardMarkers

REPO = Path(__file__).resolve().parents[2]


def _called(path: str) -> set[str]:
    tree = ast.parse((REPO / path).read_text())
    return {node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            for node in ast.walk(tree) if isinstance(node, ast.Call)}


@pytest.mark.parametrize("path", ["watcher/runner.py", "tasks/worker_signals.py"])
def test_both_start_ups_call_the_one_function(path: str) -> None:
    called = _called(path)
    assert "prepare_staging" in called
    assert not called & {"assert_distinct_deployments", "ensure_indexes", "ensure_state_indexes"}


class Client:
    """Stands in for the staging client: hands out a named database."""

    def __getitem__(self, name: str) -> Any:
        return Database(name)


class Database:
    def __init__(self, name: str) -> None:
        self.name = name

    def __getitem__(self, collection: str) -> str:
        return f"{self.name}.{collection}"


def settings() -> Settings:
    return Settings(prod={"uri": "mongodb://prod:27017/"},
                    staging={"uri": "mongodb://staging:27017/", "state_db": "ours"},
                    collections=[{"name": "orders", "source": "p.orders",
                                  "target": "s.orders", "business_key": ["k"]}])


def test_the_guard_runs_first_with_the_state_databases_marker_then_the_indexes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    done: list[Any] = []
    monkeypatch.setattr(start_up, "assert_distinct_deployments",
                        lambda _p, _s, _c, markers: done.append(markers))
    monkeypatch.setattr(start_up, "loading", lambda _db, names: set(names))
    monkeypatch.setattr(start_up, "ensure_indexes",
                        lambda _c, _s, loading: done.append(("targets", loading)))
    monkeypatch.setattr(start_up, "ensure_state_indexes", lambda db: done.append(db.name))
    start_up.prepare_staging(object(), Client(), settings())  # type: ignore[arg-type]
    markers, *rest = done
    assert isinstance(markers, GuardMarkers)
    assert (markers.database, markers.collection) == ("ours", "guard")
    assert rest == [("targets", {"orders"}), "ours"]


def test_a_refusal_creates_no_index(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any) -> None:
        raise SameDeploymentError("refusing to run")

    monkeypatch.setattr(start_up, "assert_distinct_deployments", refuse)
    monkeypatch.setattr(start_up, "ensure_indexes",
                        lambda *_, **__: pytest.fail("indexes created"))
    monkeypatch.setattr(start_up, "ensure_state_indexes",
                        lambda *_: pytest.fail("state indexes created"))
    with pytest.raises(SameDeploymentError):
        start_up.prepare_staging(object(), Client(), settings())  # type: ignore[arg-type]
