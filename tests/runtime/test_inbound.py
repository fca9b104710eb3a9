"""The inbound gate alone: every received message counted, held to the rate limit.

Built with a context whose clock the test moves and a recorder for what the gate reports
(``rate_limited``); no manager, no sockets. What the gate answers is (deliver?, pause): the
session waits ``pause`` seconds without reading that sender, then delivers or reads on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from wsfleet import ConnectionState, RateLimitPolicy
from wsfleet._runtime.connection import Connection
from wsfleet._runtime.context import Context
from wsfleet._runtime.inbound import PASS, Inbound
from wsfleet.testing import MemoryTransport


class StepClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def to_datetime(self, t: float) -> datetime:  # pragma: no cover - not asked here
        return datetime.fromtimestamp(t, UTC)


class Reports:
    def __init__(self) -> None:
        self.limited: list[str] = []

    def rate_limited(self, conn: Connection) -> None:
        self.limited.append(conn.identifier)


def gate(policy: RateLimitPolicy | None) -> tuple[Inbound, StepClock, Reports]:
    context = Context()
    clock = StepClock()
    context.clock = clock
    reports = Reports()
    return Inbound(context, policy, reports), clock, reports


def connection(name: str) -> Connection:
    conn = Connection(object(), MemoryTransport(name), MemoryTransport(name), name, 0.0)
    conn.state = ConnectionState.CONNECTED
    return conn


def test_without_a_policy_every_message_passes_and_is_counted() -> None:
    inbound, _, _ = gate(None)
    alice = connection("alice")
    assert [inbound.admit(alice, "m") for _ in range(1000)] == [PASS] * 1000
    assert inbound.received_messages == 1000
    assert not inbound.drops
    assert inbound.waits == 0


def test_wait_delivers_everything_and_paces_the_sender() -> None:
    inbound, _, reports = gate(RateLimitPolicy(messages_per_second=10, burst_messages=2))
    alice = connection("alice")
    answers = [inbound.admit(alice, "m") for _ in range(4)]
    assert answers == [PASS, PASS, (True, pytest.approx(0.1)), (True, pytest.approx(0.2))]
    assert inbound.waits == 2
    assert not inbound.drops
    assert reports.limited == []


def test_drop_counts_the_message_and_pauses_until_a_token_is_back() -> None:
    inbound, clock, reports = gate(
        RateLimitPolicy(messages_per_second=10, burst_messages=1, action="drop")
    )
    alice = connection("alice")
    assert inbound.admit(alice, "m") == PASS
    assert inbound.admit(alice, "m") == (False, pytest.approx(0.1))
    clock.t = 0.1
    assert inbound.admit(alice, "m") == PASS  # the pause was enough
    assert inbound.drops == {"rate limit": 1}
    assert inbound.received_messages == 3
    assert reports.limited == []


def test_drop_does_not_pause_for_a_message_that_could_never_pass() -> None:
    inbound, _, _ = gate(RateLimitPolicy(bytes_per_second=100, burst_bytes=10, action="drop"))
    assert inbound.admit(connection("alice"), "x" * 11) == (False, 0.0)
    assert inbound.drops == {"rate limit": 1}


def test_close_reports_the_sender_and_drops_the_message() -> None:
    inbound, _, reports = gate(
        RateLimitPolicy(messages_per_second=10, burst_messages=1, action="close")
    )
    mallory = connection("mallory")
    assert inbound.admit(mallory, "m") == PASS
    assert inbound.admit(mallory, "m") == (False, 0.0)
    assert reports.limited == ["mallory"]
    assert inbound.drops == {"rate limit": 1}


def test_each_connection_has_its_own_budget_by_default() -> None:
    inbound, _, _ = gate(RateLimitPolicy(messages_per_second=1, burst_messages=1, action="drop"))
    tabs = [connection("alice") for _ in range(3)]
    assert [inbound.admit(tab, "m")[0] for tab in tabs] == [True, True, True]


def test_an_identifier_scope_shares_one_budget_between_its_sockets() -> None:
    inbound, _, _ = gate(
        RateLimitPolicy(messages_per_second=1, burst_messages=1, action="drop", scope="identifier")
    )
    tabs = [connection("alice") for _ in range(3)]
    assert [inbound.admit(tab, "m")[0] for tab in tabs] == [True, False, False]
    assert inbound.admit(connection("bob"), "m")[0]  # someone else: a budget of their own
    for i, tab in enumerate(tabs):
        inbound.forget(tab, last=i == len(tabs) - 1)


@pytest.mark.parametrize("scope", ["connection", "identifier"])
def test_reconnecting_buys_no_fresh_budget(scope: str) -> None:
    """A sender that closes and reconnects starts where it left off, until its bucket would
    have refilled (then it is forgotten)."""
    policy = RateLimitPolicy(messages_per_second=1, burst_messages=3, action="drop", scope=scope)
    assert policy.refill_time == 3.0
    inbound, clock, _ = gate(policy)
    first = connection("alice")
    assert [inbound.admit(first, "m")[0] for _ in range(4)] == [True, True, True, False]
    inbound.forget(first, last=True)
    again = connection("alice")
    assert inbound.admit(again, "m")[0] is False  # still empty
    inbound.forget(again, last=True)
    clock.t = 1.0  # one token back since
    third = connection("alice")
    assert [inbound.admit(third, "m")[0] for _ in range(2)] == [True, False]
    inbound.forget(third, last=True)
    clock.t = 10.0  # long enough to refill: kept no longer, and a full bucket is the same
    inbound.forget(connection("bob"), last=True)  # (a departure prunes the refilled ones)
    assert "alice" not in inbound._resting
    fourth = connection("alice")
    assert [inbound.admit(fourth, "m")[0] for _ in range(4)] == [True, True, True, False]


def test_bytes_are_measured_on_the_wire(caplog: Any) -> None:
    inbound, _, _ = gate(
        RateLimitPolicy(messages_per_second=None, bytes_per_second=4, action="drop")
    )
    alice = connection("alice")
    assert inbound.admit(alice, "é") == PASS  # 2 bytes of UTF-8
    assert inbound.admit(alice, b"ab") == PASS
    assert inbound.admit(alice, "a")[0] is False
    assert "over its rate limit (drop)" in caplog.text


def test_a_flood_is_logged_once_per_period_not_once_per_message(caplog: Any) -> None:
    inbound, clock, _ = gate(RateLimitPolicy(messages_per_second=1, action="drop"))
    alice = connection("alice")
    with caplog.at_level("WARNING", logger="wsfleet"):
        for _ in range(10_000):
            inbound.admit(alice, "m")
        clock.t = 11.0
        inbound.admit(alice, "m")
        inbound.admit(alice, "m")
    lines = [r for r in caplog.records if "over its rate limit" in r.getMessage()]
    assert len(lines) == 2
    assert inbound.drops["rate limit"] == 9_999 + 1
