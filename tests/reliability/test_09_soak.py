"""Check 9: soak. Register/unregister cycles with messages, until memory must be flat.

Each cycle registers one of a few live websockets connections under a fresh identifier,
puts it in a group, sends it a message (``send_to_one``, ``send_to_group`` or
``Connection.send`` in turn), waits until the client has read it and unregisters it. Every
200th cycle is instead a whole session: a new client connects, is greeted, and closes.

After a warm-up, two measured phases:

* RSS (``/proc/self/statm``) before and after a phase, nothing traced: growth <= 5 MiB;
* memory traced by ``tracemalloc`` over a second phase: growth <= 1 MiB;

and closed connections are collected: every transport is gone 100 cycles after its
unregistration (weak references, after a collection: a connection and its transport point
at each other, so only the cycle collector frees them), the task count is back to its
baseline, and once traffic stops no ``Connection`` (checked with the garbage collector,
since ``Connection`` takes no weak reference), transport or session socket is left alive.

The check runs without a heartbeat and with the default ``HeartbeatPolicy()``, whose
timers hold a deadline for every connection (20 s and 60 s ahead), so that an unregistered
connection must not be kept alive by them. Real websockets server and clients on
127.0.0.1, asyncio and trio. The short form runs 5,000 cycles per loop and policy, the full
form the issue's 200,000.
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from support import wait_until
from wsfleet import Connection, ConnectionManager, HeartbeatPolicy

from .conftest import Figure, Sizes, client, rss_bytes, serve, task_count

pytestmark = [pytest.mark.reliability, pytest.mark.anyio]

POOL = 4
SESSION_EVERY = 200
RSS_BOUND = 5 * 2**20
HEARTBEATS = [
    pytest.param(None, id="no-heartbeat"),
    pytest.param(HeartbeatPolicy(), id="default-heartbeat"),
]
TRACED_BOUND = 2**20


def live_connections() -> int:
    return sum(1 for obj in gc.get_objects() if isinstance(obj, Connection))


class Pool:
    """A few clients that stay connected and count what they read."""

    def __init__(self) -> None:
        self.server_side: dict[str, Any] = {}
        self.read = [0] * POOL

    async def handler(self, ws: Any, identifier: str) -> None:
        self.server_side[identifier] = ws
        try:
            async for _ in ws:
                pass
        except Exception:
            pass

    async def reader(self, url: str, i: int, *, task_status: Any) -> None:
        async with client(url, max_size=None) as ws:
            task_status.started()
            async for _ in ws:
                self.read[i] += 1


class Soak:
    """The cycles, and what they leave behind."""

    def __init__(self, manager: ConnectionManager, url: str, pool: Pool) -> None:
        self.manager = manager
        self.url = url
        self.pool = pool
        self.sockets = [pool.server_side[f"pool{i}"] for i in range(POOL)]
        self.cycles = 0
        #: Transports still alive 100+ cycles after their unregistration (after a collection).
        self.lingering = 0
        self.transports: list[weakref.ref[Any]] = []

    async def run(self, cycles: int) -> None:
        manager, pool = self.manager, self.pool
        for _ in range(cycles):
            self.cycles += 1
            cycle = self.cycles
            if cycle % SESSION_EVERY == 0:
                async with client(f"{self.url}?id=session{cycle}") as ws:
                    assert await ws.recv() == "welcome"
                continue
            slot = cycle % POOL
            socket, name = self.sockets[slot], f"s{cycle}"
            expected = pool.read[slot] + 1
            conn = manager.register(socket, name)
            self.transports.append(weakref.ref(conn.transport))
            manager.add_to_group(name, "soak")
            if cycle % 3 == 0:
                assert await manager.send_to_one(name, f"one {cycle}") == 1
            elif cycle % 3 == 1:
                assert await manager.send_to_group("soak", f"group {cycle}") == 1
            else:
                assert await conn.send(f"direct {cycle}") == 1
            with anyio.fail_after(5):
                while pool.read[slot] < expected:
                    await anyio.lowlevel.checkpoint()
            assert manager.unregister(socket)
            del conn
            if len(self.transports) >= 1100:  # the test's own bookkeeping stays flat
                gc.collect()
                self.lingering += sum(t() is not None for t in self.transports[:1000])
                del self.transports[:1000]


@asynccontextmanager
async def soak_fleet(
    heartbeat: HeartbeatPolicy | None,
) -> AsyncIterator[tuple[Soak, list[weakref.ref[Any]]]]:
    """A manager, a server, the pool of clients; yields the soak and the sessions' sockets."""
    pool = Pool()
    sessions: list[weakref.ref[Any]] = []
    async with ConnectionManager(heartbeat=heartbeat, close_timeout=1.0) as manager:

        async def handler(ws: Any, identifier: str) -> None:
            if identifier.startswith("pool"):
                await pool.handler(ws, identifier)
                return
            async with manager.session(ws, identifier) as session:
                sessions.append(weakref.ref(ws))
                await session.send("welcome")
                async for _ in session:
                    pass

        async with serve(handler) as url, anyio.create_task_group() as tg:
            for i in range(POOL):
                await tg.start(pool.reader, f"{url}?id=pool{i}", i)
            await wait_until(lambda: len(pool.server_side) == POOL, "pool connected")
            yield Soak(manager, url, pool), sessions
            tg.cancel_scope.cancel()


@pytest.mark.slow
@pytest.mark.parametrize("heartbeat", HEARTBEATS)
async def test_soak_keeps_memory_flat_and_collects_closed_connections(
    heartbeat: HeartbeatPolicy | None, sizes: Sizes, figure: Figure
) -> None:
    warmup, phase = sizes.pick((1_000, 2_000), (10_000, 95_000))
    async with soak_fleet(heartbeat) as (soak, _):
        baseline_tasks = task_count()
        await soak.run(warmup)
        gc.collect()
        rss_before = rss_bytes()
        await soak.run(phase)
        gc.collect()
        rss_growth = rss_bytes() - rss_before

        tracemalloc.start()
        try:
            gc.collect()
            traced_before = tracemalloc.get_traced_memory()[0]
            await soak.run(phase)
            gc.collect()
            traced_growth = tracemalloc.get_traced_memory()[0] - traced_before
        finally:
            tracemalloc.stop()

        # Writers linger a second after their queue empties; then every task is gone.
        tasks_back = await wait_until(lambda: task_count() <= baseline_tasks, "tasks", 5)
        stats = soak.manager.stats()

    figure("cycles", soak.cycles, "", f"{warmup} warm-up + 2 x {phase} measured")
    figure("RSS growth", rss_growth / 2**20, "MiB", f"<= {RSS_BOUND / 2**20:g} MiB")
    figure("traced memory growth", traced_growth / 2**20, "MiB", f"<= {TRACED_BOUND / 2**20:g} MiB")
    figure(
        "transports alive 100+ cycles after their unregistration",
        soak.lingering,
        "",
        "= 0 (after a collection)",
    )
    figure("tasks back to baseline after", tasks_back, "s")
    assert stats.connections == stats.identifiers == stats.groups == 0
    assert stats.queued_messages == 0
    assert stats.dropped == 0
    assert soak.lingering == 0
    assert rss_growth <= RSS_BOUND
    assert traced_growth <= TRACED_BOUND


@pytest.mark.parametrize("heartbeat", HEARTBEATS)
async def test_closed_connections_are_collected_once_traffic_stops(
    heartbeat: HeartbeatPolicy | None, sizes: Sizes, figure: Figure
) -> None:
    async with soak_fleet(heartbeat) as (soak, sessions):
        baseline_tasks = task_count()
        await soak.run(sizes.pick(300, 10_000))
        # Writers linger a second after their queue empties (trio), then go.
        await wait_until(lambda: task_count() <= baseline_tasks, "tasks", 5)
        gc.collect()
        connections_alive = live_connections()
        transports_alive = sum(t() is not None for t in soak.transports)
        sessions_alive = sum(s() is not None for s in sessions)
        registered = soak.manager.count()
    figure("Connection objects alive", connections_alive, "", "= 0")
    figure("transports alive", transports_alive, "", "= 0")
    figure("session sockets alive", sessions_alive, "", "= 0")
    assert registered == 0
    assert connections_alive == 0
    assert transports_alive == 0
    assert sessions_alive == 0
