"""Queues kept for a retry or a resume do not make the producer wait.

A connection in ERROR or RECONNECTING keeps what is sent to it for its client's return (up
to its queue's bound) and has no writer: nothing the server does drains it. The fleet-wide
budget (``BackpressurePolicy``) counts only what writers can drain, else a few dozen held
sessions (clients that vanished, or an attacker who connects and resets) would hold up every
fan-out for ``stall_after`` again and again.
"""

from __future__ import annotations

import random

import anyio
import pytest

from support import NEVER, E
from wsfleet import ConnectionManager, ConnectionState, OverflowPolicy
from wsfleet.testing import MemoryTransport

pytestmark = pytest.mark.anyio

HELD = (ConnectionState.ERROR, ConnectionState.RECONNECTING)
OVERFLOW = OverflowPolicy(max_messages=16, action="disconnect")


def held_in_queues(manager: ConnectionManager) -> tuple[int, int]:
    """What the queues of held connections hold, counted by walking them (the slow way)."""
    messages = nbytes = 0
    for conn in manager._registry:
        if conn.state in HELD:
            messages += conn.queued
            nbytes += conn.queued_bytes
    return messages, nbytes


async def test_held_queues_full_to_their_bound_hold_no_producer_up() -> None:
    async with ConnectionManager(retry_policy=NEVER, overflow=OVERFLOW) as manager:
        gone = [MemoryTransport(f"gone{i}") for i in range(50)]
        healthy = MemoryTransport("healthy")
        for socket in [*gone, healthy]:
            manager.register(socket, socket.name)
        for socket in gone:
            manager.set_connection_state(socket, E)  # held: a retry is scheduled
        for i in range(200):
            await manager.broadcast(f"m{i}")
        with anyio.fail_after(10):
            while len(healthy.received) < 200:
                await anyio.sleep(0.005)
        stats = manager.stats()
        assert stats.held == 50
        assert stats.queued_messages == 50 * OVERFLOW.max_messages  # every held queue full
        assert stats.producer_waits == 0
        assert healthy.received == [f"m{i}" for i in range(200)]


async def test_the_held_count_follows_every_queue_through_every_change() -> None:
    """Random sends, failures, returns and departures: the running count always equals the
    walk over the held queues, and reaches zero when nothing is held."""
    rng = random.Random(11)
    async with ConnectionManager(
        retry_policy=NEVER, overflow=OverflowPolicy(max_messages=8, action="drop-oldest")
    ) as manager:
        outbox = manager._fleet.outbox
        sockets = [MemoryTransport(f"s{i}", stalled=i % 3 == 0) for i in range(12)]
        for socket in sockets:
            manager.register(socket, socket.name)
        for step in range(600):
            socket = rng.choice(sockets)
            state = manager.get_connection_state(socket)
            roll = rng.random()
            if roll < 0.5:
                await manager.send_to_many([s.name for s in rng.sample(sockets, 4)], f"x{step}")
            elif roll < 0.65 and state in (ConnectionState.CONNECTED, ConnectionState.IDLE):
                manager.set_connection_state(socket, E)
            elif roll < 0.7 and state is E:
                manager.set_connection_state(socket, ConnectionState.RECONNECTING)
            elif roll < 0.8 and state is ConnectionState.RECONNECTING:
                manager.set_connection_state(socket, ConnectionState.CONNECTED)  # it is back
            elif roll < 0.85 and state is not None:
                manager.unregister(socket)
                replacement = MemoryTransport(socket.name)
                sockets[sockets.index(socket)] = replacement
                manager.register(replacement, replacement.name)
            await anyio.lowlevel.checkpoint()
            assert (outbox.held_messages, outbox.held_bytes) == held_in_queues(manager), step
        manager.clear()
        assert (outbox.held_messages, outbox.held_bytes) == (0, 0)
