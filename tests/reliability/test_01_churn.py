"""Check 1: churn during fan-out. Clients connect and disconnect while broadcasts run.

A broadcaster sends numbered messages, alternately with ``broadcast`` and with
``send_to_group`` to a group every client joins, while clients come and go, at most
``live`` at a time, each for a random while: a websockets client that closes cleanly, one
that the server closes (``manager.close``), or a raw TCP peer that reads frames and then
resets the connection. The broadcaster is paced so that it does not finish long before the
churn does.

Exactness: the handler greets each client with the number of the next message it will get
(nothing runs between its registration and that greeting), and a client that decides to
leave first reads every message numbered below what had been broadcast by then. So each
client must have received exactly ``first, first + 1, ..., stop - 1``: once each, in order.

Criteria: no exception anywhere and nothing logged at ERROR; every client's sequence exact;
afterwards the registry and groups are empty, nothing is queued, and the tasks and file
descriptors of the process are back to what they were before the churn.

Real websockets server and clients on 127.0.0.1, asyncio and trio. The short form churns
200 clients through 1,000 fan-outs; the full form 5,000 through 10,000.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import anyio
import pytest

from support import wait_until
from wsfleet import ConnectionManager, OverflowPolicy

from .conftest import (
    Figure,
    FrameReader,
    Sizes,
    client,
    open_fds,
    raw_connect,
    reset,
    serve,
    task_count,
)

pytestmark = [pytest.mark.reliability, pytest.mark.anyio]

MODES = ("client closes", "server closes", "peer resets")


async def test_churn_during_fan_out_loses_nothing_and_leaks_nothing(
    sizes: Sizes, figure: Figure, errors_logged: list[logging.LogRecord]
) -> None:
    connects = sizes.pick(200, 5_000)
    broadcasts = sizes.pick(1_000, 10_000)
    live = sizes.pick(20, 100)
    lifetime = sizes.pick((0.01, 0.1), (0.05, 0.5))
    rng = random.Random(1)
    overflow = OverflowPolicy(max_messages=broadcasts + 8, max_bytes=256 * 2**20)
    padding = "." * 64
    issued = 0  # messages fanned out so far (each is queued before anyone else runs)
    started = 0
    checked = 0
    modes_seen: dict[str, int] = dict.fromkeys(MODES, 0)

    manager = ConnectionManager(overflow=overflow, close_timeout=1.0)
    sockets: dict[str, Any] = {}

    async def handler(ws: Any, identifier: str) -> None:
        async with manager.session(ws, identifier) as session:
            manager.add_to_group(identifier, "room")
            manager.add_to_group(identifier, f"own-{identifier}")
            sockets[identifier] = ws
            await session.send(f"hello {issued}")
            async for _ in session:
                pass
        del sockets[identifier]

    def number(message: str | bytes) -> int:
        text = message.decode() if isinstance(message, bytes) else message
        return int(text.rstrip("."))

    def check(name: str, first: int, stop: int, received: list[int]) -> None:
        nonlocal checked
        assert received == list(range(first, stop)), (
            f"{name}: expected {first}..{stop - 1}, got {len(received)} messages "
            f"{received[:3]}...{received[-3:]}"
        )
        checked += 1

    async def websockets_client(i: int, mode: str, seconds: float) -> None:
        name = f"c{i}"
        received: list[int] = []
        async with client(f"{manager_url}?id={name}", max_size=None, max_queue=None) as ws:
            hello = await ws.recv()
            first = int(str(hello).split()[1])
            with anyio.move_on_after(seconds):
                while True:
                    received.append(number(await ws.recv()))
            stop = issued
            while (received[-1] if received else first - 1) < stop - 1:
                received.append(number(await ws.recv()))
            if mode == "server closes":
                await manager.close(sockets[name], 1000, "churn")
        check(name, first, stop, received)

    async def raw_peer(i: int, seconds: float) -> None:
        name = f"c{i}"
        frames: list[str] = []
        stream, _ = await raw_connect(f"{manager_url}?id={name}")
        try:
            reader = FrameReader(stream)

            async def pump() -> None:  # never cancelled in the middle of a frame it needs
                while True:
                    opcode, payload = await reader.read()
                    assert opcode == 0x1, f"{name}: frame {opcode} {payload[:20]!r}"
                    frames.append(payload.decode())

            async with anyio.create_task_group() as tg:
                tg.start_soon(pump)
                await wait_until(lambda: bool(frames), "greeted")
                first = int(frames[0].split()[1])
                await anyio.sleep(seconds)
                stop = issued
                await wait_until(lambda: len(frames) > stop - first, "caught up", timeout=20)
                tg.cancel_scope.cancel()
        finally:
            await reset(stream)
        received = [number(m) for m in frames[1:]]
        assert received == sorted(set(received)), f"{name}: out of order or twice"
        check(name, first, stop, received[: stop - first])

    async def churn_one(i: int, done: anyio.Semaphore) -> None:
        try:
            mode = MODES[i % len(MODES)]
            modes_seen[mode] += 1
            seconds = rng.uniform(*lifetime)
            with anyio.fail_after(30):
                if mode == "peer resets":
                    await raw_peer(i, seconds)
                else:
                    await websockets_client(i, mode, seconds)
        finally:
            done.release()

    async def broadcaster() -> None:
        nonlocal issued
        for n in range(broadcasts):
            # Paced: the fan-outs run through the whole churn rather than ahead of it.
            while n / broadcasts > started / connects + 0.02 and started < connects:
                await anyio.sleep(0.001)
            issued = n + 1  # set before the call: its fan-out is done before it yields
            if n % 2:
                await manager.send_to_group("room", f"{n}{padding}")
            else:
                await manager.broadcast(f"{n}{padding}")

    async with manager, serve(handler) as manager_url:
        await anyio.sleep(0.05)
        baseline_tasks = task_count()
        baseline_fds = open_fds()
        began = anyio.current_time()
        slots = anyio.Semaphore(live)
        async with anyio.create_task_group() as tg:
            tg.start_soon(broadcaster)
            for i in range(connects):
                await slots.acquire()
                started = i + 1
                tg.start_soon(churn_one, i, slots)
        took = anyio.current_time() - began
        await wait_until(lambda: manager.count() == 0, "every session ended", timeout=10)
        stats = manager.stats()
        tasks_back = await wait_until(lambda: task_count() <= baseline_tasks, "tasks", timeout=10)
        fds_back = await wait_until(lambda: open_fds() <= baseline_fds, "descriptors", timeout=10)
        groups, identifiers = manager.groups(), manager.identifiers()

    figure("connects and disconnects", connects, "", str(modes_seen))
    figure("fan-outs", broadcasts, "", f"while the churn ran ({took:.2f} s)")
    figure("clients with every message once, in order", checked, "", f"= {connects}")
    figure("errors logged", len(errors_logged), "", "= 0")
    figure("tasks back to baseline after", tasks_back, "s")
    figure("descriptors back to baseline after", fds_back, "s")
    figure("drops", str(dict(stats.drops)), "", "only what was queued for leavers")
    assert checked == connects
    assert errors_logged == []
    assert stats.connections == stats.identifiers == stats.groups == 0
    assert stats.queued_messages == stats.queued_bytes == 0
    assert sum(stats.states.values()) == 0
    assert groups == set()
    assert identifiers == set()
    assert set(stats.drops) <= {"unregistered", "disconnected", "connection lost", "send failed"}
