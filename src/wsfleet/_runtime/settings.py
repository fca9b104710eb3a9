"""The manager's settings, checked before anything is built: a bad one raises, nothing starts.

Also the checks of arguments several of its calls share (``check_close``).
"""

from __future__ import annotations

import math

from ..closecodes import sendable
from ..errors import InvalidArgument, WrongType

__all__ = ["check_close", "check_instance", "check_seconds", "check_size"]


def check_instance(name: str, value: object, kind: type, *, optional: bool = True) -> None:
    """``value`` is a ``kind`` (or ``None`` when ``optional``); else ``WrongType``."""
    if value is None and optional:
        return
    if not isinstance(value, kind):
        allowed = f"a {kind.__name__}" + (" or None" if optional else "")
        raise WrongType(f"{name} must be {allowed}, got {value!r}")


def check_seconds(name: str, value: object) -> float:
    """A finite number of seconds above zero, as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{name} must be a number of seconds > 0, got {value!r}")
    if not 0 < value < math.inf:  # NaN fails this too
        raise InvalidArgument(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def check_size(name: str, value: object) -> int | None:
    """A count of bytes above zero, or ``None``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise WrongType(f"{name} must be an int (bytes) or None, got {value!r}")
    if value < 1:
        raise InvalidArgument(f"{name} must be > 0, got {value!r}")
    return value


def check_close(code: object, reason: object) -> None:
    """What ``close`` and ``disconnect_identifier`` accept: what a close frame can carry."""
    if isinstance(code, bool) or not isinstance(code, int):
        raise WrongType(f"code must be an int, got {type(code).__name__}")
    if not isinstance(reason, str):
        raise WrongType(f"reason must be a str, got {type(reason).__name__}")
    refusal = sendable(code, reason)
    if refusal is not None:
        raise InvalidArgument(refusal)
