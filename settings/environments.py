"""Environments: named short-lived stagings beside the main one (README, "Environments").

An environment holds one database per target database of the main staging, named from the
`database` template (`{db}__{env}` by default), on the staging deployment or on a deployment
of its own (`uri`). Names are checked here, without I/O: what a name produces must be a valid
MongoDB database name, and never one of the main staging's target databases or the state
database (`Settings.environment_databases`).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import Field, field_validator
from stagesync.settings.durations import parse_duration
from stagesync.settings.values import DurationText, StrictModel, check_mongodb_uri

# Lower-case letters, digits and dashes, starting with a letter or a digit, at most 31
# characters: fits a database name, a Redis key, a queue and a Prometheus label, and never
# holds the `@` that scopes a collection to an environment (`orders@pr-1`).
ENVIRONMENT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
LONGEST_NAME = "x" * 31


class EnvironmentNameError(ValueError):
    """A name that the rule refuses; the message gives the rule."""


def check_environment_name(name: str) -> str:
    if not ENVIRONMENT_NAME.fullmatch(name):
        raise EnvironmentNameError(
            f"bad environment name {name!r}: use 1 to 31 lower-case letters, digits and "
            "dashes, starting with a letter or a digit (e.g. pr-123)"
        )
    return name


class EnvironmentsSettings(StrictModel):
    """Where environments live, how many there may be, and how long they live by default."""

    # One database per target database and environment; must contain {db} and {env}.
    database: str = "{db}__{env}"
    max: Annotated[int, Field(ge=0, le=1_000)] = 20
    ttl: DurationText = "72h"  # lifetime when `env create` gives no --ttl
    # The production documents a frozen environment remembers (per `_id`, all collections)
    # before it stops remembering and its thaw becomes a resync.
    freeze_backlog: Annotated[int, Field(ge=0)] = 100_000
    # A deployment of their own (default: the staging deployment). Never production: the
    # same-deployment guard applies to it as to staging.
    uri: str | None = None

    @field_validator("database")
    @classmethod
    def _template(cls, value: str) -> str:
        for part in ("{db}", "{env}"):
            if part not in value:
                raise ValueError(f"{value!r} must contain {part}")
        leftover = value.replace("{db}", "").replace("{env}", "")
        if "{" in leftover or "}" in leftover:
            raise ValueError(f"{value!r} may hold only the placeholders {{db}} and {{env}}")
        return value

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        return None if value is None else check_mongodb_uri(value)

    @property
    def default_ttl(self) -> timedelta:
        return parse_duration(self.ttl)

    def database_name(self, db: str, environment: str) -> str:
        return self.database.replace("{db}", db).replace("{env}", environment)
