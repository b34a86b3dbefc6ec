"""Validation of options, shared by task options, the Worker and the CLI.

Each option is checked once, where it enters sitq, for type and range: a NaN
lease or an infinite delay would otherwise be stored and silently never fire,
and an int too large for the database would fail later with a raw error.
"""

from __future__ import annotations

import math
from typing import Any

from sitq.errors import ConfigurationError

#: The range of the integer columns (PostgreSQL ``integer``), so both backends agree.
INT_MIN = -(2**31)
INT_MAX = 2**31 - 1


def seconds(name: str, value: Any, *, positive: bool = False, hint: str = "") -> float:
    """``value`` as float seconds: a finite real number, >= 0 (> 0 if ``positive``).

    ``hint`` is appended to the message (say what to pass instead).
    """
    bound = "> 0" if positive else ">= 0"
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or (positive and value == 0)
    ):
        raise ConfigurationError(
            f"{name} must be {bound} seconds (a finite number), got {value!r}{hint}"
        )
    return float(value)


def integer(
    name: str, value: Any, *, minimum: int = INT_MIN, maximum: int = INT_MAX, hint: str = ""
) -> int:
    """``value`` as an int from ``minimum`` to ``maximum`` (bool is not an int here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        bound = f">= {minimum}" if minimum > INT_MIN else f"from {minimum} to {maximum}"
        raise ConfigurationError(f"{name} must be an int {bound}, got {value!r}{hint}")
    if value > maximum:
        raise ConfigurationError(f"{name} must be at most {maximum}, got {value!r}{hint}")
    return value


def name(what: str, value: Any) -> str:
    """``value`` as a name stored in the database (a queue, a unique or limit key):
    a non-empty string without NUL, which PostgreSQL text cannot hold (SQLite would
    store it, and a later move to PostgreSQL would fail on it)."""
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{what} must be a non-empty string, got {value!r}")
    if "\x00" in value:
        raise ConfigurationError(
            f"{what} {value!r} contains a NUL character, which no database stores as "
            "text: remove it"
        )
    return value
