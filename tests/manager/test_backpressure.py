"""A producer that outruns every writer waits for them; one that outruns one peer does not.

In memory, with writers made slow (``MemoryTransport(latency=...)``, a writer task per
connection) or stalled. The same contract on real sockets, per adapter and loop, is in
``tests/conformance/test_backpressure.py``.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from support import C
from wsfleet import (
    BackpressurePolicy,
    ConnectionManager,
    OverflowPolicy,
    StateChange,
    WrongType,
)
from wsfleet.testing import MemoryTransport

pytestmark = pytest.mark.anyio


#: Small queues, so a producer that never waits overflows them within a few dozen messages.
OVERFLOW = OverflowPolicy(max_messages=16, action="disconnect")
MESSAGES = 400


def slow_fleet(count: int, **kwargs: Any) -> list[MemoryTransport]:
    """Peers whose writes each take 20 ms: a server that cannot keep up, on any machine.

    A write takes the whole queue, so a producer outruns it only by queueing a bound's worth
    (16) within one write: 20 ms leaves it over a millisecond per call even under coverage.
    """
    return [MemoryTransport(f"slow{i}", sync=False, latency=0.02, **kwargs) for i in range(count)]


async def produce(manager: ConnectionManager, count: int = MESSAGES) -> None:
    for i in range(count):  # as tight as an application writes it
        await manager.broadcast(f"m{i}")


async def drained(manager: ConnectionManager, within: float = 20.0) -> None:
    with anyio.fail_after(within):
        while manager.stats().queued_messages:
            await anyio.sleep(0.01)


async def test_when_every_writer_is_behind_the_producer_waits_and_nobody_is_evicted() -> None:
    changes: list[StateChange] = []
    async with ConnectionManager(overflow=OVERFLOW) as manager:
        manager.on_state_change(changes.append)
        sockets = slow_fleet(8)
        for socket in sockets:
            manager.register(socket, socket.name)
        await produce(manager)
        await drained(manager)
        expected = [f"m{i}" for i in range(MESSAGES)]
        with anyio.fail_after(10):
            while any(s.received != expected for s in sockets):
                await anyio.sleep(0.01)
        stats = manager.stats()
        assert [c.new for c in changes] == [C] * len(sockets)  # born, and nothing else
        assert stats.dropped == 0
        assert stats.sent_messages == len(sockets) * MESSAGES  # accepted = delivered
        assert stats.producer_waits > 0
        assert stats.producer_wait_seconds > 0


async def test_without_backpressure_the_same_producer_evicts_every_healthy_peer() -> None:
    """What the policy prevents: every queue passes its bound at once."""
    async with ConnectionManager(overflow=OVERFLOW, backpressure=None) as manager:
        sockets = slow_fleet(8)
        for socket in sockets:
            manager.register(socket, socket.name)
        await produce(manager)
        with anyio.fail_after(10):
            while manager.count():
                await anyio.sleep(0.01)
        assert {s.close_code for s in sockets} == {1008}
        assert manager.stats().producer_waits == 0


async def test_one_stalled_peer_among_healthy_ones_is_evicted_and_holds_nobody_up() -> None:
    async with ConnectionManager(overflow=OVERFLOW) as manager:
        healthy = [MemoryTransport(f"h{i}") for i in range(8)]
        stalled = MemoryTransport("stalled", stalled=True)
        for socket in [*healthy, stalled]:
            manager.register(socket, socket.name)
        offered_to_stalled = 0
        for i in range(MESSAGES):
            if manager.get_connection_state(stalled) is not None:
                offered_to_stalled += 1  # still registered: this message is for it too
            await manager.broadcast(f"m{i}")
        await drained(manager)
        assert stalled.close_code == 1008
        assert all(s.received == [f"m{i}" for i in range(MESSAGES)] for s in healthy)
        stats = manager.stats()
        assert stats.producer_waits == 0  # one full queue in nine: not the server's fault
        # Every message offered to a connection is delivered or counted as dropped, exactly.
        offered = len(healthy) * MESSAGES + offered_to_stalled
        assert offered == stats.sent_messages + stats.dropped
        assert stalled.received == []


async def test_a_lone_stalled_peer_holds_the_producer_once_for_stall_after_at_most() -> None:
    """With one connection a stalled peer and a server behind look alike: the producer
    waits while the writer makes progress, and not again once it sees none."""
    policy = BackpressurePolicy(stall_after=0.2)
    async with ConnectionManager(overflow=OVERFLOW, backpressure=policy) as manager:
        stalled = MemoryTransport("stalled", stalled=True)
        manager.register(stalled, "stalled")
        started = anyio.current_time()
        await produce(manager, 100)
        took = anyio.current_time() - started
        stats = manager.stats()
        assert stalled.close_code == 1008
        assert stats.producer_waits == 1
        assert 0.2 <= stats.producer_wait_seconds <= took


async def test_a_wait_is_bounded_by_max_wait() -> None:
    """Writers that crawl but progress (a batch each half second, so never stalled under
    ``stall_after=5``): the producer's wait still ends at ``max_wait``."""
    policy = BackpressurePolicy(max_wait=0.05, stall_after=5.0)
    overflow = OverflowPolicy(max_messages=100)
    async with ConnectionManager(overflow=overflow, backpressure=policy) as manager:
        sockets = [MemoryTransport(f"s{i}", sync=False, latency=0.5) for i in range(2)]
        for socket in sockets:
            manager.register(socket, socket.name)
        for i in range(1000):  # past half of the bounds within one write, on any machine
            await manager.broadcast(f"m{i}")
            if manager.stats().producer_waits:
                break
        stats = manager.stats()
        assert stats.producer_waits == 1
        # It ended by max_wait, long before stall_after (a loaded machine only lengthens it
        # by its scheduling delays).
        assert stats.producer_wait_seconds <= 0.05 + 2.0


def test_the_constructor_refuses_a_backpressure_that_is_not_a_policy() -> None:
    with pytest.raises(WrongType, match="backpressure must be a BackpressurePolicy or None"):
        ConnectionManager(backpressure={"max_fill": 0.5})  # type: ignore[arg-type]
