"""Check 4: dead peers. A TCP reset is noticed within 250 ms; a silent peer within
``ping_interval + ping_timeout + 100 ms`` of its registration and never earlier; a busy but
healthy client, flooded with traffic both ways, is never timed out.

Real websockets servers and peers on 127.0.0.1, on asyncio and trio. A reset is a raw peer
closing with ``SO_LINGER`` 0 (an RST, no closing frame); a silent peer completes the
handshake and then neither reads nor writes, so it never answers a ping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest

from support import C, E, wait_until
from wsfleet import ConnectionManager, ConnectionState, HeartbeatPolicy, OverflowPolicy

from .conftest import Figure, Sizes, client, raw_connect, reset, serve

pytestmark = [pytest.mark.reliability, pytest.mark.anyio]

RESET_BOUND = 0.25
PING_INTERVAL = 0.2
PING_TIMEOUT = 0.2
SLACK = 0.1


class Server:
    """Sessions for every peer; records when each was registered and what it said."""

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        self.sockets: dict[str, Any] = {}
        self.registered_at: dict[str, float] = {}
        self.inbound: dict[str, int] = {}
        #: (identifier, new state, reason) of every change, as the callbacks saw them.
        self.changes: list[tuple[str, ConnectionState, str | None]] = []
        manager.on_state_change(
            lambda change: self.changes.append(
                (change.connection.identifier, change.new, change.reason)
            )
        )

    async def handler(self, ws: Any, identifier: str) -> None:
        async with self.manager.session(ws, identifier) as session:
            self.registered_at[identifier] = anyio.current_time()
            self.sockets[identifier] = ws
            async for _ in session:
                self.inbound[identifier] = self.inbound.get(identifier, 0) + 1

    def reason(self, identifier: str, state: ConnectionState) -> str | None:
        return next((r for who, new, r in self.changes if who == identifier and new is state), "")


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    # No heartbeat here: a reset must be noticed by the socket itself, not by a ping.
    async with ConnectionManager(close_timeout=1.0) as manager:
        yield Server(manager)


async def test_a_tcp_reset_is_noticed_within_250_ms(
    server: Server, sizes: Sizes, figure: Figure
) -> None:
    peers = sizes.pick(10, 100)
    latencies: list[float] = []
    async with serve(server.handler) as url:
        for i in range(peers):
            name = f"reset-{i}"
            stream, _ = await raw_connect(f"{url}?id={name}")
            await wait_until(lambda n=name: n in server.sockets, "registered")  # type: ignore[misc]
            conn = server.manager.connection(server.sockets[name])
            started = anyio.current_time()
            await reset(stream)
            with anyio.move_on_after(2.0):
                while conn.state is C:
                    await anyio.sleep(0.001)
            latencies.append(anyio.current_time() - started)
            assert conn.state is not C, f"{name}: the reset went unnoticed for 2 s"
        await wait_until(lambda: server.manager.count() == 0, "every reset peer unregistered")
    worst = max(latencies)
    figure("peers reset", peers)
    figure("reset noticed after (max)", worst * 1000, "ms", f"<= {RESET_BOUND * 1000:g} ms")
    figure("reset noticed after (median)", sorted(latencies)[peers // 2] * 1000, "ms")
    for i in range(peers):
        assert server.reason(f"reset-{i}", E) == "abnormal close (1006)"
    assert worst <= RESET_BOUND


async def test_silent_peers_time_out_on_time_and_busy_ones_never(
    sizes: Sizes, figure: Figure
) -> None:
    silent_peers = sizes.pick(4, 40)
    duration = sizes.pick(1.0, 20.0)  # rounds of pings for the healthy and the flooded client
    policy = HeartbeatPolicy(
        ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT, idle_after=None
    )
    overflow = OverflowPolicy(max_messages=4096, max_bytes=16 * 1024 * 1024)
    bound = PING_INTERVAL + PING_TIMEOUT
    async with ConnectionManager(heartbeat=policy, overflow=overflow, close_timeout=1.0) as manager:
        server = Server(manager)
        detected: dict[str, float] = {}
        flood_sent = flood_received = echoes = 0
        payload = "f" * 4096

        async def watch(name: str) -> None:
            await wait_until(lambda: name in server.sockets, "registered")
            conn = manager.connection(server.sockets[name])
            with anyio.move_on_after(bound + 2.0):
                while conn.state is C:
                    await anyio.sleep(0.001)
            detected[name] = anyio.current_time()

        async with (
            serve(server.handler) as url,
            client(f"{url}?id=healthy"),  # answers pings (websockets does), says nothing
            client(f"{url}?id=flooded", max_size=None) as flooded,
            AsyncExitStack() as silent,  # closes the silent peers' streams, whatever happens
        ):
            await wait_until(lambda: "flooded" in server.sockets, "flooded registered")
            flooded_conn = manager.connection(server.sockets["flooded"])
            stop = anyio.Event()

            async def flood() -> None:
                nonlocal flood_sent
                while not stop.is_set():
                    await manager.send_to_one("flooded", payload)
                    flood_sent += 1
                    while flooded_conn.queued > 256 and not stop.is_set():
                        await anyio.sleep(0.001)

            async def drink() -> None:
                nonlocal flood_received
                while True:
                    await flooded.recv()
                    flood_received += 1

            async def chatter() -> None:  # the flooded client is busy talking too
                nonlocal echoes
                while not stop.is_set():
                    await flooded.send("busy")
                    echoes += 1
                    await anyio.sleep(0.002)

            with anyio.fail_after(duration + 10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(flood)
                    tg.start_soon(drink)
                    tg.start_soon(chatter)
                    started = anyio.current_time()
                    # The silent peers come and go while the flood runs.
                    async with anyio.create_task_group() as watchers:
                        for i in range(silent_peers):
                            name = f"silent-{i}"
                            stream, _ = await raw_connect(f"{url}?id={name}")
                            silent.push_async_callback(stream.aclose)
                            watchers.start_soon(watch, name)
                            await anyio.sleep(bound / silent_peers)  # staggered deadlines
                    await anyio.sleep(max(0.0, duration - (anyio.current_time() - started)))
                    stop.set()
                    await wait_until(lambda: flood_received >= flood_sent, "flood drained")
                    tg.cancel_scope.cancel()
            healthy_state = manager.get_connection_state(server.sockets["healthy"])
            flooded_state = flooded_conn.state
            stats = manager.stats()

    elapsed = [detected[n] - server.registered_at[n] for n in detected]
    figure("silent peers", silent_peers)
    figure(
        "silent peer noticed after (min)",
        min(elapsed) * 1000,
        "ms",
        f">= {bound * 1000:g} ms (ping_interval + ping_timeout)",
    )
    figure(
        "silent peer noticed after (max)",
        max(elapsed) * 1000,
        "ms",
        f"<= {(bound + SLACK) * 1000:g} ms",
    )
    figure("flood to the busy client", flood_sent * len(payload) / 2**20, "MiB", "all received")
    figure("messages from the busy client", echoes)
    figure("pings sent", stats.pings_sent)
    figure("heartbeat timeouts", stats.heartbeat_timeouts, "", f"= {silent_peers}")
    for i in range(silent_peers):
        assert server.reason(f"silent-{i}", E) == "heartbeat timeout"
    assert min(elapsed) >= bound
    assert max(elapsed) <= bound + SLACK
    assert flood_received == flood_sent
    assert server.inbound.get("flooded", 0) == echoes
    assert healthy_state is C
    assert flooded_state is C
    assert stats.heartbeat_timeouts == silent_peers
    assert stats.pings_sent >= 2 * duration / (bound + SLACK)  # both kept up, round after round
