"""Read and write concerns that let a rollback make staging wrong for good are refused unless
`allow_unsafe_concerns: true`; the error names the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from stagesync.settings import load_settings
from stagesync.settings.loader import ConfigError


def config(**sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "prod": {"uri": "mongodb://prod-host:27017/?replicaSet=rs0"},
        "staging": {"uri": "mongodb://staging-host:27017/"},
        "collections": [{"name": "orders", "source": "production.orders",
                         "target": "staging.orders", "business_key": ["userEmail"]}],
    }
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return data


def load(tmp_path: Path, data: dict[str, Any]) -> Any:
    path = tmp_path / "stagesync.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_settings(path)


@pytest.mark.parametrize(("sections", "key"), [
    ({"prod": {"read_concern": "local"}}, "prod.read_concern"),
    ({"staging": {"write_concern": 1}}, "staging.write_concern"),
    ({"staging": {"write_concern": 2}}, "staging.write_concern"),
])
def test_unsafe_concerns_are_refused_naming_the_key(
    tmp_path: Path, sections: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, config(**sections))
    message = str(raised.value)
    assert key in message and "allow_unsafe_concerns" in message and "majority" in message


def test_defaults_are_safe(tmp_path: Path) -> None:
    loaded = load(tmp_path, config())
    assert loaded.unsafe_concerns() == [] and loaded.allow_unsafe_concerns is False


def test_allowed_unsafe_concerns_load_and_are_listed(tmp_path: Path) -> None:
    loaded = load(tmp_path, config(prod={"read_concern": "local"},
                                   staging={"write_concern": 1}, allow_unsafe_concerns=True))
    concerns = loaded.unsafe_concerns()
    assert [c.split(":")[0] for c in concerns] == ["prod.read_concern", "staging.write_concern"]


def test_the_environment_can_allow_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGESYNC_ALLOW_UNSAFE_CONCERNS", "true")
    loaded = load(tmp_path, config(staging={"write_concern": 1}))
    assert loaded.allow_unsafe_concerns and len(loaded.unsafe_concerns()) == 1
