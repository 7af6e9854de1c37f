"""The `environments` settings section and the environment name rule."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from stagesync.settings.environments import ENVIRONMENT_NAME, check_environment_name

from tests.unit.test_settings import (
    _clean_environment,  # noqa: F401  (autouse: no STAGESYNC_* leaks in)
    assert_names,
    config_error,
    load,
    minimal,
)


def test_defaults(tmp_path: Path) -> None:
    settings = load(tmp_path, minimal())
    environments = settings.environments
    assert environments.database == "{db}__{env}"
    assert environments.max == 20
    assert environments.default_ttl == timedelta(hours=72)
    assert environments.uri is None
    assert settings.environment_databases("pr-1") == {"staging": "staging__pr-1"}


def test_section_loads(tmp_path: Path) -> None:
    data = minimal()
    data["environments"] = {"database": "env_{env}_{db}", "max": 3, "ttl": "90m",
                            "uri": "mongodb://envs:27017/"}
    settings = load(tmp_path, data)
    assert settings.environments.max == 3
    assert settings.environments.default_ttl == timedelta(minutes=90)
    assert settings.environment_databases("t1") == {"staging": "env_t1_staging"}


@pytest.mark.parametrize(("section", "fragments"), [
    ({"database": "{db}_copy"}, ("environments.database", "{env}")),
    ({"database": "{env}"}, ("environments.database", "{db}")),
    ({"database": "{db}_{env}_{pr}"}, ("environments.database", "placeholders")),
    ({"database": "{db}.{env}"}, ("environments.database", "not a valid MongoDB database")),
    ({"database": "{db}__{env}" + "x" * 40}, ("environments.database", "63 bytes")),
    ({"ttl": "soon"}, ("environments.ttl", "duration")),
    ({"max": -1}, ("environments.max",)),
    ({"uri": "http://x"}, ("environments.uri", "mongodb://")),
    ({"tll": "1h"}, ("environments.tll",)),
])
def test_errors_name_the_key(tmp_path: Path, section: dict[str, object],
                             fragments: tuple[str, ...]) -> None:
    data = minimal()
    data["environments"] = section
    assert_names(config_error(tmp_path, data), *fragments)


@pytest.mark.parametrize("name", ["pr-1", "a", "0", "qa-run-2026-12-04", "x" * 31])
def test_good_names(name: str) -> None:
    assert check_environment_name(name) == name


@pytest.mark.parametrize("name", ["", "-pr", "PR-1", "pr_1", "pr.1", "pr@1", "pr 1",
                                  "x" * 32, "é"])
def test_bad_names_say_the_rule(name: str) -> None:
    with pytest.raises(ValueError, match=r"bad environment name.*lower-case letters"):
        check_environment_name(name)
    assert not ENVIRONMENT_NAME.fullmatch(name)


def test_a_name_never_gives_a_main_staging_database(tmp_path: Path) -> None:
    data = minimal()
    data["environments"] = {"database": "{db}{env}"}
    data["collections"].append({"name": "audit", "source": "production.audit",
                                "target": "staging2.audit", "business_key": ["n"]})
    settings = load(tmp_path, data)
    with pytest.raises(ValueError, match=r"'staging2'.*main staging's own"):
        settings.environment_databases("2")
    data["staging"]["state_db"] = "stagingx"
    settings = load(tmp_path, data)
    with pytest.raises(ValueError, match=r"'stagingx'.*main staging's own"):
        settings.environment_databases("x")
    assert settings.environment_databases("y") == {"staging": "stagingy",
                                                   "staging2": "staging2y"}
