"""Retry scheduling: ERROR with attempts left waits the policy's delay, then RECONNECTING.

What an attempt does comes from the connection's owner (``set_reconnector``); with nothing
supplied, every attempt fails and the connection ends DISCONNECTED after ``max_attempts``.
Timing runs on trio's ``MockClock`` (exact) and on asyncio in real time (short delays).
"""

from __future__ import annotations

import anyio
import pytest

from support import (
    LATE,
    MICROSECOND,
    C,
    D,
    E,
    R,
    mock_clock_backend,  # noqa: F401
    pairs,
    wait_for,
)
from wsfleet import (
    Connection,
    ConnectionManager,
    HeartbeatPolicy,
    RetryPolicy,
    StateChange,
    Transport,
    TransportError,
)
from wsfleet.testing import MemoryTransport

pytestmark = pytest.mark.anyio


def quick(**kwargs: object) -> RetryPolicy:
    settings: dict[str, object] = {
        "max_attempts": 3,
        "base_delay": 0.02,
        "max_delay": 1.0,
        "jitter": 0.0,
    }
    settings.update(kwargs)
    return RetryPolicy(**settings)  # type: ignore[arg-type]


# -- no reconnector: attempts fail --------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({}, id="exponential-no-jitter"),
        pytest.param({"jitter": 0.5, "seed": 7}, id="seeded-jitter"),
        pytest.param({"jitter_mode": "full", "seed": 11, "max_attempts": 4}, id="seeded-full"),
    ],
)
async def test_error_waits_the_policys_delay_then_retries_until_attempts_run_out(
    settings: dict[str, object],
) -> None:
    # A policy draws from its own generator: an equal twin with the same seed draws the very
    # delays the manager will wait. (Built here, not at collection: each run needs a fresh one.)
    policy = quick(**settings)
    expected_delays = list(quick(**settings).delays())
    changes: list[StateChange] = []
    async with ConnectionManager(retry_policy=policy) as manager:
        manager.on_state_change(changes.append)
        socket = MemoryTransport()
        conn = manager.register(socket, "alice")
        manager.set_connection_state(socket, E, "the peer went away")
        assert conn.state is E  # attempts are left: it waits
        await wait_for(lambda: conn.state is D)
        await wait_for(lambda: len(changes) == 3 + 2 * policy.max_attempts)

    attempts = policy.max_attempts
    assert pairs(changes) == [(None, C), (C, E), *[(E, R), (R, E)] * attempts, (E, D)]
    errors = [c for c in changes if c.new is E]
    retries = [c for c in changes if c.new is R]
    assert len(retries) == len(expected_delays) == attempts
    # Each ERROR but the last (which gives up) is followed by a retry after the policy's delay.
    for error, retry, delay in zip(errors[:-1], retries, expected_delays, strict=True):
        waited = (retry.at - error.at).total_seconds() + MICROSECOND
        assert delay <= waited <= delay + LATE
    assert all(c.reason == "attempt failed: nothing can reconnect this socket" for c in errors[1:])
    assert changes[-1].reason == f"retries exhausted ({attempts} of {attempts} attempts)"


async def test_with_no_attempts_allowed_error_goes_straight_to_disconnected() -> None:
    async with ConnectionManager(retry_policy=quick(max_attempts=0)) as manager:
        socket = MemoryTransport()
        conn = manager.register(socket, "alice")
        manager.set_connection_state(socket, E)
        assert conn.state is D
        assert manager.get_connection_state(socket) is None  # over, and forgotten


async def test_a_spent_time_budget_ends_the_retries_early() -> None:
    policy = quick(max_attempts=10, backoff_multiplier=1.0, base_delay=0.05, max_elapsed=0.12)
    changes: list[StateChange] = []
    async with ConnectionManager(retry_policy=policy) as manager:
        manager.on_state_change(changes.append)
        socket = MemoryTransport()
        conn = manager.register(socket, "alice")
        manager.set_connection_state(socket, E)
        await wait_for(lambda: conn.state is D)
    assert conn.attempts < 10
    assert changes[-1].reason == "retry time budget (max_elapsed) spent"


async def test_messages_queued_for_a_connection_that_gives_up_are_counted_as_dropped() -> None:
    async with ConnectionManager(retry_policy=quick()) as manager:
        socket = MemoryTransport()
        conn = manager.register(socket, "alice")
        manager.set_connection_state(socket, E)
        assert await manager.broadcast("while down") == 1  # kept for a reconnection
        assert manager.stats().queued_messages == 1
        await wait_for(lambda: conn.state is D)
        stats = manager.stats()
        assert stats.queued_messages == 0
        assert stats.drops == {"disconnected": 1}
        assert await manager.broadcast("after") == 0  # DISCONNECTED takes nothing
        assert socket.received == []


async def test_unregistering_during_the_wait_cancels_the_retry() -> None:
    calls: list[Connection] = []

    async def reconnect(conn: Connection) -> Transport:
        calls.append(conn)
        return MemoryTransport("never used")

    async with ConnectionManager(retry_policy=quick()) as manager:
        socket = MemoryTransport()
        manager.register(socket, "alice")
        manager.set_reconnector(socket, reconnect)
        manager.set_connection_state(socket, E)
        manager.unregister(socket)
        await anyio.sleep(0.2)  # ten times the delay
        assert calls == []
        assert len(manager) == 0


# -- with a reconnector ---------------------------------------------------------------------


async def test_a_reconnector_brings_the_connection_back_with_its_queued_messages_in_order() -> None:
    changes: list[StateChange] = []
    first = MemoryTransport("first", fail_with=TransportError("connection reset"))
    second = MemoryTransport("second")

    async def reconnect(conn: Connection) -> Transport:
        await anyio.sleep(0.01)  # a handshake takes time
        return second

    async with ConnectionManager(retry_policy=quick()) as manager:
        manager.on_state_change(changes.append)
        conn = manager.register(first, "alice")
        manager.set_reconnector(first, reconnect)
        await manager.broadcast("lost")  # the write fails: ERROR
        await wait_for(lambda: conn.state is not C)
        for i in range(5):
            assert await manager.broadcast(f"m{i}") == 1  # queued while it is down
        await wait_for(lambda: conn.state is C)
        await wait_for(lambda: len(second.received) == 5)
        assert second.received == [f"m{i}" for i in range(5)]
        assert await manager.send_to_one("alice", "after") == 1
        await wait_for(lambda: len(second.received) == 6)

        assert conn.transport is second
        assert second.connection is conn
        assert manager.get_connection_state(first) is C  # still known by its socket
        assert first.received == []
        assert manager.stats().drops == {"send failed": 1}
        assert manager.stats().queued_messages == 0
    assert pairs(changes)[:5] == [(None, C), (C, E), (E, R), (R, C), (C, D)]
    assert "connection reset" in (changes[1].reason or "")
    assert changes[3].reason == "reconnected"
    assert second.close_code == 1001  # the manager's exit closes the transport in use


async def test_a_failing_attempt_counts_and_the_next_one_may_succeed() -> None:
    changes: list[StateChange] = []
    second = MemoryTransport("second")
    calls = 0

    async def reconnect(conn: Connection) -> Transport:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("connection refused")
        return second

    async with ConnectionManager(retry_policy=quick()) as manager:
        manager.on_state_change(changes.append)
        socket = MemoryTransport()
        conn = manager.register(socket, "alice")
        manager.set_reconnector(socket, reconnect)
        manager.set_connection_state(socket, E)
        await wait_for(lambda: conn.state is C)
        assert calls == 2
        assert conn.attempts == 0  # back up: a fresh outage starts from zero
        await wait_for(lambda: len(changes) == 6)
    assert pairs(changes)[:6] == [(None, C), (C, E), (E, R), (R, E), (E, R), (R, C)]
    assert changes[3].reason == "attempt failed: OSError: connection refused"


async def test_an_attempt_that_finishes_after_unregister_closes_its_new_transport() -> None:
    release = anyio.Event()
    late = MemoryTransport("late")
    started = anyio.Event()

    async def reconnect(conn: Connection) -> Transport:
        started.set()
        await release.wait()
        return late

    async with ConnectionManager(retry_policy=quick()) as manager:
        socket = MemoryTransport()
        manager.register(socket, "alice")
        manager.set_reconnector(socket, reconnect)
        manager.set_connection_state(socket, E)
        with anyio.fail_after(5):
            await started.wait()
        manager.unregister(socket)
        release.set()
        await wait_for(lambda: late.close_code is not None)
        assert (late.close_code, late.close_reason) == (1000, "no longer wanted")
        assert late.connection is None
        assert len(manager) == 0


async def test_after_reconnecting_the_heartbeat_watches_the_new_transport() -> None:
    heartbeat = HeartbeatPolicy(ping_interval=0.05, ping_timeout=0.05, idle_after=None)
    deaf = MemoryTransport("deaf", auto_pong=False)
    fresh = MemoryTransport("fresh")

    async def reconnect(conn: Connection) -> Transport:
        return fresh

    async with ConnectionManager(retry_policy=quick(), heartbeat=heartbeat) as manager:
        conn = manager.register(deaf, "alice")
        manager.set_reconnector(deaf, reconnect)
        await wait_for(lambda: deaf.close_code is not None)
        assert deaf.close_code == 1011
        await wait_for(lambda: conn.state is C and conn.transport is fresh)
        reconnected_at = conn.changed_at
        await wait_for(lambda: fresh.pings >= 3)  # three rounds on the new transport
        assert conn.state is C
        assert conn.changed_at == reconnected_at  # no second timeout
        assert manager.stats().heartbeat_timeouts == 1
