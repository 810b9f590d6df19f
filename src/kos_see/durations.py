"""Durations as people write them: ``300``, ``1.5s``, ``10m``, ``2h``, ``30d``."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``value``; a bare number is seconds. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{value!r} is negative; a duration must be >= 0")
        return float(value)
    match = _PATTERN.match(value)
    if not match:
        raise ValueError(
            f"{value!r} is not a duration; write a number with an optional unit "
            "(ms, s, m, h, d, w), for example '30d' or '90s'"
        )
    number, unit = match.groups()
    return float(number) * _UNITS[unit or "s"]
