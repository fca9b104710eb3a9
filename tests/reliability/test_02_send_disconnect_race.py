"""Check 2: sends racing disconnects. Only wsfleet's own errors may reach the caller, and
no entry may be left behind.

Each race connects a real client (websockets, or a raw TCP peer for resets) on 127.0.0.1,
waits until its session is registered and in a group of its own, then starts at once, each
after a random handful of scheduler turns: a *killer* (the peer closes cleanly, the peer
resets the TCP connection, or the server unregisters it, closes it, disconnects its
identifier, or the handler returns) and a *caller* that fires the manager's calls at that
socket, identifier and group while it goes away (sends of every kind, group changes, state
changes, lookups, closes). Every exception the caller sees must be a ``WsfleetError``;
anything else escapes and fails the test. Races run 16 at a time. Afterwards the registry,
groups, queues and states are empty.

The short form runs 600 races per event loop, the full form the issue's 10,000.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from anyio.lowlevel import checkpoint

from support import wait_until
from wsfleet import ConnectionManager, ConnectionState, WsfleetError

from .conftest import Figure, Sizes, client, close_client, raw_connect, reset, serve, task_count

pytestmark = [pytest.mark.reliability, pytest.mark.anyio]

KILLERS = (
    "peer closes",
    "peer resets",
    "unregister",
    "close",
    "disconnect_identifier",
    "handler returns",
)
CONCURRENT = 16


class Server:
    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        self.sockets: dict[str, Any] = {}
        self.registered: dict[str, anyio.Event] = {}
        self.stop_handler: dict[str, anyio.Event] = {}

    async def handler(self, ws: Any, identifier: str) -> None:
        stop = self.stop_handler[identifier] = anyio.Event()
        async with self.manager.session(ws, identifier) as session:
            self.manager.add_to_group(identifier, f"g-{identifier}")
            self.manager.add_to_group(identifier, "everyone")
            self.sockets[identifier] = ws
            self.registered[identifier].set()
            async with anyio.create_task_group() as tg:

                async def drain() -> None:
                    async for _ in session:
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(drain)
                await stop.wait()
                tg.cancel_scope.cancel()

    def stop(self, identifier: str) -> None:
        stop = self.stop_handler.get(identifier)
        if stop is not None:
            stop.set()


@dataclass
class Tally:
    calls: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    async def attempt(self, call: Callable[[], object]) -> None:
        """Run ``call``; a ``WsfleetError`` is counted, anything else fails the test."""
        self.calls += 1
        try:
            result = call()
            if isinstance(result, Awaitable):
                await result
        except WsfleetError as exc:
            self.errors[type(exc).__name__] += 1


async def turns(rng: random.Random) -> None:
    for _ in range(rng.randrange(6)):
        await checkpoint()
    if rng.random() < 0.2:
        await anyio.sleep(rng.random() / 1000)


async def race(server: Server, url: str, i: int, rng: random.Random, tally: Tally) -> None:
    """One socket going away while the manager's calls are fired at it."""
    manager = server.manager
    name, group = f"r{i}", f"g-r{i}"
    killer = KILLERS[i % len(KILLERS)]
    server.registered[name] = anyio.Event()
    async with AsyncExitStack() as stack:
        stack.callback(server.stop, name)  # last: whatever happened, the handler ends
        if killer == "peer resets":
            stream, _ = await raw_connect(f"{url}?id={name}")
            stack.push_async_callback(stream.aclose)
        else:
            peer = await stack.enter_async_context(client(f"{url}?id={name}"))
        await server.registered[name].wait()
        ws = server.sockets[name]
        conn = manager.connection(ws)

        async def kill() -> None:
            await turns(rng)
            if killer == "peer closes":
                await close_client(peer)
            elif killer == "peer resets":
                await reset(stream)
            elif killer == "unregister":
                await tally.attempt(lambda: manager.unregister(ws))
            elif killer == "close":  # the caller may have got there first
                await tally.attempt(lambda: manager.close(ws, 1000, "race"))
            elif killer == "disconnect_identifier":
                await tally.attempt(lambda: manager.disconnect_identifier(name, 1000, "race"))
            else:
                server.stop(name)

        ops: list[Callable[[], object]] = [
            lambda: manager.send_to_one(name, "one"),
            lambda: manager.send_to_many([name, "nobody"], "many"),
            lambda: manager.send_to_group(group, "group"),
            lambda: manager.send_to_group("everyone", "all", exclude=ws),
            lambda: manager.broadcast(b"bytes"),
            lambda: conn.send("direct"),
            lambda: manager.add_to_group(name, "extra"),
            lambda: manager.remove_from_group(name, group),
            lambda: manager.set_connection_state(ws, ConnectionState.IDLE),
            lambda: manager.set_connection_state(ws, ConnectionState.CONNECTED),
            lambda: manager.connection(ws),
            lambda: manager.touch(ws),
            lambda: manager.get_group_members(group),
            lambda: manager.close(ws, 4000, "caller"),
            lambda: manager.unregister(ws),
        ]

        async def call() -> None:
            for _ in range(rng.randrange(3, 12)):
                await turns(rng)
                await tally.attempt(rng.choice(ops))

        async with anyio.create_task_group() as tg:
            tg.start_soon(kill)
            tg.start_soon(call)


@pytest.mark.slow
async def test_sends_racing_disconnects_raise_only_wsfleet_errors(
    sizes: Sizes, figure: Figure
) -> None:
    races = sizes.pick(600, 10_000)
    seeds = random.Random(2024)
    tally = Tally()
    async with ConnectionManager(close_timeout=1.0) as manager:
        server = Server(manager)
        async with serve(server.handler) as url:
            baseline_tasks = task_count()
            limiter = anyio.CapacityLimiter(CONCURRENT)

            async def limited(i: int, rng: random.Random) -> None:
                async with limiter:
                    with anyio.fail_after(10):
                        await race(server, url, i, rng, tally)

            async with anyio.create_task_group() as tg:
                for i in range(races):
                    tg.start_soon(limited, i, random.Random(seeds.random()))

            await wait_until(lambda: manager.count() == 0, "every race's socket gone", timeout=10)
            stats = manager.stats()
            await wait_until(lambda: task_count() <= baseline_tasks, "tasks back", timeout=5)
            tasks_after = task_count()
    figure("races", races)
    figure("calls racing a disconnect", tally.calls)
    figure("wsfleet errors caught", str(dict(tally.errors)))
    figure("other errors", 0, "", "= 0 (any would have failed the test)")
    figure("connections left", stats.connections, "", "= 0")
    figure("tasks beyond the baseline", tasks_after - baseline_tasks, "", "<= 0")
    assert tasks_after <= baseline_tasks
    assert stats.connections == 0
    assert stats.identifiers == 0
    assert stats.groups == 0
    assert stats.queued_messages == stats.queued_bytes == 0
    assert sum(stats.states.values()) == 0
    assert manager.groups() == set()
    assert manager.identifiers() == set()
