"""Repeated rounds in one figure: their median and how far apart they lie."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Summary:
    """``spread``: (max - min) / median, the rounds' disagreement as a fraction."""

    median: float
    low: float
    high: float
    spread: float
    rounds: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def summarise(values: Iterable[float | None]) -> Summary | None:
    """The median and spread of the figures measured (None ones left out), or None."""
    kept = [v for v in values if v is not None]
    if not kept:
        return None
    median = statistics.median(kept)
    low, high = min(kept), max(kept)
    return Summary(median, low, high, (high - low) / median if median else 0.0, len(kept))


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or b is 0."""
    return a / b if a is not None and b else None
