"""The retry policy's contract: bounded, capped, reproducible delays, and honest validation."""

from __future__ import annotations

import dataclasses
import math
import random
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsfleet.errors import InvalidPolicy, RetriesExhausted
from wsfleet.policies import DEFAULT_RETRY_POLICY, JitterMode, RetryPolicy

# The policy and these tests compute the same bounds in different orders; allow for rounding.
REL = 1e-9


def scheduled(policy: RetryPolicy, attempt: int) -> float:
    """The un-jittered delay, straight from the documented formula."""
    return min(policy.max_delay, policy.base_delay * policy.backoff_multiplier ** (attempt - 1))


def at_most(value: float, bound: float) -> bool:
    return value <= bound * (1 + REL)


def at_least(value: float, bound: float) -> bool:
    return value >= bound * (1 - REL)


class FixedRandom(random.Random):
    """A generator whose every draw is the same fraction of the range."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction

    def random(self) -> float:
        return self.fraction


@st.composite
def policies(
    draw: st.DrawFn, mode: JitterMode | None = None, spread: bool = False
) -> tuple[RetryPolicy, int]:
    """A valid policy with realistic magnitudes, and an attempt it allows."""
    base = draw(st.floats(0, 100))
    policy = RetryPolicy(
        max_attempts=draw(st.integers(1, 60)),
        base_delay=base,
        max_delay=base + draw(st.floats(0, 1000)),
        backoff_multiplier=draw(st.floats(1, 10)),
        jitter=draw(st.floats(0, 1)),
        jitter_mode=mode if mode is not None else draw(st.sampled_from(JitterMode)),
        first_delay_spread=draw(st.floats(0, 100)) if spread else 0.0,
        seed=draw(st.integers(0, 2**64)),
    )
    return policy, draw(st.integers(1, policy.max_attempts))


# --- jitter bounds and caps -------------------------------------------------------------------


@given(policies(JitterMode.PROPORTIONAL))
def test_proportional_jitter_stays_within_its_fraction_of_the_capped_delay(
    case: tuple[RetryPolicy, int],
) -> None:
    policy, attempt = case
    capped = scheduled(policy, attempt)
    result = policy.delay(attempt)
    assert at_least(result, capped * (1 - policy.jitter))
    assert at_most(result, min(policy.max_delay, capped * (1 + policy.jitter)))
    assert result <= policy.max_delay


@given(policies(JitterMode.FULL))
def test_full_jitter_stays_between_zero_and_the_capped_delay(
    case: tuple[RetryPolicy, int],
) -> None:
    policy, attempt = case
    result = policy.delay(attempt)
    assert 0.0 <= result <= policy.max_delay
    assert at_most(result, scheduled(policy, attempt))


@given(policies(JitterMode.EQUAL))
def test_equal_jitter_stays_between_half_and_all_of_the_capped_delay(
    case: tuple[RetryPolicy, int],
) -> None:
    policy, attempt = case
    capped = scheduled(policy, attempt)
    result = policy.delay(attempt)
    assert at_least(result, capped / 2)
    assert at_most(result, capped)
    assert result <= policy.max_delay


@given(policies(JitterMode.DECORRELATED))
def test_decorrelated_jitter_stays_between_base_and_three_times_the_previous_delay(
    case: tuple[RetryPolicy, int],
) -> None:
    policy, _ = case
    previous = policy.base_delay
    for result in policy.delays():
        assert policy.base_delay <= result <= policy.max_delay
        assert at_most(result, max(policy.base_delay, 3 * previous))
        previous = result


@given(policies(JitterMode.DECORRELATED), st.floats(0, 1e6))
def test_decorrelated_jitter_accepts_any_previous_delay_and_still_caps(
    case: tuple[RetryPolicy, int], previous: float
) -> None:
    policy, attempt = case
    result = policy.delay(attempt, previous)
    assert policy.base_delay <= result <= policy.max_delay
    assert at_most(result, max(policy.base_delay, 3 * previous))


@given(policies(spread=True))
def test_no_delay_exceeds_max_delay_whatever_the_mode_and_spread(
    case: tuple[RetryPolicy, int],
) -> None:
    policy, _ = case
    assert all(0.0 <= delay <= policy.max_delay for delay in policy.delays())


@given(policies(spread=True))
def test_max_total_delay_bounds_every_schedule(case: tuple[RetryPolicy, int]) -> None:
    policy, _ = case
    assert at_most(sum(policy.delays()), policy.max_total_delay())


def test_zero_jitter_gives_exactly_the_exponential_schedule_up_to_the_cap() -> None:
    policy = RetryPolicy(max_attempts=7, jitter=0)
    assert list(policy.delays()) == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


@pytest.mark.parametrize(
    ("mode", "fraction", "expected"),
    [
        (JitterMode.PROPORTIONAL, 0.0, 4.0 * 0.9),
        (JitterMode.PROPORTIONAL, 0.5, 4.0),
        (JitterMode.FULL, 0.25, 1.0),
        (JitterMode.EQUAL, 0.5, 3.0),
        (JitterMode.DECORRELATED, 0.5, 1.0 + (6.0 - 1.0) * 0.5),
    ],
)
def test_each_mode_draws_from_its_documented_range(
    mode: JitterMode, fraction: float, expected: float
) -> None:
    # Attempt 3: the schedule says 4 s; decorrelated is fed a previous delay of 2 s.
    policy = RetryPolicy(jitter_mode=mode, rng=FixedRandom(fraction))
    assert policy.delay(3, previous=2.0) == pytest.approx(expected)


def test_decorrelated_starts_from_base_delay_when_there_is_no_previous_delay() -> None:
    policy = RetryPolicy(jitter_mode="decorrelated", base_delay=2.0, rng=FixedRandom(0.5))
    assert policy.delay(1) == pytest.approx(2.0 + (6.0 - 2.0) * 0.5)


def test_draws_near_the_float_limit_stay_finite() -> None:
    huge = 1e308
    proportional = RetryPolicy(base_delay=huge, max_delay=huge, jitter=1.0, seed=1)
    decorrelated = RetryPolicy(base_delay=1.0, max_delay=huge, jitter_mode="decorrelated", seed=1)
    assert proportional.delay(1) <= huge
    assert decorrelated.delay(2, previous=huge) <= huge


# --- first delay spread -----------------------------------------------------------------------


def test_first_delay_spread_adds_a_random_extra_to_the_first_delay_only() -> None:
    policy = RetryPolicy(jitter=0, first_delay_spread=5.0, rng=FixedRandom(0.5))
    assert list(policy.delays()) == [1.0 + 2.5, 2.0, 4.0, 8.0, 16.0]


def test_first_delay_spread_is_capped_at_max_delay() -> None:
    policy = RetryPolicy(jitter=0, max_delay=2.0, first_delay_spread=5.0, rng=FixedRandom(0.9))
    assert policy.delay(1) == 2.0


@given(st.integers(0, 2**32), st.floats(0, 100))
def test_first_delay_spread_stays_within_its_range(seed: int, spread: float) -> None:
    policy = RetryPolicy(jitter=0, first_delay_spread=spread, max_delay=1000.0, seed=seed)
    assert 1.0 <= policy.delay(1) <= 1.0 + spread


# --- randomness is an input -------------------------------------------------------------------


@given(st.integers(), st.sampled_from(JitterMode))
def test_the_same_seed_gives_the_same_schedule(seed: int, mode: JitterMode) -> None:
    first = RetryPolicy(max_attempts=20, jitter_mode=mode, seed=seed)
    second = RetryPolicy(max_attempts=20, jitter_mode=mode, seed=seed)
    assert list(first.delays()) == list(second.delays())


def test_different_seeds_give_different_schedules() -> None:
    first = RetryPolicy(max_attempts=20, jitter_mode="full", seed=1)
    second = RetryPolicy(max_attempts=20, jitter_mode="full", seed=2)
    assert list(first.delays()) != list(second.delays())


def test_an_injected_rng_is_used_and_wins_over_the_seed() -> None:
    seeded = RetryPolicy(max_attempts=20, jitter_mode="full", seed=7)
    injected = RetryPolicy(max_attempts=20, jitter_mode="full", seed=1, rng=random.Random(7))
    assert list(injected.delays()) == list(seeded.delays())


def test_a_policy_keeps_one_generator_so_successive_schedules_continue_its_stream() -> None:
    policy = RetryPolicy(max_attempts=3, jitter_mode="full", seed=3)
    twice = list(policy.delays()) + list(policy.delays())
    longer = RetryPolicy(max_attempts=6, jitter_mode="full", seed=3)
    assert twice[:3] == list(longer.delays())[:3]
    assert twice[3:] != twice[:3]


def test_an_unseeded_policy_still_has_a_generator() -> None:
    delay = RetryPolicy(jitter_mode="full").delay(1)
    assert 0.0 <= delay <= 1.0


# --- attempts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("max_attempts", [0, 1, 5, 12])
def test_delays_yields_exactly_max_attempts_values(max_attempts: int) -> None:
    assert len(list(RetryPolicy(max_attempts=max_attempts).delays())) == max_attempts


@pytest.mark.parametrize("max_attempts", [0, 1, 5])
def test_a_delay_past_the_last_attempt_raises_retries_exhausted(max_attempts: int) -> None:
    policy = RetryPolicy(max_attempts=max_attempts)
    with pytest.raises(RetriesExhausted) as caught:
        policy.delay(max_attempts + 1)
    assert caught.value.attempts == max_attempts


@pytest.mark.parametrize("attempt", [0, -1])
def test_attempts_count_from_one(attempt: int) -> None:
    with pytest.raises(ValueError, match="attempt must be >= 1") as caught:
        DEFAULT_RETRY_POLICY.delay(attempt)
    assert not isinstance(caught.value, InvalidPolicy)


@pytest.mark.parametrize("previous", [-1.0, math.nan, math.inf])
def test_a_previous_delay_must_be_a_finite_non_negative_number(previous: float) -> None:
    with pytest.raises(ValueError, match="previous must be"):
        DEFAULT_RETRY_POLICY.delay(2, previous)


@pytest.mark.parametrize(
    ("policy", "attempt", "expected"),
    [
        (RetryPolicy(max_attempts=10**30, jitter=0), 10**30, 30.0),
        (RetryPolicy(max_attempts=10**30, jitter=0, base_delay=0, max_delay=0), 10**30, 0.0),
        (RetryPolicy(max_attempts=10**30, jitter=0, backoff_multiplier=1), 10**30, 1.0),
        # The power overflows before the product reaches the cap.
        (
            RetryPolicy(max_attempts=3, jitter=0, backoff_multiplier=1e300, max_delay=1e300),
            3,
            1e300,
        ),
        # The power overflows although the product, from a subnormal base, stays small.
        (
            RetryPolicy(max_attempts=1100, jitter=0, base_delay=5e-324, max_delay=1e308),
            1100,
            2.0**25,
        ),
    ],
)
def test_huge_attempt_numbers_and_extreme_parameters_do_not_overflow(
    policy: RetryPolicy, attempt: int, expected: float
) -> None:
    assert policy.delay(attempt) == pytest.approx(expected, rel=REL)


@given(st.integers(1, 10**100), st.floats(1, 1e6), st.sampled_from(JitterMode))
def test_any_attempt_number_yields_a_finite_capped_delay(
    attempt: int, multiplier: float, mode: JitterMode
) -> None:
    policy = RetryPolicy(
        max_attempts=10**100, backoff_multiplier=multiplier, jitter_mode=mode, seed=0
    )
    assert 0.0 <= policy.delay(attempt) <= policy.max_delay


# --- budget and reset -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "attempts_made", "elapsed", "expected"),
    [
        (RetryPolicy(max_attempts=3), 0, None, True),
        (RetryPolicy(max_attempts=3), 2, None, True),
        (RetryPolicy(max_attempts=3), 3, None, False),
        (RetryPolicy(max_attempts=0), 0, None, False),
        (RetryPolicy(max_attempts=3), 1, 1e9, True),
        (RetryPolicy(max_attempts=3, max_elapsed=60), 1, None, True),
        (RetryPolicy(max_attempts=3, max_elapsed=60), 1, 59.9, True),
        (RetryPolicy(max_attempts=3, max_elapsed=60), 1, 60.0, False),
        (RetryPolicy(max_attempts=3, max_elapsed=60), 3, 0.0, False),
    ],
)
def test_can_retry_while_attempts_and_budget_remain(
    policy: RetryPolicy, attempts_made: int, elapsed: float | None, expected: bool
) -> None:
    assert policy.can_retry(attempts_made, elapsed) is expected


@pytest.mark.parametrize(
    ("reset_after", "uptime", "expected"),
    [(None, 0.0, True), (10.0, 9.9, False), (10.0, 10.0, True), (0.0, 0.0, True)],
)
def test_should_reset_only_after_the_connection_stayed_up_long_enough(
    reset_after: float | None, uptime: float, expected: bool
) -> None:
    assert RetryPolicy(reset_after=reset_after).should_reset(uptime) is expected


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (RetryPolicy(), 1.1 + 1 + 2.2 + 4.4 + 8.8 + 17.6),  # the default first spread: 1 s
        (RetryPolicy(first_delay_spread=0), 1.1 + 2.2 + 4.4 + 8.8 + 17.6),
        (RetryPolicy(max_attempts=7, jitter=0.5), 2.5 + 3 + 6 + 12 + 24 + 30 + 30),
        (RetryPolicy(jitter_mode="full"), 1.0 + 2 + 4 + 8 + 16),
        (RetryPolicy(jitter_mode="equal"), 1.0 + 2 + 4 + 8 + 16),
        (RetryPolicy(jitter_mode="decorrelated"), 3.0 + 9 + 27 + 30 + 30),
        (RetryPolicy(jitter=0, first_delay_spread=2), 3.0 + 2 + 4 + 8 + 16),
        (RetryPolicy(jitter_mode="decorrelated", first_delay_spread=2), 5.0 + 15 + 30 + 30 + 30),
        (RetryPolicy(jitter=0, max_elapsed=20), 20.0),
        (RetryPolicy(jitter=0, max_elapsed=100), 31.0),
        (RetryPolicy(max_attempts=0), 0.0),
        (RetryPolicy(max_attempts=1, first_delay_spread=100), 30.0),
        (RetryPolicy(max_attempts=4, base_delay=0, jitter_mode="full", first_delay_spread=5), 5.0),
        # Constant or capped schedules are summed without walking every attempt.
        (RetryPolicy(max_attempts=10**6, jitter=0, backoff_multiplier=1), 1e6),
        (RetryPolicy(max_attempts=10**400, jitter=0), math.inf),
        (RetryPolicy(max_attempts=10**400, jitter=0, max_elapsed=3600), 3600.0),
    ],
)
def test_max_total_delay_sums_the_largest_possible_delay_of_every_attempt(
    policy: RetryPolicy, expected: float
) -> None:
    assert policy.max_total_delay() == pytest.approx(expected, rel=REL)


# --- construction -----------------------------------------------------------------------------


def test_durations_accept_timedelta_and_are_stored_as_float_seconds() -> None:
    policy = RetryPolicy(
        base_delay=timedelta(milliseconds=500),
        max_delay=timedelta(minutes=1),
        first_delay_spread=timedelta(seconds=2),
        max_elapsed=timedelta(minutes=5),
        reset_after=timedelta(seconds=10),
    )
    expected = RetryPolicy(
        base_delay=0.5, max_delay=60, first_delay_spread=2, max_elapsed=300, reset_after=10
    )
    assert policy == expected
    for name in ("base_delay", "max_delay", "first_delay_spread", "max_elapsed", "reset_after"):
        assert type(getattr(policy, name)) is float
        assert type(getattr(expected, name)) is float


def test_jitter_mode_accepts_its_value_and_is_stored_as_the_enum() -> None:
    assert RetryPolicy(jitter_mode="equal").jitter_mode is JitterMode.EQUAL


def test_the_default_policy_is_the_documented_one() -> None:
    documented = RetryPolicy(
        max_attempts=5,
        base_delay=1.0,
        max_delay=30.0,
        backoff_multiplier=2.0,
        jitter=0.1,
        jitter_mode=JitterMode.PROPORTIONAL,
        first_delay_spread=1.0,  # None: base_delay, as PROPORTIONAL jitter is on
        max_elapsed=None,
        reset_after=None,
        seed=None,
    )
    assert documented == DEFAULT_RETRY_POLICY
    assert RetryPolicy(first_delay_spread=None) == DEFAULT_RETRY_POLICY


@pytest.mark.parametrize(
    ("settings", "spread"),
    [
        ({}, 1.0),
        ({"base_delay": 0.25}, 0.25),
        ({"jitter": 0}, 0.0),  # a deterministic schedule, asked for
        ({"jitter_mode": "full"}, 0.0),  # modes that spread by themselves
        ({"jitter_mode": "equal"}, 0.0),
        ({"jitter_mode": "decorrelated"}, 0.0),
        ({"first_delay_spread": 0}, 0.0),
        ({"first_delay_spread": timedelta(seconds=3)}, 3.0),
    ],
)
def test_the_first_delay_is_spread_over_one_base_delay_unless_said_otherwise(
    settings: dict[str, Any], spread: float
) -> None:
    policy = RetryPolicy(**settings)
    assert policy.first_delay_spread == spread
    firsts = [RetryPolicy(**settings, seed=seed).delay(1) for seed in range(400)]
    low, high = policy.base_delay * (1 - policy.jitter), policy.base_delay * (1 + policy.jitter)
    if spread and policy.jitter_mode is JitterMode.PROPORTIONAL:
        assert all(low <= d <= high + spread for d in firsts)
        assert max(firsts) > high + spread / 2  # the spread is used, not just allowed


BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"max_attempts": -1}, "max_attempts"),
    ({"max_attempts": 1.5}, "max_attempts"),
    ({"max_attempts": True}, "max_attempts"),
    ({"max_attempts": "3"}, "max_attempts"),
    ({"base_delay": -0.1}, "base_delay"),
    ({"base_delay": math.nan}, "base_delay"),
    ({"base_delay": math.inf}, "base_delay"),
    ({"base_delay": True}, "base_delay"),
    ({"base_delay": "1"}, "base_delay"),
    ({"base_delay": 10**400}, "base_delay"),
    ({"base_delay": timedelta(seconds=-1)}, "base_delay"),
    ({"max_delay": 0.5}, "max_delay"),
    ({"max_delay": math.inf}, "max_delay"),
    ({"max_delay": None}, "max_delay"),
    ({"backoff_multiplier": 0.5}, "backoff_multiplier"),
    ({"backoff_multiplier": math.nan}, "backoff_multiplier"),
    ({"backoff_multiplier": False}, "backoff_multiplier"),
    ({"backoff_multiplier": timedelta(seconds=2)}, "backoff_multiplier"),
    ({"jitter": -0.1}, "jitter"),
    ({"jitter": 1.5}, "jitter"),
    ({"jitter": math.nan}, "jitter"),
    ({"jitter_mode": "bogus"}, "jitter_mode"),
    ({"jitter_mode": 3}, "jitter_mode"),
    ({"first_delay_spread": -1}, "first_delay_spread"),
    ({"first_delay_spread": "1"}, "first_delay_spread"),
    ({"max_elapsed": 0}, "max_elapsed"),
    ({"max_elapsed": -1}, "max_elapsed"),
    ({"max_elapsed": math.nan}, "max_elapsed"),
    ({"reset_after": -1}, "reset_after"),
    ({"reset_after": math.inf}, "reset_after"),
    ({"seed": 1.5}, "seed"),
    ({"seed": True}, "seed"),
    ({"seed": "abc"}, "seed"),
    ({"rng": 42}, "rng"),
    ({"rng": object()}, "rng"),
]


@pytest.mark.parametrize(("kwargs", "field"), BAD_VALUES)
def test_every_validation_error_names_its_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidPolicy) as caught:
        RetryPolicy(**kwargs)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert isinstance(caught.value, ValueError)


def test_max_delay_error_says_which_bound_it_broke() -> None:
    with pytest.raises(
        InvalidPolicy, match=r"^max_delay: must be >= base_delay \(1\.0\), got 0\.5$"
    ):
        RetryPolicy(max_delay=0.5)


def test_replace_validates_the_new_policy() -> None:
    assert dataclasses.replace(DEFAULT_RETRY_POLICY, max_attempts=2).max_attempts == 2
    with pytest.raises(InvalidPolicy, match=r"^max_delay: "):
        dataclasses.replace(DEFAULT_RETRY_POLICY, max_delay=0.1)


def test_policies_are_frozen() -> None:
    policy = RetryPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 3  # type: ignore[misc]


def test_policies_are_equal_and_hash_by_value_whatever_their_generator() -> None:
    first = RetryPolicy(seed=1, rng=random.Random(1), max_delay=30)
    second = RetryPolicy(seed=1, rng=random.Random(2), max_delay=30.0)
    assert first == second
    assert hash(first) == hash(second)
    assert len({first, second, RetryPolicy(seed=2)}) == 2
    assert "rng" not in repr(first)
