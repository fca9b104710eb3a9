"""How long a client waits between reconnection attempts.

A fleet that loses its server loses it everywhere at once; if every client retried on the same
schedule, the server would come back to a wall of simultaneous handshakes. The policy therefore
grows the delay exponentially up to a cap and randomises it, in one of the four ways below.
``PROPORTIONAL`` keeps delays close to the exponential schedule (good for logs and for humans
reading them); ``FULL``, ``EQUAL`` and ``DECORRELATED`` are the three schemes compared in the AWS
Architecture Blog's "Exponential Backoff and Jitter", which spread a herd much better.

Randomness is an input: pass ``seed`` for a reproducible schedule or ``rng`` to share or mock a
generator. Nothing here sleeps; the manager does that through anyio.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from wsfleet.errors import InvalidPolicy, RetriesExhausted

from ._validate import (
    check_above,
    check_at_least,
    check_at_most,
    to_count,
    to_member,
    to_number,
    to_seconds,
)

__all__ = ["DEFAULT_RETRY_POLICY", "JitterMode", "RetryPolicy"]

# Tripling or jittering a delay near the float limit overflows to inf; draws are kept below this.
_LARGEST_FLOAT = math.nextafter(math.inf, 0.0)


class JitterMode(enum.Enum):
    """How a delay is randomised around (or below) the exponential schedule."""

    #: Within ``jitter`` (a fraction) either side of the schedule: predictable, mild spreading.
    PROPORTIONAL = "proportional"
    #: Anywhere between zero and the schedule: the least contention, the shortest average wait.
    FULL = "full"
    #: Between half the schedule and the schedule: never retries almost at once.
    EQUAL = "equal"
    #: Between ``base_delay`` and three times the previous delay: no attempt counter needed.
    DECORRELATED = "decorrelated"


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Delays between reconnection attempts for one outage, and when to give up.

    Attempts count from 1. Before attempt ``n`` the schedule is
    ``min(max_delay, base_delay * backoff_multiplier ** (n - 1))``, then randomised according
    to ``jitter_mode``; ``jitter`` (a fraction of the delay) matters to ``PROPORTIONAL`` only,
    the other modes being random across their whole range by definition.

    ``first_delay_spread`` adds up to that many seconds to the first delay only: clients that
    lost the server at the same instant would otherwise all retry within the first, narrow,
    jitter window (with the default ±10 %, half of a 10,000-client fleet in one 100 ms). Left
    out (``None``), it is ``base_delay`` under ``PROPORTIONAL`` jitter, so a fleet's first
    attempts spread evenly over one more base delay (the uniform rate), and ``0`` when
    ``jitter`` is 0 (a deterministic schedule, asked for) or the mode spreads by itself.
    ``max_elapsed`` bounds one outage in time as ``max_attempts`` bounds it in attempts.
    ``reset_after`` stops a server that accepts then drops connections from resetting
    the backoff on every brief success.

    Durations are seconds (``float``) or ``timedelta`` and are stored as float seconds; modes
    may be given by value (``"full"``). Equal policies compare equal whatever their ``rng``.
    """

    max_attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0
    backoff_multiplier: float = 2.0
    jitter: float = 0.1
    jitter_mode: JitterMode = JitterMode.PROPORTIONAL
    first_delay_spread: float | None = None  # normalised to seconds: base_delay when None
    max_elapsed: float | None = None
    reset_after: float | None = None
    seed: int | None = None
    rng: random.Random | None = field(default=None, compare=False, repr=False)
    _rng: random.Random = field(init=False, compare=False, repr=False)

    if TYPE_CHECKING:
        # What the constructor accepts before normalisation; the fields hold the normal forms.
        def __init__(
            self,
            *,
            max_attempts: int = 5,
            base_delay: float | timedelta = 1.0,
            max_delay: float | timedelta = 30.0,
            backoff_multiplier: float = 2.0,
            jitter: float = 0.1,
            jitter_mode: JitterMode | str = JitterMode.PROPORTIONAL,
            first_delay_spread: float | timedelta | None = None,
            max_elapsed: float | timedelta | None = None,
            reset_after: float | timedelta | None = None,
            seed: int | None = None,
            rng: random.Random | None = None,
        ) -> None: ...

    def __post_init__(self) -> None:
        to_count("max_attempts", self.max_attempts, minimum=0)

        base_delay = to_seconds("base_delay", self.base_delay)
        check_at_least("base_delay", base_delay, 0.0)
        max_delay = to_seconds("max_delay", self.max_delay)
        check_at_least("max_delay", max_delay, base_delay, bound="base_delay")
        multiplier = to_number("backoff_multiplier", self.backoff_multiplier)
        check_at_least("backoff_multiplier", multiplier, 1.0)
        jitter = to_number("jitter", self.jitter)
        check_at_least("jitter", jitter, 0.0)
        check_at_most("jitter", jitter, 1.0)
        mode = to_member("jitter_mode", self.jitter_mode, JitterMode)
        if self.first_delay_spread is None:
            spread = base_delay if mode is JitterMode.PROPORTIONAL and jitter > 0 else 0.0
        else:
            spread = to_seconds("first_delay_spread", self.first_delay_spread)
            check_at_least("first_delay_spread", spread, 0.0)

        max_elapsed = self.max_elapsed
        if max_elapsed is not None:
            max_elapsed = to_seconds("max_elapsed", max_elapsed)
            check_above("max_elapsed", max_elapsed, 0.0)
        reset_after = self.reset_after
        if reset_after is not None:
            reset_after = to_seconds("reset_after", reset_after)
            check_at_least("reset_after", reset_after, 0.0)

        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InvalidPolicy("seed", f"must be an int or None, got {seed!r}")
        rng = self.rng
        if rng is not None and not isinstance(rng, random.Random):
            raise InvalidPolicy("rng", f"must be a random.Random or None, got {rng!r}")

        for name, value in (
            ("base_delay", base_delay),
            ("max_delay", max_delay),
            ("backoff_multiplier", multiplier),
            ("jitter", jitter),
            ("jitter_mode", mode),
            ("first_delay_spread", spread),
            ("max_elapsed", max_elapsed),
            ("reset_after", reset_after),
            # One generator per policy, so a seeded policy yields one reproducible stream.
            ("_rng", random.Random(seed) if rng is None else rng),
        ):
            object.__setattr__(self, name, value)

    def delay(self, attempt: int, previous: float | None = None) -> float:
        """Seconds to wait before attempt ``attempt`` (1-based) of the current outage.

        ``previous`` is the delay this policy returned for the attempt before; only
        ``DECORRELATED`` uses it, and it defaults to ``base_delay``. Raises
        ``RetriesExhausted`` past ``max_attempts``, so a loop cannot retry forever by mistake.
        """
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1 (attempts count from 1), got {attempt}")
        if attempt > self.max_attempts:
            raise RetriesExhausted(self.max_attempts)
        if previous is not None and not (math.isfinite(previous) and previous >= 0):
            raise ValueError(f"previous must be a finite delay >= 0, got {previous}")

        rng = self._random()
        cap = self.max_delay
        result = min(cap, _between(rng, *self._draw_range(attempt, previous)))
        spread = self._spread()
        if attempt == 1 and spread > 0:
            result = min(cap, result + _between(rng, 0.0, spread))
        return result

    def delays(self) -> Iterator[float]:
        """The whole schedule of one outage: ``max_attempts`` delays, each fed the one before."""
        previous: float | None = None
        for attempt in range(1, self.max_attempts + 1):
            previous = self.delay(attempt, previous)
            yield previous

    def can_retry(self, attempts_made: int, elapsed: float | None = None) -> bool:
        """Whether another attempt is allowed after ``attempts_made`` failed ones.

        ``elapsed`` is the time since the outage began; without it only the count is checked.
        """
        if attempts_made >= self.max_attempts:
            return False
        return self.max_elapsed is None or elapsed is None or elapsed < self.max_elapsed

    def should_reset(self, uptime: float) -> bool:
        """Whether a connection up for ``uptime`` seconds has earned a fresh attempt counter."""
        return self.reset_after is None or uptime >= self.reset_after

    def max_total_delay(self) -> float:
        """The longest a client following this policy keeps retrying, in seconds.

        The sum over every attempt of the largest delay it can draw (jitter and the first
        spread included), capped by ``max_elapsed``. A server uses it as its resume window, so
        it errs long, never short. The cap assumes a client sleeps no longer than the budget it
        has left (``min(delay, max_elapsed - elapsed)``). Runs in time proportional to the
        attempts before the delay reaches ``max_delay``, not to ``max_attempts``.
        """
        if self.max_attempts == 0:
            return 0.0
        cap = self.max_delay
        decorrelated = self.jitter_mode is JitterMode.DECORRELATED
        # The bounds come from the very ranges delay() draws from, so rounding cannot make a
        # drawn delay exceed its bound.
        largest = min(cap, self._draw_range(1, None)[1])
        first = min(cap, largest + self._spread())
        if decorrelated:
            largest = first  # the spread feeds the chain: the next delay may triple it
        grows = decorrelated or self.backoff_multiplier > 1
        total = first
        done = 1
        while done < self.max_attempts and 0.0 < largest < cap and grows:
            done += 1
            largest = min(cap, self._draw_range(done, largest)[1])
            total += largest
        # The schedule stopped growing (cap reached, zero delays or no growth): the rest repeat.
        remaining = self.max_attempts - done
        if remaining and largest:
            total += largest * _as_float(remaining)
        return total if self.max_elapsed is None else min(total, self.max_elapsed)

    def _random(self) -> random.Random:
        return self._rng

    def _spread(self) -> float:
        spread = self.first_delay_spread
        assert spread is not None  # normalised by __post_init__
        return spread

    def _draw_range(self, attempt: int, previous: float | None) -> tuple[float, float]:
        """The interval the delay before ``attempt`` is drawn from, before the cap and spread."""
        match self.jitter_mode:
            case JitterMode.PROPORTIONAL:
                scheduled = self._scheduled(attempt)
                spread = scheduled * self.jitter
                return scheduled - spread, scheduled + spread
            case JitterMode.FULL:
                return 0.0, self._scheduled(attempt)
            case JitterMode.EQUAL:
                scheduled = self._scheduled(attempt)
                return scheduled / 2, scheduled
            case _:  # JitterMode.DECORRELATED
                last = self.base_delay if previous is None else previous
                return self.base_delay, max(self.base_delay, last * 3.0)

    def _scheduled(self, attempt: int) -> float:
        """``min(max_delay, base_delay * backoff_multiplier ** (attempt - 1))`` without overflow."""
        base, cap, ratio = self.base_delay, self.max_delay, self.backoff_multiplier
        exponent = attempt - 1
        if base == 0 or ratio == 1 or exponent == 0:
            return base
        # Attempts far past the cap never touch floats: a huge exponent would overflow.
        steps_to_cap = (math.log(cap) - math.log(base)) / math.log(ratio)
        if exponent > steps_to_cap + 1:
            return cap
        try:
            return min(cap, base * ratio**exponent)
        except OverflowError:
            # The power alone overflows although the product may not (a tiny base_delay, or a
            # huge multiplier); compare in logarithms instead.
            log_delay = math.log(base) + exponent * math.log(ratio)
            return cap if log_delay >= math.log(cap) else math.exp(log_delay)


def _between(rng: random.Random, low: float, high: float) -> float:
    """A uniform draw from ``[low, high]`` that rounding cannot push past either end."""
    high = min(high, _LARGEST_FLOAT)
    return min(high, low + (high - low) * rng.random())


def _as_float(count: int) -> float:
    try:
        return float(count)
    except OverflowError:  # max_attempts may be an int beyond any float
        return math.inf


#: The policy used when none is given: 5 attempts, 1 s doubling to at most 30 s, ±10 % jitter.
DEFAULT_RETRY_POLICY = RetryPolicy()
