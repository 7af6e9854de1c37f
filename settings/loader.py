"""Load the configuration from one YAML file plus `STAGESYNC_*` environment variables.

Errors name the key as the user wrote it (`collections[0] (orders).business_key`), never a
pydantic internal, and never echo a value that could hold a password.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_settings import SettingsError
from stagesync.settings.model import Settings

CONFIG_ENV = "STAGESYNC_CONFIG"
DEFAULT_CONFIG = "stagesync.yaml"


class ConfigError(Exception):
    """A configuration that cannot be used; the message names every offending key."""


class ConfigFileMissing(ConfigError):
    """No configuration file where one was looked for: says where, and how to make one."""


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """`--config PATH`, else `STAGESYNC_CONFIG`, else ./stagesync.yaml."""
    chosen = explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    return Path(chosen)


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    source = config_path(path)
    data = _read_yaml(source) if source.exists() else _missing(source, path)
    try:
        return Settings(**data)
    except ValidationError as error:
        if not source.exists():
            # Nothing to name but keys the user never wrote: say that the file is missing.
            raise ConfigFileMissing(missing_file_message(source, "the default path")) from None
        raise ConfigError(format_validation_error(error, _labels(data), source)) from None
    except SettingsError as error:
        # An environment value that is not valid JSON, e.g. STAGESYNC_COLLECTIONS.
        cause = error.__cause__ or error
        raise ConfigError(
            f"invalid configuration (environment): {_env_key(str(error))}: {cause}"
        ) from None


def _env_key(message: str) -> str:
    """'error parsing value for field "collections" from source "EnvSettingsSource"' -> key."""
    match = re.search(r'field "([^"]+)"', message)
    return match.group(1) if match else "environment"


def _labels(data: dict[str, Any]) -> dict[str, Any]:
    """What the user wrote, for naming keys in errors; the environment wins, as in loading."""
    override = os.environ.get("STAGESYNC_COLLECTIONS")
    if override is None:
        return data
    try:
        return {**data, "collections": json.loads(override)}
    except ValueError:
        return data


def _missing(source: Path, explicit: str | os.PathLike[str] | None) -> dict[str, Any]:
    if explicit:
        raise ConfigFileMissing(missing_file_message(source, "--config"))
    if os.environ.get(CONFIG_ENV):
        raise ConfigFileMissing(missing_file_message(source, CONFIG_ENV))
    # No file at all: the environment alone may carry the whole configuration.
    return {}


def missing_file_message(source: Path, chosen_by: str) -> str:
    """Where the file was looked for, what chose that path, and how to get one."""
    return (
        f"configuration file {source.absolute()} does not exist (path from {chosen_by})\n"
        f"  choose a file with --config PATH or {CONFIG_ENV}=PATH (default: ./{DEFAULT_CONFIG})\n"
        "  write a starter one: stagesync init --prod-uri URI --staging-uri URI\n"
        "  or explore a local one: stagesync demo --keep"
    )


def _read_yaml(source: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}") from None
    except OSError as error:
        raise ConfigError(f"{source}: cannot read ({error.strerror})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    return data


def format_validation_error(error: ValidationError, data: dict[str, Any], source: Path) -> str:
    lines = [f"invalid configuration ({source}):"]
    for problem in error.errors():
        key = _dotted(problem["loc"], data)
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown key"
        elif problem["type"] == "missing":
            message = "required key is missing"
        lines.append(f"  {key}: {message}" if key else f"  {message}")
    return "\n".join(lines)


def _dotted(location: tuple[int | str, ...], data: dict[str, Any]) -> str:
    """('collections', 0, 'business_key') -> 'collections[0] (orders).business_key'."""
    parts: list[str] = []
    node: Any = data
    for item in location:
        if isinstance(item, int):
            label = f"[{item}]"
            entry = node[item] if isinstance(node, list) and item < len(node) else None
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                label += f" ({entry['name']})"
            parts.append(label)
            node = entry
        else:
            parts.append(f".{item}" if parts else str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts)
