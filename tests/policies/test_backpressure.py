"""BackpressurePolicy: when the fleet, not one peer, is behind; validated like every policy."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from wsfleet import InvalidPolicy
from wsfleet.policies import BackpressurePolicy

MIB = 1024 * 1024


def behind(policy: BackpressurePolicy, messages: int, nbytes: int, connections: int) -> bool:
    return policy.behind(
        queued_messages=messages,
        queued_bytes=nbytes,
        connections=connections,
        queue_messages=1024,
        queue_bytes=MIB,
    )


def test_one_full_queue_among_many_is_a_slow_peer_not_a_server_behind() -> None:
    policy = BackpressurePolicy()
    assert not behind(policy, 1024, MIB, connections=1000)  # one peer at its bound
    assert not behind(policy, 1024 * 100, 100 * MIB // 2, connections=1000)  # a tenth half full


def test_every_queue_half_full_is_a_server_behind() -> None:
    policy = BackpressurePolicy()
    assert behind(policy, 513 * 1000, 1000, connections=1000)  # messages: over half the bounds
    assert behind(policy, 10, 1000 * MIB // 2 + 1, connections=1000 * 4)  # bytes, and memory
    assert not behind(policy, 512 * 1000, 1000, connections=1000)  # exactly half: not yet


def test_only_queues_that_evict_make_the_fill_count() -> None:
    """Under drop-oldest or drop-newest a full queue loses messages by choice, not clients."""
    policy = BackpressurePolicy()
    full = {"queued_messages": 1024 * 10, "queued_bytes": 10, "connections": 10}
    bounds = {"queue_messages": 1024, "queue_bytes": MIB}
    assert policy.behind(**full, **bounds, evicting=True)
    assert not policy.behind(**full, **bounds, evicting=False)
    memory = {"queued_messages": 1, "queued_bytes": 65 * MIB, "connections": 10_000}
    assert policy.behind(**memory, **bounds, evicting=False)  # the byte budget still holds


def test_the_fleet_wide_byte_budget_applies_however_many_connections() -> None:
    policy = BackpressurePolicy(max_queued_bytes=10 * MIB)
    assert behind(policy, 1, 10 * MIB + 1, connections=100_000)
    assert not behind(policy, 1, 10 * MIB, connections=100_000)


def test_durations_take_timedelta_and_are_stored_as_seconds() -> None:
    policy = BackpressurePolicy(
        max_wait=timedelta(seconds=3), stall_after=timedelta(milliseconds=5)
    )
    assert (policy.max_wait, policy.stall_after) == (3.0, 0.005)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_queued_bytes": 0}, "max_queued_bytes"),
        ({"max_queued_bytes": 1.5}, "max_queued_bytes"),
        ({"max_queued_bytes": True}, "max_queued_bytes"),
        ({"max_fill": 0}, "max_fill"),
        ({"max_fill": 1.5}, "max_fill"),
        ({"max_fill": float("nan")}, "max_fill"),
        ({"max_fill": "half"}, "max_fill"),
        ({"max_wait": 0}, "max_wait"),
        ({"max_wait": -1}, "max_wait"),
        ({"stall_after": 0}, "stall_after"),
        ({"stall_after": float("inf")}, "stall_after"),
    ],
)
def test_bad_values_are_refused_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidPolicy) as info:
        BackpressurePolicy(**kwargs)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
