"""What to sync: configuration models and their loader."""

from stagesync.settings.collection import CollectionSettings
from stagesync.settings.loader import (
    CONFIG_ENV,
    ConfigError,
    ConfigFileMissing,
    config_path,
    load_settings,
)
from stagesync.settings.model import Settings
from stagesync.settings.values import parse_rate_limit

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
