"""stagesync installs as one package, `stagesync`, and shares site-packages with others.

The rooms sit at the repository's top level (`settings/`, `tasks/`, ...) and pyproject.toml
maps each into the package. These tests build the sdist and the wheel as a user's pip would
(from a copy of the tracked files, so the checkout is left alone), install the wheel beside a
package that owns the generic names the rooms used to install under, and import both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOMS = ("settings", "protocol", "rules", "deployments", "state", "watcher", "tasks", "cli")


def _build(source: Path, out: Path, *kinds: str) -> list[Path]:
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", *kinds, "--outdir",
                           str(out), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return sorted(out.iterdir())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist built from the checkout's files (tracked or new, not ignored), and the wheel
    built from that sdist."""
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, check=True, capture_output=True,
                             text=True).stdout.split()
    source = tmp_path_factory.mktemp("source")
    for name in tracked:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    [sdist] = _build(source, dist, "--sdist")
    unpacked = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(sdist) as archive:
        archive.extractall(unpacked, filter="data")
    [sdist_root] = unpacked.iterdir()
    wheels = tmp_path_factory.mktemp("wheels")
    [wheel] = _build(sdist_root, wheels, "--wheel")
    return {"sdist": sdist, "wheel": wheel}


def _wheel_files(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_the_wheel_has_one_top_level_name(built: dict[str, Path]) -> None:
    files = _wheel_files(built["wheel"])
    top = {name.split("/")[0] for name in files if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"stagesync"}
    for room in ROOMS:
        assert f"stagesync/{room}/__init__.py" in files, room
    assert "stagesync/tasks/apply/applier.py" in files
    assert not [name for name in files if name.startswith(("stagesync/tests", "stagesync/bench"))]


def test_the_sdist_holds_every_module_of_the_rooms(built: dict[str, Path]) -> None:
    with tarfile.open(built["sdist"]) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for room in ROOMS:
        for path in (REPO / room).rglob("*.py"):
            assert str(path.relative_to(REPO)) in names, path


def test_pyproject_lists_every_package_folder() -> None:
    """`packages` is explicit (setuptools' finder cannot rename folders): a new subpackage
    left out of it would be missing from the wheel."""
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {"stagesync"}
    for room in ROOMS:
        for init in (REPO / room).rglob("__init__.py"):
            found.add(".".join(("stagesync", *init.parent.relative_to(REPO).parts)))
    assert set(tool["packages"]) == found
    assert {room: tool["package-dir"][f"stagesync.{room}"] for room in ROOMS} == \
        {room: room for room in ROOMS}


def _other_package(tmp: Path) -> Path:
    """A wheel that owns `settings`, `cli`, `rules` and `tasks`, as a Django project, the
    django-rules package or Celery's tutorial app does."""
    source = tmp / "other-src"
    for name in ("settings", "cli", "rules", "tasks"):
        (source / name).mkdir(parents=True)
        (source / name / "__init__.py").write_text(f"OWNER = 'other:{name}'\n")
    (source / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "other-generic-names"
        version = "1.0"

        [tool.setuptools]
        packages = ["settings", "cli", "rules", "tasks"]
        """))
    [wheel] = _build(source, tmp / "other-dist", "--wheel")
    return wheel


def test_installed_beside_a_package_with_generic_names_both_import(
    built: dict[str, Path], tmp_path: Path,
) -> None:
    target = tmp_path / "site"
    other = _other_package(tmp_path)
    for wheel in (other, built["wheel"]):
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--disable-pip-version-check", "--target", str(target), str(wheel)],
                       check=True, capture_output=True, timeout=300)
    code = textwrap.dedent("""\
        import cli, rules, settings, tasks
        assert [cli.OWNER, rules.OWNER, settings.OWNER, tasks.OWNER] == [
            "other:cli", "other:rules", "other:settings", "other:tasks"]
        import stagesync.settings, stagesync.tasks
        from stagesync.settings import load_settings
        from stagesync.tasks import app
        assert app.main == "stagesync"
        assert stagesync.settings.__file__.startswith(TARGET), stagesync.settings.__file__
        print("ok")
        """).replace("TARGET", repr(str(target)))
    # Run away from the checkout (whose top-level folders would shadow both packages), with
    # the wheels' folder first on the path; the dependencies come from this environment.
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
