"""The ASGI adapter: a Starlette app served by hypercorn on 127.0.0.1, real clients, both loops."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from starlette.websockets import WebSocket

from support import C, E
from wsfleet import (
    ConnectionManager,
    HeartbeatPolicy,
    InvalidArgument,
    OverflowPolicy,
)
from wsfleet.adapters.asgi import StarletteTransport

from .app import App
from .clients import client, raw_upgrade
from .harness_asgi import serve

pytestmark = pytest.mark.anyio

NO_PINGS = HeartbeatPolicy(ping_interval=None, ping_timeout=None, idle_after=None)


@pytest.fixture
async def app() -> AsyncIterator[App]:
    async with ConnectionManager(heartbeat=NO_PINGS) as manager:
        yield App(manager)


async def test_the_native_websocket_registers_and_is_written_to() -> None:
    seen: list[object] = []

    async with ConnectionManager() as manager:

        async def handler(ws: WebSocket, identifier: str) -> None:
            conn = manager.register(ws, identifier)
            seen.append(conn.transport)
            await manager.send_to_one(identifier, "hello")
            await manager.send_to_one(identifier, b"\x00\x01")
            with anyio.fail_after(5):
                assert await ws.receive_text() == "bye"
            manager.unregister(ws)
            await ws.close()

        async with serve(handler) as url, client(f"{url}?id=alice") as alice:
            with anyio.fail_after(5):
                assert await alice.recv() == "hello"
                assert await alice.recv() == b"\x00\x01"
            await alice.send("bye")
            with anyio.fail_after(5):
                await alice.wait_closed()
    assert len(seen) == 1
    assert isinstance(seen[0], StarletteTransport)


async def test_hypercorn_as_released_reports_a_clean_close_as_1006(app: App) -> None:
    """pgjones/hypercorn#127: the adapter can only pass on the code the server reports."""
    async with serve(app.handler, spec_close_codes=False) as url:
        async with client(f"{url}?id=alice"):
            await app.wait_for("alice", C)
        assert await app.wait_for("alice", E) == "abnormal close (1006)"


async def read_close_code(stream: anyio.abc.SocketStream) -> int:
    """Read server frames (unmasked) until the close frame; its status code."""
    buf = bytearray()

    async def need(n: int) -> None:
        while len(buf) < n:
            buf.extend(await stream.receive(1 << 20))

    while True:
        await need(2)
        opcode, length, head = buf[0] & 0x0F, buf[1] & 0x7F, 2
        if length == 126:
            await need(4)
            length, head = int.from_bytes(buf[2:4], "big"), 4
        elif length == 127:
            await need(10)
            length, head = int.from_bytes(buf[2:10], "big"), 10
        await need(head + length)
        payload = bytes(buf[head : head + length])
        del buf[: head + length]
        if opcode == 0x8:
            return int.from_bytes(payload[:2], "big")


async def test_a_client_that_stops_reading_is_evicted_with_1008_and_the_others_get_all() -> None:
    overflow = OverflowPolicy(max_messages=64, max_bytes=4 * 1024 * 1024, action="disconnect")
    async with ConnectionManager(heartbeat=NO_PINGS, overflow=overflow) as manager:
        app = App(manager)
        async with serve(app.handler) as url, client(f"{url}?id=fast", max_size=None) as fast:
            stuck = await raw_upgrade(f"{url}?id=stuck")
            await app.wait_for("stuck", C)
            payload = "y" * 16384
            count = 2000
            received = 0

            async def read_all() -> None:
                nonlocal received
                while received < count:
                    assert await fast.recv() == payload
                    received += 1

            fast_conn = manager.connection(manager.sockets_of("fast")[0])
            with anyio.fail_after(15):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(read_all)
                    for _ in range(count):
                        await manager.broadcast(payload)
                        await anyio.lowlevel.checkpoint()
                        while fast_conn.queued > 32:  # pace the producer on the healthy peer
                            await anyio.sleep(0.001)
            assert received == count
            assert await app.wait_for("stuck", E) == "slow consumer"
            assert manager.stats().drops["slow consumer"] >= 1
            # Once the stalled peer reads again, the eviction's close frame reaches it.
            with anyio.fail_after(5):
                assert await read_close_code(stuck) == 1008
            await stuck.aclose()
            await app.wait_ended("stuck")


class Background:
    """A manager run in a task of its own, so a test can leave it while clients stay."""

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        self.leave = anyio.Event()
        self.left = anyio.Event()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with self.manager:
            task_status.started()
            await self.leave.wait()
        self.left.set()


async def test_leaving_the_manager_closes_with_1001_and_ends_the_handler() -> None:
    background = Background(ConnectionManager(heartbeat=NO_PINGS))
    app = App(background.manager)
    async with serve(app.handler) as url, anyio.create_task_group() as tg:
        await tg.start(background.run)
        async with client(f"{url}?id=alice") as alice:
            await app.wait_for("alice", C)
            background.leave.set()
            with anyio.fail_after(5):
                await alice.wait_closed()
            assert alice.close_code == 1001
            assert await app.wait_ended("alice") == 1001


async def test_a_peer_that_stopped_reading_holds_up_neither_the_handler_nor_the_exit() -> None:
    """The close cannot reach a stalled peer; the handler ends anyway and the server drops it."""
    overflow = OverflowPolicy(max_messages=4096, max_bytes=64 * 1024 * 1024)
    manager = ConnectionManager(
        heartbeat=NO_PINGS, overflow=overflow, shutdown_timeout=0.5, close_timeout=0.3
    )
    background = Background(manager)
    app = App(manager)
    async with serve(app.handler) as url, anyio.create_task_group() as tg:
        await tg.start(background.run)
        stuck = await raw_upgrade(f"{url}?id=stuck")

        async def unstick() -> None:  # a regression fails the test rather than hanging it
            await anyio.sleep(4)
            await stuck.aclose()

        tg.start_soon(unstick)
        await app.wait_for("stuck", C)
        with anyio.fail_after(3):
            while manager.stats().queued_messages < 100:  # its writer is blocked for good
                await manager.broadcast("z" * 16384)
                await anyio.sleep(0.001)
        started = anyio.current_time()
        background.leave.set()
        with anyio.fail_after(5):
            await background.left.wait()
        assert anyio.current_time() - started < 0.5 + 0.3 + 1.0
        assert await app.wait_ended("stuck") == 1001
        await stuck.aclose()
        tg.cancel_scope.cancel()


async def test_a_manager_that_pings_is_refused_at_registration() -> None:
    errors: list[BaseException] = []
    async with ConnectionManager(heartbeat=HeartbeatPolicy()) as manager:

        async def handler(ws: WebSocket, identifier: str) -> None:
            try:
                manager.register(ws, identifier)
            except InvalidArgument as exc:
                errors.append(exc)
            await ws.close(1011)

        async with serve(handler) as url, client(f"{url}?id=alice") as alice:
            with anyio.fail_after(5):
                await alice.wait_closed()
        assert manager.count() == 0
    assert len(errors) == 1
    assert "ping_interval=None" in str(errors[0])


async def test_a_websocket_that_is_not_accepted_is_refused() -> None:
    async def receive() -> dict[str, Any]:
        raise AssertionError("the adapter must not receive (accept) on its own")

    async def send(message: Any) -> None:
        raise AssertionError("the adapter must not send (accept) on its own")

    ws = WebSocket({"type": "websocket", "path": "/ws", "headers": []}, receive, send)
    async with ConnectionManager() as manager:
        with pytest.raises(InvalidArgument, match="accept"):
            manager.register(ws, "alice")
        assert manager.count() == 0
