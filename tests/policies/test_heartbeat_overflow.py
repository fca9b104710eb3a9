"""The keepalive and queue-overflow policies: validation, deadlines and decisions."""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from datetime import timedelta
from typing import Any

import pytest

import wsfleet.policies
from wsfleet.errors import InvalidPolicy
from wsfleet.policies import HeartbeatPolicy, OverflowAction, OverflowDecision, OverflowPolicy


def test_the_policies_package_exports_exactly_its_public_api() -> None:
    assert sorted(wsfleet.policies.__all__) == [
        "BackpressurePolicy",
        "DEFAULT_RETRY_POLICY",
        "HeartbeatPolicy",
        "HistoryPolicy",
        "JitterMode",
        "OverflowAction",
        "OverflowDecision",
        "OverflowPolicy",
        "Position",
        "RateLimitAction",
        "RateLimitPolicy",
        "RateLimitScope",
        "RetryPolicy",
    ]
    for name in wsfleet.policies.__all__:
        assert getattr(wsfleet.policies, name) is not None


# --- HeartbeatPolicy --------------------------------------------------------------------------


def test_heartbeat_defaults_follow_websockets() -> None:
    policy = HeartbeatPolicy()
    assert (policy.ping_interval, policy.ping_timeout, policy.idle_after) == (20.0, 20.0, 60.0)


def test_heartbeat_durations_accept_timedelta_and_are_stored_as_float_seconds() -> None:
    policy = HeartbeatPolicy(
        ping_interval=timedelta(seconds=10),
        ping_timeout=timedelta(seconds=5),
        idle_after=timedelta(minutes=2),
    )
    assert policy == HeartbeatPolicy(ping_interval=10, ping_timeout=5, idle_after=120)
    assert all(
        type(value) is float
        for value in (policy.ping_interval, policy.ping_timeout, policy.idle_after)
    )


def test_every_heartbeat_feature_can_be_switched_off() -> None:
    policy = HeartbeatPolicy(ping_interval=None, ping_timeout=None, idle_after=None)
    assert (policy.ping_interval, policy.ping_timeout, policy.idle_after) == (None, None, None)


HEARTBEAT_BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"ping_interval": 0}, "ping_interval"),
    ({"ping_interval": -1}, "ping_interval"),
    ({"ping_interval": math.nan}, "ping_interval"),
    ({"ping_interval": math.inf}, "ping_interval"),
    ({"ping_interval": True}, "ping_interval"),
    ({"ping_interval": "20"}, "ping_interval"),
    ({"ping_timeout": 0}, "ping_timeout"),
    ({"ping_timeout": timedelta(0)}, "ping_timeout"),
    ({"idle_after": 0}, "idle_after"),
    ({"idle_after": -5}, "idle_after"),
    ({"ping_interval": None}, "ping_timeout"),
]


@pytest.mark.parametrize(("kwargs", "field"), HEARTBEAT_BAD_VALUES)
def test_every_heartbeat_validation_error_names_its_field(
    kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidPolicy) as caught:
        HeartbeatPolicy(**kwargs)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("policy", "last_ping_sent", "now", "expected"),
    [
        (HeartbeatPolicy(), None, 100.0, 120.0),
        (HeartbeatPolicy(), 105.0, 110.0, 125.0),
        (HeartbeatPolicy(), 50.0, 100.0, 70.0),
        (HeartbeatPolicy(ping_interval=None, ping_timeout=None), 50.0, 100.0, None),
    ],
    ids=["first ping one interval from now", "one interval after the last", "overdue", "off"],
)
def test_next_ping_at(
    policy: HeartbeatPolicy, last_ping_sent: float | None, now: float, expected: float | None
) -> None:
    assert policy.next_ping_at(last_ping_sent, now) == expected


@pytest.mark.parametrize(
    ("policy", "expected"),
    [(HeartbeatPolicy(), 120.0), (HeartbeatPolicy(ping_timeout=None), None)],
)
def test_pong_deadline_is_one_timeout_after_the_ping(
    policy: HeartbeatPolicy, expected: float | None
) -> None:
    assert policy.pong_deadline(100.0) == expected


@pytest.mark.parametrize(
    ("policy", "expected"),
    [(HeartbeatPolicy(), 160.0), (HeartbeatPolicy(idle_after=None), None)],
)
def test_idle_deadline_is_idle_after_seconds_past_the_last_activity(
    policy: HeartbeatPolicy, expected: float | None
) -> None:
    assert policy.idle_deadline(100.0) == expected


@pytest.mark.parametrize(
    ("policy", "ping_sent_at", "last_pong", "now", "expected"),
    [
        (HeartbeatPolicy(), 100.0, None, 119.9, False),
        (HeartbeatPolicy(), 100.0, None, 120.0, True),
        (HeartbeatPolicy(), 100.0, 90.0, 130.0, True),
        (HeartbeatPolicy(), 100.0, 100.0, 130.0, False),
        (HeartbeatPolicy(), 100.0, 105.0, 130.0, False),
        (HeartbeatPolicy(), None, None, 1e9, False),
        (HeartbeatPolicy(ping_timeout=None), 100.0, None, 1e9, False),
    ],
    ids=[
        "outstanding, within timeout",
        "outstanding, timed out",
        "only an older pong, timed out",
        "pong at the ping instant",
        "answered",
        "no ping sent",
        "timeouts off",
    ],
)
def test_is_dead_only_when_a_ping_is_outstanding_past_its_timeout(
    policy: HeartbeatPolicy,
    ping_sent_at: float | None,
    last_pong: float | None,
    now: float,
    expected: bool,
) -> None:
    assert policy.is_dead(ping_sent_at, last_pong, now) is expected


def test_heartbeat_policies_are_frozen_and_hash_by_value() -> None:
    policy = HeartbeatPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.ping_interval = 1.0  # type: ignore[misc]
    assert hash(policy) == hash(HeartbeatPolicy(ping_interval=20, idle_after=60))


# --- OverflowPolicy ---------------------------------------------------------------------------


def test_overflow_defaults_disconnect_a_client_one_mebibyte_behind() -> None:
    policy = OverflowPolicy()
    assert policy.max_messages == 1024
    assert policy.max_bytes == policy.max_message_size == 1024 * 1024
    assert policy.action is OverflowAction.DISCONNECT


def test_overflow_action_accepts_its_value_and_is_stored_as_the_enum() -> None:
    assert OverflowPolicy(action="drop-oldest").action is OverflowAction.DROP_OLDEST


OVERFLOW_BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"max_messages": 0}, "max_messages"),
    ({"max_messages": 1.5}, "max_messages"),
    ({"max_messages": True}, "max_messages"),
    ({"max_bytes": 0}, "max_bytes"),
    ({"max_bytes": "1"}, "max_bytes"),
    ({"action": "bogus"}, "action"),
    ({"action": None}, "action"),
    ({"max_message_size": 0}, "max_message_size"),
    ({"max_message_size": 2 * 1024 * 1024}, "max_message_size"),
]


@pytest.mark.parametrize(("kwargs", "field"), OVERFLOW_BAD_VALUES)
def test_every_overflow_validation_error_names_its_field(
    kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidPolicy) as caught:
        OverflowPolicy(**kwargs)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_max_message_size_error_says_which_bound_it_broke() -> None:
    with pytest.raises(
        InvalidPolicy, match=r"^max_message_size: must be <= max_bytes \(100\), got 101$"
    ):
        OverflowPolicy(max_bytes=100, max_message_size=101)


@pytest.mark.parametrize(("size", "expected"), [(0, True), (100, True), (101, False)])
def test_fits_checks_the_largest_single_message(size: int, expected: bool) -> None:
    assert OverflowPolicy(max_bytes=100, max_message_size=100).fits(size) is expected


def small(action: OverflowAction) -> OverflowPolicy:
    return OverflowPolicy(max_messages=3, max_bytes=100, max_message_size=100, action=action)


ACTIONS = [
    (OverflowAction.DROP_OLDEST, OverflowDecision.DROP_OLDEST),
    (OverflowAction.DROP_NEWEST, OverflowDecision.DROP_NEWEST),
    (OverflowAction.DISCONNECT, OverflowDecision.DISCONNECT),
]


@pytest.mark.parametrize(("action", "_"), ACTIONS)
@pytest.mark.parametrize(
    ("queued_messages", "queued_bytes", "incoming_size"),
    [(0, 0, 10), (2, 90, 10), (0, 0, 100)],
    ids=["empty queue", "exactly full after", "one maximal message"],
)
def test_decide_accepts_while_both_bounds_hold(
    action: OverflowAction,
    _: OverflowDecision,
    queued_messages: int,
    queued_bytes: int,
    incoming_size: int,
) -> None:
    decision = small(action).decide(queued_messages, queued_bytes, incoming_size)
    assert decision is OverflowDecision.ACCEPT


@pytest.mark.parametrize(("action", "expected"), ACTIONS)
@pytest.mark.parametrize(
    ("queued_messages", "queued_bytes", "incoming_size"),
    [(3, 10, 10), (1, 95, 10)],
    ids=["too many messages", "too many bytes"],
)
def test_decide_applies_the_action_when_either_bound_breaks(
    action: OverflowAction,
    expected: OverflowDecision,
    queued_messages: int,
    queued_bytes: int,
    incoming_size: int,
) -> None:
    assert small(action).decide(queued_messages, queued_bytes, incoming_size) is expected


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (OverflowAction.DROP_OLDEST, OverflowDecision.DROP_NEWEST),
        (OverflowAction.DROP_NEWEST, OverflowDecision.DROP_NEWEST),
        (OverflowAction.DISCONNECT, OverflowDecision.DISCONNECT),
    ],
)
def test_a_message_larger_than_the_whole_queue_is_never_answered_with_drop_oldest(
    action: OverflowAction, expected: OverflowDecision
) -> None:
    assert small(action).decide(2, 50, 101) is expected


def test_dropping_oldest_one_at_a_time_ends_in_accept_within_bounds() -> None:
    policy = small(OverflowAction.DROP_OLDEST)
    queue = deque([30, 30, 30])
    incoming = 80
    while (decision := policy.decide(len(queue), sum(queue), incoming)) is not (
        OverflowDecision.ACCEPT
    ):
        assert decision is OverflowDecision.DROP_OLDEST
        queue.popleft()
    queue.append(incoming)
    assert list(queue) == [80]
    assert len(queue) <= policy.max_messages
    assert sum(queue) <= policy.max_bytes


def test_overflow_policies_are_frozen_and_hash_by_value() -> None:
    policy = OverflowPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_bytes = 1  # type: ignore[misc]
    assert hash(policy) == hash(OverflowPolicy(action="disconnect"))
