"""The websockets adapter, with a real server and real clients on 127.0.0.1, on asyncio and trio."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from wsfleet import ConnectionManager, ConnectionState, HeartbeatPolicy, OverflowPolicy

from .clients import client, raw_upgrade
from .harness_websockets import serve

pytestmark = pytest.mark.anyio

C = ConnectionState.CONNECTED
I = ConnectionState.IDLE  # noqa: E741
E = ConnectionState.ERROR
D = ConnectionState.DISCONNECTED


class App:
    """A server whose handler holds each socket in a wsfleet session and echoes to groups."""

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        self.changes: list[tuple[str, ConnectionState | None, ConnectionState, str | None]] = []
        self.ended: list[tuple[str, int | None]] = []
        self.registered = anyio.Event()
        manager.on_state_change(self.record)

    def record(self, change: Any) -> None:
        who = change.connection.identifier
        self.changes.append((who, change.old, change.new, change.reason))

    async def handler(self, ws: Any, identifier: str) -> None:
        async with self.manager.session(ws, identifier) as session:
            self.manager.add_to_group(identifier, "room")
            self.registered.set()
            async for message in session:
                await self.manager.send_to_group("room", f"{identifier}: {message}")
            self.ended.append((identifier, session.close_code))

    async def wait_for(self, who: str, state: ConnectionState, timeout: float = 5.0) -> str | None:
        with anyio.fail_after(timeout):
            while True:
                for name, _, new, reason in self.changes:
                    if name == who and new is state:
                        return reason
                await anyio.sleep(0.01)


@pytest.fixture
async def app() -> AsyncIterator[App]:
    async with ConnectionManager() as manager:
        yield App(manager)


async def test_the_native_connection_registers_and_receives_fan_out_in_order(app: App) -> None:
    async with (
        serve(app.handler) as url,
        client(f"{url}?id=alice") as alice,
        client(f"{url}?id=bob") as bob,
    ):
        await app.wait_for("bob", C)
        await app.wait_for("alice", C)
        for i in range(50):
            await alice.send(f"m{i}")
        expected = [f"alice: m{i}" for i in range(50)]
        with anyio.fail_after(5):
            got_alice = [await alice.recv() for _ in range(50)]
            got_bob = [await bob.recv() for _ in range(50)]
        assert got_alice == expected
        assert got_bob == expected
        assert app.manager.get_group_members("room") == {"alice", "bob"}


async def test_a_clean_close_ends_disconnected(app: App) -> None:
    async with serve(app.handler) as url:
        async with client(f"{url}?id=alice"):
            await app.wait_for("alice", C)
        reason = await app.wait_for("alice", D)
        assert reason is not None
        assert "1000" in reason
        assert (C, E) not in [(old, new) for _, old, new, _ in app.changes]
        with anyio.fail_after(5):
            while app.manager.count():
                await anyio.sleep(0.01)


async def test_a_dropped_tcp_connection_is_an_abnormal_close(app: App) -> None:
    async with serve(app.handler) as url:
        stream = await raw_upgrade(f"{url}?id=alice")
        await app.wait_for("alice", C)
        await stream.aclose()  # no closing frame
        reason = await app.wait_for("alice", E)
        assert reason == "abnormal close (1006)"
        await app.wait_for("alice", D)  # no retry policy: it gives up


async def test_an_oversize_inbound_message_is_closed_with_1009(app: App) -> None:
    async with serve(app.handler, max_message_size=1024) as url:
        async with client(f"{url}?id=alice") as alice:
            await app.wait_for("alice", C)
            await alice.send("x" * 4096)
            with anyio.fail_after(5):
                await alice.wait_closed()
            assert alice.close_code == 1009
        assert await app.wait_for("alice", E) == "abnormal close (1009)"


async def test_a_message_moves_an_idle_connection_back_to_connected() -> None:
    policy = HeartbeatPolicy(ping_interval=None, ping_timeout=None, idle_after=0.2)
    async with ConnectionManager(heartbeat=policy) as manager:
        app = App(manager)
        async with serve(app.handler) as url, client(f"{url}?id=alice") as alice:
            await app.wait_for("alice", I)
            await alice.send("hello")
            assert await alice.recv() == "alice: hello"
            assert manager.get_connection_state(manager.sockets_of("alice")[0]) is C
            assert ("alice", I, C, "activity") in app.changes


async def test_pings_are_answered_and_a_silent_peer_times_out() -> None:
    policy = HeartbeatPolicy(ping_interval=0.1, ping_timeout=0.2, idle_after=None)
    async with ConnectionManager(heartbeat=policy) as manager:
        app = App(manager)
        async with serve(app.handler) as url, client(f"{url}?id=alive"):
            silent = await raw_upgrade(f"{url}?id=silent")
            started = anyio.current_time()
            assert await app.wait_for("silent", E) == "heartbeat timeout"
            waited = anyio.current_time() - started
            assert waited >= 0.1 + 0.2 - 0.05  # ping_interval + ping_timeout, not before
            await anyio.sleep(0.3)  # several more rounds for the healthy client
            stats = manager.stats()
            assert stats.pings_sent >= 4
            assert stats.heartbeat_timeouts == 1
            assert manager.get_connection_state(manager.sockets_of("alive")[0]) is C
            await silent.aclose()


async def test_a_client_that_stops_reading_is_evicted_and_the_others_get_everything() -> None:
    overflow = OverflowPolicy(max_messages=64, max_bytes=4 * 1024 * 1024, action="disconnect")
    async with ConnectionManager(overflow=overflow) as manager:
        app = App(manager)
        async with serve(app.handler) as url, client(f"{url}?id=fast", max_size=None) as fast:
            stuck = await raw_upgrade(f"{url}?id=stuck")
            await app.wait_for("stuck", C)
            payload = "y" * 16384
            received = 0

            async def read_all() -> None:
                nonlocal received
                while received < 2000:
                    await fast.recv()
                    received += 1

            async with anyio.create_task_group() as tg:
                tg.start_soon(read_all)
                for _ in range(2000):
                    await manager.broadcast(payload)
                    await anyio.lowlevel.checkpoint()
            assert received == 2000
            assert await app.wait_for("stuck", E) == "slow consumer"
            assert manager.stats().drops["slow consumer"] >= 1
            await stuck.aclose()


def test_importing_the_adapter_without_websockets_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['websockets'] = None\n"
        "try:\n    import wsfleet.adapters.websockets\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert "pip install 'wsfleet[websockets]'" in out
