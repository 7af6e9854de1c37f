"""What to sync: configuration models and their loader."""

from settings.collection import CollectionSettings
from settings.loader import (
    CONFIG_ENV,
    ConfigError,
    ConfigFileMissing,
    config_path,
    load_settings,
)
from settings.model import Settings
from settings.values import parse_rate_limit

__all__ = [
    "CONFIG_ENV",
    "CollectionSettings",
    "ConfigError",
    "ConfigFileMissing",
    "Settings",
    "config_path",
    "load_settings",
    "parse_rate_limit",
]
