"""Heartbeat and idleness under a ``HeartbeatPolicy``, timed by the event loop's clock.

On trio the tests run on a ``MockClock`` that jumps to the next deadline, so they are fast
and exact; on asyncio they run in real time with short intervals. Times are read from the
manager's own stamps (monotonic, on the loop's clock), so the bounds below hold on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import anyio
import pytest
import trio.testing

from support import (
    LATE,
    MICROSECOND,
    NEVER,
    C,
    D,
    E,
    I,
    mock_clock_backend,  # noqa: F401
    wait_for,
)
from wsfleet import (
    PING,
    ConnectionManager,
    ConnectionState,
    HeartbeatPolicy,
    InvalidArgument,
    OverflowPolicy,
    RetryPolicy,
    StateChange,
)
from wsfleet.testing import MemoryTransport
from wsfleet.transport import Outbound

pytestmark = pytest.mark.anyio

INTERVAL = 0.05
TIMEOUT = 0.05
IDLE = 0.05


class TimedTransport(MemoryTransport):
    """Remembers when each ping was written, on the event loop's clock."""

    def __init__(self, name: str = "timed", **kwargs: object) -> None:
        super().__init__(name, **kwargs)  # type: ignore[arg-type]
        self.ping_times: list[float] = []

    def send_nowait(self, batch: Sequence[Outbound]) -> bool:
        written = super().send_nowait(batch)
        if written:
            self.ping_times.extend(anyio.current_time() for item in batch if item is PING)
        return written


# -- idle -------------------------------------------------------------------------------


async def test_no_inbound_activity_for_idle_after_moves_a_connection_to_idle() -> None:
    policy = HeartbeatPolicy(ping_interval=None, ping_timeout=None, idle_after=IDLE)
    async with ConnectionManager(heartbeat=policy) as manager:
        socket = MemoryTransport()
        conn = manager.register(socket, "alice")
        registered_at = conn.changed_at
        await wait_for(lambda: conn.state is I)
        assert IDLE <= conn.changed_at - registered_at <= IDLE + LATE
        assert conn.reason == "no activity for 0.05 s"
        assert manager.connections_in_state(I) == [socket]


async def test_a_message_brings_an_idle_connection_back_to_connected_at_once() -> None:
    policy = HeartbeatPolicy(ping_interval=None, ping_timeout=None, idle_after=IDLE)
    changes: list[StateChange] = []
    async with ConnectionManager(heartbeat=policy) as manager:
        manager.on_state_change(changes.append)
        socket = MemoryTransport()
        conn = manager.register(socket, "alice")
        await wait_for(lambda: conn.state is I)
        manager.touch(socket)
        assert conn.state is C  # at once, not at the next tick
        assert conn.reason == "activity"
        woke_at = conn.changed_at
        await wait_for(lambda: conn.state is I)  # and it goes idle again when quiet
        assert IDLE <= conn.changed_at - woke_at <= IDLE + LATE
        conn.touch()  # the Connection method does the same
        assert conn.state is C
        await wait_for(lambda: len(changes) == 5)
        assert [(c.old, c.new) for c in changes] == [(None, C), (C, I), (I, C), (C, I), (I, C)]


async def test_regular_messages_keep_a_connection_connected() -> None:
    policy = HeartbeatPolicy(ping_interval=None, ping_timeout=None, idle_after=IDLE)
    async with ConnectionManager(heartbeat=policy) as manager:
        socket = MemoryTransport()
        conn = manager.register(socket, "alice")
        for _ in range(10):
            await anyio.sleep(IDLE / 5)
            manager.touch(socket)
            assert conn.state is C
        last_message = anyio.current_time()
        await wait_for(lambda: conn.state is I)
        assert conn.changed_at - last_message >= IDLE


async def test_pongs_keep_a_peer_alive_but_do_not_count_as_activity() -> None:
    policy = HeartbeatPolicy(ping_interval=IDLE / 4, ping_timeout=IDLE / 4, idle_after=IDLE)
    async with ConnectionManager(heartbeat=policy) as manager:
        socket = MemoryTransport()  # answers every ping
        conn = manager.register(socket, "alice")
        registered_at = conn.changed_at
        await wait_for(lambda: conn.state is I)
        assert conn.changed_at - registered_at >= IDLE
        assert socket.pings >= 2
        await anyio.sleep(IDLE)
        assert conn.state is I  # pings go on in IDLE; answered, they fail nobody
        assert socket.close_code is None


# -- pings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "timeout",
    [TIMEOUT, 4 * INTERVAL, INTERVAL / 4],
    ids=["timeout=interval", "timeout>interval", "timeout<interval"],
)
async def test_a_ping_is_sent_every_ping_interval(timeout: float) -> None:
    """Whatever the timeout: a pong answered in time leaves the next ping to the interval
    (a longer timeout once spaced the pings by the timeout instead)."""
    policy = HeartbeatPolicy(ping_interval=INTERVAL, ping_timeout=timeout, idle_after=None)
    async with ConnectionManager(heartbeat=policy) as manager:
        socket = TimedTransport()
        conn = manager.register(socket, "alice")
        registered_at = conn.changed_at
        await anyio.sleep(6 * INTERVAL + INTERVAL / 2)
        elapsed = anyio.current_time() - registered_at
        times = socket.ping_times
        assert socket.pings == len(times) == manager.stats().pings_sent
        assert times[0] - registered_at >= INTERVAL  # the first one after one interval
        assert all(later - earlier >= INTERVAL / 2 for earlier, later in pairwise(times))
        assert elapsed / INTERVAL - 3 <= len(times) <= elapsed / INTERVAL
        assert socket.received == []  # pings are frames, not messages
        assert manager.stats().sent_messages == 0


async def test_pings_do_not_take_a_task_per_connection() -> None:
    policy = HeartbeatPolicy(ping_interval=INTERVAL, ping_timeout=TIMEOUT, idle_after=IDLE)
    async with ConnectionManager(heartbeat=policy) as manager:
        baseline = len(anyio.get_running_tasks())
        sockets = [MemoryTransport(f"s{i}") for i in range(300)]
        for i, socket in enumerate(sockets):
            manager.register(socket, f"user{i}")
        await wait_for(lambda: all(s.pings >= 1 for s in sockets))
        assert len(anyio.get_running_tasks()) <= baseline + 2


# -- heartbeat timeout -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry", "final"),
    [pytest.param(None, D, id="no-retry-policy"), pytest.param(NEVER, E, id="retry-pending")],
)
async def test_a_peer_that_never_answers_is_failed_and_closed_with_1011_on_time(
    retry: RetryPolicy | None, final: ConnectionState
) -> None:
    policy = HeartbeatPolicy(ping_interval=INTERVAL, ping_timeout=TIMEOUT, idle_after=None)
    changes: list[StateChange] = []
    async with ConnectionManager(heartbeat=policy, retry_policy=retry) as manager:
        manager.on_state_change(changes.append)
        deaf = MemoryTransport("deaf", auto_pong=False)
        healthy = MemoryTransport("healthy")
        conn = manager.register(deaf, "deaf")
        manager.register(healthy, "healthy")
        registered_at = manager.get_state_timestamp(deaf)
        assert registered_at is not None
        await wait_for(lambda: deaf.close_code is not None)
        assert (deaf.close_code, deaf.close_reason) == (1011, "heartbeat timeout")
        assert deaf.pings == 1  # the ping was sent; no pong ever came
        failed = next(c for c in changes if c.new is E)
        assert failed.connection is conn
        assert failed.reason == "heartbeat timeout"
        took = (failed.at - registered_at).total_seconds() + MICROSECOND  # datetimes round
        assert INTERVAL + TIMEOUT <= took <= INTERVAL + TIMEOUT + LATE  # not before, not long after
        assert conn.state is final  # then the retry policy decides
        stats = manager.stats()
        assert stats.heartbeat_timeouts == 1
        assert manager.get_connection_state(healthy) is C
        assert healthy.close_code is None


async def test_a_peer_that_answers_every_ping_is_never_timed_out() -> None:
    policy = HeartbeatPolicy(ping_interval=INTERVAL, ping_timeout=TIMEOUT, idle_after=None)
    async with ConnectionManager(heartbeat=policy) as manager:
        socket = MemoryTransport()
        conn = manager.register(socket, "alice")
        await wait_for(lambda: socket.pings >= 6)  # six rounds, each answered
        assert conn.state is C
        assert socket.close_code is None
        assert manager.stats().heartbeat_timeouts == 0


async def test_a_late_pong_within_the_timeout_keeps_the_peer() -> None:
    policy = HeartbeatPolicy(ping_interval=INTERVAL, ping_timeout=TIMEOUT, idle_after=None)
    async with ConnectionManager(heartbeat=policy) as manager:
        socket = MemoryTransport(auto_pong=False)
        conn = manager.register(socket, "alice")
        for ping in range(1, 6):
            await wait_for(lambda ping=ping: socket.pings == ping)  # type: ignore[misc]
            await anyio.sleep(TIMEOUT / 5)
            conn.touch(pong=True)
        assert conn.state is C
        assert socket.close_code is None


async def test_a_stalled_peer_is_found_dead_by_the_heartbeat() -> None:
    policy = HeartbeatPolicy(ping_interval=INTERVAL, ping_timeout=TIMEOUT, idle_after=None)
    async with ConnectionManager(heartbeat=policy) as manager:
        stalled = MemoryTransport("stalled", stalled=True)  # would pong, but reads nothing
        conn = manager.register(stalled, "alice")
        registered_at = conn.changed_at
        await manager.broadcast("stuck")  # a writer holds this, so the ping queues behind it
        await wait_for(lambda: stalled.close_code is not None)
        assert stalled.close_code == 1011
        assert stalled.close_reason == "heartbeat timeout (ping not delivered)"
        assert conn.state is D
        # The ping was queued one interval in; it gets an interval more, plus the timeout.
        assert conn.changed_at - registered_at >= 2 * INTERVAL + TIMEOUT


async def test_drop_oldest_never_drops_a_queued_ping() -> None:
    policy = HeartbeatPolicy(ping_interval=INTERVAL, ping_timeout=TIMEOUT, idle_after=None)
    overflow = OverflowPolicy(max_messages=3, action="drop-oldest")
    async with ConnectionManager(heartbeat=policy, overflow=overflow) as manager:
        socket = MemoryTransport("slow reader", stalled=True)
        conn = manager.register(socket, "alice")
        await manager.broadcast("m0")
        await wait_for(lambda: manager.stats().queued_messages == 0)  # m0 is in flight
        await anyio.sleep(INTERVAL * 1.2)  # a ping is due and waits at the queue's head
        for i in range(1, 8):
            await manager.broadcast(f"m{i}")
        assert manager.stats().queued_messages == 3
        socket.resume()  # the peer reads again, and answers the ping it finally gets
        await wait_for(lambda: socket.received[-1:] == ["m7"])
        await anyio.sleep(4 * (INTERVAL + TIMEOUT))
        assert conn.state is C
        assert socket.close_code is None
        assert socket.received == ["m0", "m5", "m6", "m7"]
        assert manager.stats().drops == {"overflow: drop-oldest": 4}
        assert socket.pings >= 2


# -- reports that arrive from a library's internals, outside any task ------------------------


async def test_a_pong_reported_from_a_loop_callback_outside_any_task_counts() -> None:
    """websockets on asyncio resolves a ping's future on pong; its done-callbacks run from the
    loop with no task current. The report must be taken there like anywhere else (it once
    raised NoEventLoopError, and every healthy client timed out)."""
    import asyncio
    import contextvars

    loop = asyncio.get_running_loop()
    heartbeat = HeartbeatPolicy(ping_interval=INTERVAL, ping_timeout=TIMEOUT, idle_after=IDLE)
    async with ConnectionManager(heartbeat=heartbeat) as manager:
        socket = MemoryTransport(auto_pong=False)
        conn = manager.register(socket, "alice")
        await wait_for(lambda: conn.state is I)
        reports: list[BaseException | None] = []

        def from_the_loop(pong: bool) -> None:
            assert asyncio.current_task() is None  # what the library's callback sees
            try:
                conn.touch(pong=pong)
                reports.append(None)
            except BaseException as exc:  # pragma: no cover - the regression
                reports.append(exc)

        for _ in range(6):  # several periods, each answered from outside a task
            await wait_for(lambda: socket.pings > len(reports))
            # A fresh context, as the library's: no task and nothing inherited from the test.
            loop.call_soon(from_the_loop, True, context=contextvars.Context())
            await wait_for(lambda: len(reports) == socket.pings)
        # A message: IDLE -> CONNECTED, outside a task.
        loop.call_soon(from_the_loop, False, context=contextvars.Context())
        await wait_for(lambda: len(reports) == 7)
        assert reports == [None] * 7
        assert conn.state is C
        assert manager.stats().heartbeat_timeouts == 0


test_a_pong_reported_from_a_loop_callback_outside_any_task_counts = pytest.mark.parametrize(
    "anyio_backend", ["asyncio"]
)(test_a_pong_reported_from_a_loop_callback_outside_any_task_counts)


# -- the default heartbeat ------------------------------------------------------------------


class Unpingable(MemoryTransport):
    """A socket with no ping of its own (ASGI's): its server keeps it alive."""

    can_ping = False
    no_ping_reason = "this transport cannot ping"


#: The default periods in virtual time: on trio's mock clock only. On asyncio the same
#: defaults are run in real time over real sockets, longer than their periods, by
#: ``conformance/test_with_default_policies.py``; here they would only cost minutes.
ON_THE_MOCK_CLOCK = pytest.mark.parametrize(
    "anyio_backend",
    [pytest.param(("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}), id="trio")],
)


@ON_THE_MOCK_CLOCK
async def test_by_default_the_manager_pings_as_websockets_does() -> None:
    async with ConnectionManager() as manager:  # no policy given: HeartbeatPolicy()
        assert manager.heartbeat == HeartbeatPolicy()
        pinged = MemoryTransport("pinged")
        deaf = MemoryTransport("deaf", auto_pong=False)
        quiet = Unpingable("asgi")
        manager.register(pinged, "pinged")
        conn = manager.register(deaf, "deaf")
        manager.register(quiet, "asgi")  # taken: its server does the pinging
        await wait_for(lambda: deaf.close_code is not None, within=60.0)
        assert (deaf.close_code, deaf.close_reason) == (1011, "heartbeat timeout")
        assert conn.state is D
        assert pinged.pings >= 1
        assert quiet.pings == 0
        assert manager.get_connection_state(pinged) in (C, I)
        assert manager.get_connection_state(quiet) in (C, I)


async def test_an_explicit_pinging_heartbeat_refuses_a_socket_that_cannot_be_pinged() -> None:
    async with ConnectionManager(heartbeat=HeartbeatPolicy()) as manager:
        with pytest.raises(InvalidArgument, match="this transport cannot ping"):
            manager.register(Unpingable("asgi"), "asgi")
        assert manager.count() == 0


@ON_THE_MOCK_CLOCK
async def test_heartbeat_none_turns_pings_and_idleness_off() -> None:
    async with ConnectionManager(heartbeat=None) as manager:
        deaf = MemoryTransport("deaf", auto_pong=False)
        conn = manager.register(deaf, "deaf")
        await anyio.sleep(200)  # ten default intervals, in virtual time
        assert deaf.pings == 0
        assert conn.state is C
