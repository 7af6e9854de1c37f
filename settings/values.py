"""Checks of single values that every settings model shares: names, field paths, rates, URIs.

Kept apart from the models so that each model module stays about one part of the file.
"""

from __future__ import annotations

import re
from typing import Annotated

from limits import RateLimitItem, parse
from pydantic import AfterValidator, BaseModel, ConfigDict
from stagesync.settings.durations import parse_duration

# Queue names are `stagesync.<name>` and partitions `stagesync.<name>.<n>`, so a name must not
# contain a dot; Redis keys and Prometheus labels are built from it too.
COLLECTION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
# MongoDB's own rules for database names (no `/\. "$*<>:|?`, at most 63 bytes).
DATABASE_NAME = re.compile(r'^[^/\\. "$*<>:|?\x00]{1,63}$')
RATE_UNITS = {"s": "second", "sec": "second", "m": "minute", "min": "minute", "h": "hour",
              "d": "day"}


class StrictModel(BaseModel):
    """Unknown keys fail loudly (a typo never falls back to a default); values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_rate_limit(value: str) -> RateLimitItem:
    """Parse `2000/s`, `120/min` or any `limits` expression into one rate limit item."""
    text = value.strip()
    match = re.fullmatch(r"(\d+)\s*/\s*(\d*)\s*([A-Za-z]+)", text)
    if match:
        amount, multiple, unit = match.groups()
        unit = RATE_UNITS.get(unit.lower(), unit)
        text = f"{amount}/{multiple}{unit}" if multiple else f"{amount}/{unit}"
    try:
        item = parse(text)
    except ValueError as error:
        raise ValueError(f"{value!r} is not a rate such as '2000/s' or '100/minute'") from error
    if item.amount < 1:
        raise ValueError(f"{value!r} allows nothing")
    return item


def overlapping(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def check_field_path(path: str) -> None:
    if not path or any(not part or part.startswith("$") for part in path.split(".")):
        raise ValueError(f"{path!r} is not a field path such as 'customer.email'")


def check_mongodb_uri(value: str) -> str:
    if not value.startswith(("mongodb://", "mongodb+srv://")):
        raise ValueError("must start with mongodb:// or mongodb+srv://")
    return value


def _rate_text(value: str) -> str:
    parse_rate_limit(value)
    return value


def _duration_text(value: str) -> str:
    parse_duration(value)
    return value


# Kept as written in the file (status and logs show them so), checked when loaded.
RateText = Annotated[str, AfterValidator(_rate_text)]
DurationText = Annotated[str, AfterValidator(_duration_text)]


def exactly_one(first: tuple[str, object], second: tuple[str, object]) -> None:
    """Refuse a model that sets both, or neither, of two alternative keys."""
    if (first[1] is None) == (second[1] is None):
        raise ValueError(f"give exactly one of {first[0]} or {second[0]}")
