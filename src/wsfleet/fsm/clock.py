"""Time as an input.

The machine never reads the system clock itself: it asks a ``Clock``. The manager hands it
one that reads the event loop's clock (so trio's mock clock drives timers and backoff in
tests); the pure tests hand it a ``ManualClock``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["Clock", "ManualClock", "MonotonicClock"]


class Clock(Protocol):
    """Monotonic seconds for durations, and their translation to wall time for people."""

    def now(self) -> float:
        """Monotonic seconds; never goes backwards."""
        ...

    def to_datetime(self, t: float) -> datetime:
        """The aware UTC wall time that monotonic instant ``t`` corresponds to."""
        ...


class MonotonicClock:
    """Reads a monotonic source and maps it to wall time by the offset seen at creation.

    Mapping by a fixed offset keeps timestamps monotone even when the wall clock is
    stepped, which is what "time of the last change" readers want to sort by.
    """

    __slots__ = ("_offset", "_source")

    def __init__(self, source: Callable[[], float] = time.monotonic) -> None:
        self._source = source
        self._offset = time.time() - source()

    def now(self) -> float:
        return self._source()

    def to_datetime(self, t: float) -> datetime:
        return datetime.fromtimestamp(t + self._offset, UTC)


class ManualClock:
    """A clock that moves only when told to; for deterministic tests."""

    __slots__ = ("_epoch", "_t")

    def __init__(self, start: float = 0.0, epoch: float = 1_700_000_000.0) -> None:
        self._t = start
        self._epoch = epoch

    def now(self) -> float:
        return self._t

    def advance(self, seconds: float) -> None:
        """Move forward; a clock that went backwards would break monotone timestamps."""
        if seconds < 0:
            raise ValueError(f"seconds: a clock cannot go backwards, got {seconds}")
        self._t += seconds

    def to_datetime(self, t: float) -> datetime:
        return datetime.fromtimestamp(self._epoch + t, UTC)
