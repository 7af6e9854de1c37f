"""Human durations such as `30d` or `12h`, used by `purge_deleted_after`."""

from __future__ import annotations

import re
from datetime import timedelta

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(value: str) -> timedelta:
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", value)
    if not match:
        raise ValueError(f"{value!r} is not a duration such as '30d', '12h' or '90m'")
    amount, unit = match.groups()
    if int(amount) == 0:
        raise ValueError(f"{value!r} must be longer than zero")
    return timedelta(seconds=int(amount) * UNITS[unit])
