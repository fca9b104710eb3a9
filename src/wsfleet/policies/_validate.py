"""Checks shared by the policies, so every bad value is refused the same way.

Each helper takes the name of the field it checks and raises ``InvalidPolicy`` for it, so the
message always starts with the argument to fix. ``bool`` is refused wherever a number is
expected: ``True`` would otherwise pass silently as ``1``.
"""

from __future__ import annotations

import math
from datetime import timedelta
from enum import Enum
from typing import TypeVar

from wsfleet.errors import InvalidPolicy

__all__ = [
    "check_above",
    "check_at_least",
    "check_at_most",
    "to_count",
    "to_member",
    "to_number",
    "to_seconds",
]

E = TypeVar("E", bound=Enum)


def to_number(field: str, value: object, *, kind: str = "a number") -> float:
    """Return ``value`` as a finite float; NaN and infinities would poison every comparison."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidPolicy(field, f"must be {kind}, got {value!r}")
    try:
        result = float(value)
    except OverflowError:
        # Do not repr the int: past 4300 digits repr itself raises.
        raise InvalidPolicy(field, "must be finite, got an int too large for a float") from None
    if not math.isfinite(result):
        raise InvalidPolicy(field, f"must be finite, got {value!r}")
    return result


def to_seconds(field: str, value: object) -> float:
    """Return a duration as float seconds, so the rest of the code compares plain floats.

    Durations come from configuration as numbers and from code as ``timedelta``; both are
    welcome, and a ``timedelta`` is always finite.
    """
    if isinstance(value, timedelta):
        return value.total_seconds()
    return to_number(field, value, kind="a number of seconds or a timedelta")


def to_count(field: str, value: object, *, minimum: int) -> int:
    """Return ``value`` as an int of at least ``minimum``; a count of 2.5 is a mistake."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidPolicy(field, f"must be an int, got {value!r}")
    if value < minimum:
        raise InvalidPolicy(field, f"must be >= {minimum}, got {value}")
    return value


def to_member(field: str, value: object, kind: type[E]) -> E:
    """Return the member of ``kind`` that ``value`` is or names; configuration holds strings."""
    if isinstance(value, kind):
        return value
    for member in kind:
        if member.value == value:
            return member
    allowed = ", ".join(repr(member.value) for member in kind)
    raise InvalidPolicy(field, f"must be a {kind.__name__} or one of {allowed}, got {value!r}")


def check_at_least(field: str, value: float, minimum: float, *, bound: str | None = None) -> None:
    """Refuse ``value < minimum``; ``bound`` names the field the minimum comes from, if any."""
    if value < minimum:
        raise InvalidPolicy(field, f"must be >= {_describe(minimum, bound)}, got {value}")


def check_at_most(field: str, value: float, maximum: float, *, bound: str | None = None) -> None:
    """Refuse ``value > maximum``; ``bound`` names the field the maximum comes from, if any."""
    if value > maximum:
        raise InvalidPolicy(field, f"must be <= {_describe(maximum, bound)}, got {value}")


def check_above(field: str, value: float, minimum: float) -> None:
    """Refuse ``value <= minimum``, for quantities where zero would mean "never" by accident."""
    if value <= minimum:
        raise InvalidPolicy(field, f"must be > {minimum}, got {value}")


def _describe(limit: float, bound: str | None) -> str:
    return str(limit) if bound is None else f"{bound} ({limit})"
