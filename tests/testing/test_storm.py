"""``wsfleet.testing.reconnect_storm``: a fleet's retries after an outage, on a virtual clock."""

from __future__ import annotations

import math
import random

import pytest

from wsfleet import RetryPolicy
from wsfleet.testing import reconnect_storm

EXACT = RetryPolicy(jitter=0)  # delays 1, 2, 4, 8, 16 s: no randomness


def test_without_jitter_every_client_retries_on_the_schedule_until_the_server_is_back() -> None:
    storm = reconnect_storm([EXACT] * 3, outage=2.5)
    assert storm.attempts == [1.0] * 3 + [3.0] * 3  # 1 s (refused), then 1 + 2 s (accepted)
    assert (storm.reconnected, storm.gave_up) == (3, 0)
    assert storm.buckets() == {10: 3, 30: 3}
    assert storm.peak == 3
    assert storm.uniform_rate(EXACT.base_delay) == pytest.approx(0.3)  # 3 per 1 s, per 100 ms


def test_clients_out_of_attempts_give_up_and_are_counted() -> None:
    storm = reconnect_storm([RetryPolicy(max_attempts=2, jitter=0)] * 4, outage=60)
    assert storm.attempts == [1.0] * 4 + [3.0] * 4
    assert (storm.reconnected, storm.gave_up) == (0, 4)


def test_a_time_budget_ends_the_outage_for_a_client_too() -> None:
    policy = RetryPolicy(max_attempts=100, jitter=0, max_elapsed=5)
    storm = reconnect_storm([policy], outage=60)
    assert storm.attempts == [1.0, 3.0]  # the next would be at 7 s, past the 5 s budget
    assert (storm.reconnected, storm.gave_up) == (0, 1)


def test_buckets_of_another_width_and_an_empty_fleet() -> None:
    storm = reconnect_storm([EXACT], outage=0.5, bucket=0.25)
    assert storm.buckets() == {4: 1}
    empty = reconnect_storm([], outage=1)
    assert (empty.peak, empty.attempts, empty.reconnected) == (0, [], 0)
    assert math.isinf(empty.uniform_rate(0.0))


def test_seeded_clients_give_the_same_storm_twice() -> None:
    def fleet() -> list[RetryPolicy]:
        return [RetryPolicy(rng=random.Random(i)) for i in range(200)]

    first, second = reconnect_storm(fleet(), outage=5), reconnect_storm(fleet(), outage=5)
    assert first == second
    assert first.reconnected == 200
