"""Check 3: a slow consumer. One client stops reading while the fleet broadcasts steadily.

Four healthy websockets clients and one raw peer that completes the handshake and never
reads again receive the same paced broadcast: 32 KiB messages at 16 MiB/s, 8 MiB in all in
the short form, the issue's 32 MiB in the full form. Every message carries the time it was
broadcast, so each healthy client measures its latency; a control run without the slow peer
gives the baseline.

Criteria:

* the healthy clients' p99 latency is at most the control run's p99 + 50 ms;
* the slow peer's queue never exceeds its bound (``OverflowPolicy``: messages and bytes),
  sampled after every broadcast, the only moment it can grow;
* the slow peer is evicted (ERROR, reason "slow consumer") within
  ``max_bytes / rate + 1 s`` of the first broadcast it did not read.

Real websockets server and clients on 127.0.0.1, asyncio and trio.
"""

from __future__ import annotations

import struct
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from support import C, E, wait_until
from wsfleet import ConnectionManager, OverflowPolicy

from .conftest import Figure, Sizes, client, percentile, raw_connect, serve

pytestmark = [pytest.mark.reliability, pytest.mark.anyio]

MESSAGE = 32 * 1024
RATE = 16 * 2**20  # bytes per second, to every client
HEALTHY = 4
BOUND_BYTES = 2 * 2**20
BOUND_MESSAGES = 256
LATENCY_SLACK = 0.05


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    max_queued: int = 0
    max_queued_bytes: int = 0
    evicted_after: float | None = None
    reason: str | None = None
    received: int = 0
    sent: int = 0


async def broadcast_run(total_bytes: int, *, slow: bool) -> Run:
    """One run: the paced broadcast to the healthy clients, and the slow peer if ``slow``."""
    run = Run()
    overflow = OverflowPolicy(
        max_messages=BOUND_MESSAGES, max_bytes=BOUND_BYTES, action="disconnect"
    )
    manager = ConnectionManager(overflow=overflow, close_timeout=1.0)
    sockets: dict[str, Any] = {}

    @manager.on_state_change
    def note(change: Any) -> None:
        if change.connection.identifier == "slow" and change.new is E and run.reason is None:
            run.reason = change.reason

    async def handler(ws: Any, identifier: str) -> None:
        async with manager.session(ws, identifier) as session:
            sockets[identifier] = ws
            async for _ in session:
                pass

    count = total_bytes // MESSAGE
    padding = b"\x00" * (MESSAGE - 8)
    per_second = RATE / MESSAGE

    async def reader(ws: Any) -> None:
        while True:
            data = await ws.recv()
            run.latencies.append(anyio.current_time() - struct.unpack("!d", data[:8])[0])
            run.received += 1

    async with (
        manager,
        serve(handler, max_size=None) as url,
        AsyncExitStack() as closing,
        anyio.create_task_group() as tg,
    ):
        clients = []
        for i in range(HEALTHY):
            clients.append(await tg.start(hold, f"{url}?id=h{i}"))
        if slow:
            stalled, _ = await raw_connect(f"{url}?id=slow")
            closing.push_async_callback(stalled.aclose)
        await wait_until(lambda: manager.count() == HEALTHY + slow, "all registered")
        for ws in clients:
            tg.start_soon(reader, ws)
        slow_conn = manager.connection(sockets["slow"]) if slow else None
        started = anyio.current_time()
        with anyio.fail_after(count / per_second + 10):
            while run.sent < count:
                due = min(count, int((anyio.current_time() - started) * per_second) + 1)
                while run.sent < due:
                    await manager.broadcast(struct.pack("!d", anyio.current_time()) + padding)
                    run.sent += 1
                    if slow_conn is not None:
                        run.max_queued = max(run.max_queued, slow_conn.queued)
                        run.max_queued_bytes = max(run.max_queued_bytes, slow_conn.queued_bytes)
                        if run.evicted_after is None and slow_conn.state is not C:
                            run.evicted_after = anyio.current_time() - started
                await anyio.sleep(0.005)
            await wait_until(lambda: run.received >= count * HEALTHY, "healthy caught up")
        tg.cancel_scope.cancel()
    return run


async def hold(url: str, *, task_status: Any) -> None:
    async with client(url, max_size=None, max_queue=None) as ws:
        task_status.started(ws)
        await anyio.sleep_forever()


async def test_a_slow_consumer_is_evicted_in_time_and_costs_the_others_nothing(
    sizes: Sizes, figure: Figure
) -> None:
    total = sizes.pick(8, 32) * 2**20
    control = await broadcast_run(total, slow=False)
    loaded = await broadcast_run(total, slow=True)
    control_p99 = percentile(control.latencies, 0.99)
    loaded_p99 = percentile(loaded.latencies, 0.99)
    deadline = BOUND_BYTES / RATE + 1.0
    figure("sent to the slow peer", total / 2**20, "MiB", f"at {RATE / 2**20:g} MiB/s")
    figure("healthy p99 latency, control run", control_p99 * 1000, "ms")
    figure(
        "healthy p99 latency, with the slow peer",
        loaded_p99 * 1000,
        "ms",
        f"<= {(control_p99 + LATENCY_SLACK) * 1000:.1f} ms",
    )
    figure("slow peer's queue, most messages", loaded.max_queued, "", f"<= {BOUND_MESSAGES}")
    figure(
        "slow peer's queue, most bytes",
        loaded.max_queued_bytes / 2**20,
        "MiB",
        f"<= {BOUND_BYTES / 2**20:g} MiB",
    )
    evicted = loaded.evicted_after
    figure(
        "slow peer evicted after",
        float("inf") if evicted is None else evicted * 1000,
        "ms",
        f"<= {deadline * 1000:g} ms",
    )
    figure("eviction reason", str(loaded.reason), "", "slow consumer")
    assert control.received == loaded.received == control.sent * HEALTHY
    assert loaded_p99 <= control_p99 + LATENCY_SLACK
    assert loaded.max_queued <= BOUND_MESSAGES
    assert loaded.max_queued_bytes <= BOUND_BYTES
    assert evicted is not None
    assert evicted <= deadline
    assert loaded.reason == "slow consumer"
