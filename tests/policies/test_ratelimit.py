"""RateLimitPolicy: token buckets in messages and bytes, validated like every policy.

The policy is pure: these tests hand it buckets and instants and read what it answers.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

import wsfleet
from wsfleet import InvalidPolicy, RateLimitAction, RateLimitPolicy, RateLimitScope
from wsfleet.policies.ratelimit import Bucket


def take_all(policy: RateLimitPolicy, sizes: list[int], at: float = 0.0) -> list[bool]:
    bucket = policy.full(at)
    passed = []
    for size in sizes:
        ok, bucket = policy.take(bucket, at, size)
        passed.append(ok)
    return passed


def test_the_defaults_wait_per_connection_at_a_hundred_messages_a_second() -> None:
    policy = RateLimitPolicy()
    assert policy.action is RateLimitAction.WAIT
    assert policy.scope is RateLimitScope.CONNECTION
    assert (policy.messages_per_second, policy.burst_messages) == (100.0, 100.0)
    assert (policy.bytes_per_second, policy.burst_bytes) == (None, None)
    assert wsfleet.RateLimitPolicy is RateLimitPolicy


def test_a_full_bucket_lets_a_burst_through_then_refuses() -> None:
    policy = RateLimitPolicy(messages_per_second=10, burst_messages=3)
    assert take_all(policy, [0] * 5) == [True, True, True, False, False]


def test_the_bucket_refills_with_time_and_never_past_its_burst() -> None:
    policy = RateLimitPolicy(messages_per_second=10, burst_messages=3)
    empty = Bucket(0.0, math.inf, 0.0)
    ok, after = policy.take(empty, 0.05, 0)  # half a token
    assert not ok
    assert after.messages == pytest.approx(0.5)
    ok, after = policy.take(after, 0.1, 0)  # one whole token
    assert ok
    assert after.messages == pytest.approx(0.0)
    ok, after = policy.take(after, 100.0, 0)  # a long quiet spell: back to the burst, no more
    assert ok
    assert after.messages == pytest.approx(2.0)


def test_a_clock_that_steps_back_refills_nothing() -> None:
    policy = RateLimitPolicy(messages_per_second=10, burst_messages=1)
    ok, after = policy.take(Bucket(0.0, math.inf, 5.0), 4.0, 0)
    assert not ok
    assert after.messages == 0.0


def test_bytes_are_limited_by_their_own_bucket() -> None:
    policy = RateLimitPolicy(messages_per_second=None, bytes_per_second=100)
    assert policy.burst_bytes == 100.0
    assert policy.burst_messages is None
    assert take_all(policy, [60, 30, 20, 10]) == [True, True, False, True]


def test_a_message_larger_than_the_byte_burst_can_never_pass() -> None:
    policy = RateLimitPolicy(bytes_per_second=100, burst_bytes=50, action="drop")
    bucket = policy.full(0.0)
    ok, bucket = policy.take(bucket, 1000.0, 51)
    assert not ok
    assert policy.refill_in(bucket, 51) == math.inf


def test_borrowing_delivers_the_message_and_says_how_long_the_debt_lasts() -> None:
    policy = RateLimitPolicy(messages_per_second=10, burst_messages=2)
    bucket = policy.full(0.0)
    delays = []
    for _ in range(4):
        delay, bucket = policy.borrow(bucket, 0.0, 0)
        delays.append(delay)
    # Two within the burst, then each one a tenth of a second further into debt.
    assert delays == [0.0, 0.0, pytest.approx(0.1), pytest.approx(0.2)]
    assert bucket.messages == pytest.approx(-2.0)
    # Once the sender waited its debt out, the next one is only one token late again.
    delay, bucket = policy.borrow(bucket, 0.2, 0)
    assert delay == pytest.approx(0.1)


def test_borrowing_bytes_waits_for_the_larger_of_the_two_debts() -> None:
    policy = RateLimitPolicy(messages_per_second=10, burst_messages=1, bytes_per_second=1000)
    bucket = policy.full(0.0)
    delay, bucket = policy.borrow(bucket, 0.0, 1000)  # exactly the burst: passes
    assert delay == 0.0
    delay, bucket = policy.borrow(bucket, 0.0, 500)  # 1 message and 500 bytes in debt
    assert delay == pytest.approx(0.5)  # bytes: 500 / 1000 per second, more than 0.1 s
    # Larger than the byte burst: under WAIT it is delivered after its own size's worth.
    delay, _ = policy.borrow(policy.full(0.0), 0.0, 3000)
    assert delay == pytest.approx(2.0)


def test_after_a_drop_the_sender_is_not_read_until_a_token_is_back() -> None:
    policy = RateLimitPolicy(messages_per_second=4, burst_messages=1, action="drop")
    bucket = policy.full(0.0)
    ok, bucket = policy.take(bucket, 0.0, 0)
    assert ok
    ok, bucket = policy.take(bucket, 0.125, 0)  # half a token by now
    assert not ok
    assert policy.refill_in(bucket) == pytest.approx(0.125)
    ok, _ = policy.take(bucket, 0.125 + policy.refill_in(bucket), 0)
    assert ok
    assert policy.refill_in(policy.full(0.0)) == 0.0  # a full bucket: no wait at all


def test_the_refill_time_is_the_slower_bucket_s() -> None:
    assert RateLimitPolicy(messages_per_second=10, burst_messages=20).refill_time == 2.0
    both = RateLimitPolicy(messages_per_second=10, bytes_per_second=100, burst_bytes=500)
    assert both.refill_time == 5.0
    only_bytes = RateLimitPolicy(messages_per_second=None, bytes_per_second=100, burst_bytes=300)
    assert only_bytes.refill_time == 3.0


def test_a_dimension_left_unlimited_never_refuses() -> None:
    policy = RateLimitPolicy(messages_per_second=10**6)  # bytes: unlimited
    assert take_all(policy, [10**9] * 1000) == [True] * 1000
    assert policy.borrow(policy.full(0.0), 0.0, 10**9)[0] == 0.0
    only_bytes = RateLimitPolicy(messages_per_second=None, bytes_per_second=10**12)
    assert take_all(only_bytes, [1] * 1000) == [True] * 1000


def test_a_limit_that_limits_nothing_is_refused() -> None:
    with pytest.raises(InvalidPolicy, match="give one"):
        RateLimitPolicy(messages_per_second=None, bytes_per_second=None)


def test_actions_and_scopes_are_taken_by_value_or_member() -> None:
    policy = RateLimitPolicy(action="close", scope="identifier")
    assert policy.action is RateLimitAction.CLOSE
    assert policy.scope is RateLimitScope.IDENTIFIER
    assert RateLimitPolicy(action=RateLimitAction.DROP).action is RateLimitAction.DROP


@pytest.mark.parametrize(
    "kwargs",
    [
        {"messages_per_second": 0},
        {"messages_per_second": -1},
        {"messages_per_second": math.nan},
        {"burst_messages": 0},
        {"burst_messages": 0.5},  # less than one message: nothing could ever pass
        {"bytes_per_second": -5},
        {"burst_bytes": 0},
        {"action": "shout"},
        {"scope": "planet"},
    ],
)
def test_bad_values_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidPolicy):
        RateLimitPolicy(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"messages_per_second": "fast"}, {"burst_bytes": b"1"}, {"messages_per_second": True}],
)
def test_values_of_the_wrong_type_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises((InvalidPolicy, TypeError)):
        RateLimitPolicy(**kwargs)


def test_the_policy_is_frozen() -> None:
    policy = RateLimitPolicy()
    with pytest.raises(AttributeError):
        policy.messages_per_second = 5  # type: ignore[misc]
