"""The websockets adapter's write paths, with a real websockets server and client on 127.0.0.1.

On asyncio a batch goes to the transport's buffer in one write; on trio ``send_nowait``
writes to the non-blocking socket itself and keeps what the kernel does not take
(``unsent``) for the writer task to finish. These tests fill the socket on purpose, so that
the kept part is real, and check that nothing is lost, doubled or reordered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import sniffio

from wsfleet import ConnectionManager, ConnectionState, OverflowPolicy
from wsfleet.adapters.websockets import WebsocketsTransport

from .clients import client
from .harness_websockets import serve

pytestmark = pytest.mark.anyio

C = ConnectionState.CONNECTED
MESSAGES = 400
SIZE = 64 * 1024  # 400 x 64 KiB = 25 MiB: far more than loopback's socket buffers hold
ROOMY = OverflowPolicy(max_messages=2 * MESSAGES, max_bytes=2 * MESSAGES * SIZE)


def message(i: int) -> str:
    return f"{i:05d}" + "x" * (SIZE - 5)


class Server:
    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        self.sockets: dict[str, Any] = {}
        self.registered = anyio.Event()

    async def handler(self, ws: Any, identifier: str) -> None:
        async with self.manager.session(ws, identifier) as session:
            self.sockets[identifier] = ws
            self.registered.set()
            async for _ in session:
                pass


@asynccontextmanager
async def one_reader(close_timeout: float = 1.0) -> AsyncIterator[tuple[Any, Any, Any]]:
    """A manager, a websockets server feeding it, and one connected client that reads only
    when told: (manager, the server's socket, the client)."""
    async with ConnectionManager(overflow=ROOMY, close_timeout=close_timeout) as manager:
        server = Server(manager)
        async with (
            serve(server.handler, max_message_size=2 * SIZE) as url,
            client(f"{url}?id=reader", max_size=2 * SIZE) as ws,
        ):
            await server.registered.wait()
            yield manager, server.sockets["reader"], ws


async def wait_for(predicate: Any, what: str, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.001)


async def test_a_batch_the_socket_cannot_take_at_once_arrives_whole_and_in_order() -> None:
    async with one_reader() as (manager, native, ws):
        conn = manager.connection(native)
        transport = conn.transport
        assert isinstance(transport, WebsocketsTransport)
        async with manager.batch():  # one batch of 25 MiB; the client reads nothing yet
            for i in range(MESSAGES):
                await manager.broadcast(message(i))
        await wait_for(lambda: manager.stats().queued_messages == 0, "handed over")
        if sniffio.current_async_library() == "trio":
            # Written to the socket by send_nowait as far as the kernel took it; the
            # rest is kept for the writer, which waits for the peer to read.
            assert 0 < transport.unsent < MESSAGES * (SIZE + 10)
            assert conn._out.writing
        received = []
        with anyio.fail_after(30):
            for _ in range(MESSAGES):
                received.append(await ws.recv())
        assert [m[:5] for m in received] == [f"{i:05d}" for i in range(MESSAGES)]
        assert all(m == message(i) for i, m in enumerate(received))
        await wait_for(lambda: transport.unsent == 0, "the kept part written")
        assert manager.stats().sent_messages == MESSAGES
        assert manager.stats().drops == {}
        # The socket is usable as before: the next message takes the direct path.
        await manager.broadcast("after")
        with anyio.fail_after(5):
            assert await ws.recv() == "after"
        assert conn.state is C


async def test_messages_sent_while_the_rest_is_kept_follow_it_in_order() -> None:
    async with one_reader() as (manager, _, ws):
        half = MESSAGES // 2
        async with manager.batch():
            for i in range(half):
                await manager.broadcast(message(i))
        await wait_for(lambda: manager.stats().queued_messages == 0, "handed over")
        for i in range(half, MESSAGES):  # one by one, while the socket is full
            await manager.broadcast(message(i))
        received = []
        with anyio.fail_after(30):
            for _ in range(MESSAGES):
                received.append((await ws.recv())[:5])
        assert received == [f"{i:05d}" for i in range(MESSAGES)]
        await wait_for(lambda: manager.stats().sent_messages == MESSAGES, "every message counted")


@pytest.mark.parametrize("anyio_backend", ["trio"])  # the lock is websockets.trio's
async def test_on_trio_a_write_of_websockets_own_in_progress_makes_send_nowait_wait() -> None:
    """While websockets holds its send lock, writing beside it would interleave frames."""
    async with ConnectionManager(close_timeout=1.0) as manager:
        server = Server(manager)
        async with serve(server.handler) as url, client(f"{url}?id=alice") as ws:
            await server.registered.wait()
            native = server.sockets["alice"]
            transport = manager.connection(native).transport
            assert isinstance(transport, WebsocketsTransport)
            async with native.send_lock:
                assert transport.send_nowait(["direct"]) is False
                await manager.broadcast("queued behind the lock")
                await anyio.sleep(0.05)
                assert manager.connection(native)._out.writing  # the writer waits for the lock
            with anyio.fail_after(5):
                assert await ws.recv() == "queued behind the lock"
            assert transport.send_nowait(["direct"]) is True
            with anyio.fail_after(5):
                assert await ws.recv() == "direct"


@pytest.mark.parametrize("anyio_backend", ["trio"])  # asyncio's transport keeps whole frames
async def test_on_trio_closing_a_peer_holding_half_a_frame_resets_it_at_once() -> None:
    """A close frame after half a frame would be read as the rest of it: reset instead."""
    from websockets.exceptions import ConnectionClosed

    close_timeout = 2.0
    async with one_reader(close_timeout) as (manager, native, ws):
        transport = manager.connection(native).transport
        async with manager.batch():
            for i in range(MESSAGES):
                await manager.broadcast(message(i))
        await wait_for(lambda: transport.unsent > 0, "part of the batch kept")
        started = anyio.current_time()
        await manager.close(native, 1008, "slow consumer")
        took = anyio.current_time() - started
        assert took < close_timeout / 4  # no closing handshake waited for
        received: list[str] = []

        async def read_until_closed() -> None:
            while True:
                received.append(await ws.recv())

        with anyio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
            await read_until_closed()
        # Whole messages, in order, up to where the connection was cut; then 1006.
        assert 0 < len(received) < MESSAGES
        assert received == [message(i) for i in range(len(received))]
        assert closed.value.rcvd is None  # no close frame: the connection was reset


async def test_a_compressed_and_a_plain_connection_both_get_every_message_intact() -> None:
    """Frames are shared between connections without compression; one with
    permessage-deflate has its messages encoded by its own protocol."""
    async with ConnectionManager() as manager:
        server = Server(manager)
        async with (
            serve(server.handler, compression="deflate") as url,
            client(f"{url}?id=plain") as plain,
            client(f"{url}?id=deflate", compression="deflate") as deflated,
        ):
            await wait_for(lambda: len(server.sockets) == 2, "both registered")
            assert deflated.protocol.extensions  # permessage-deflate was negotiated
            assert not plain.protocol.extensions
            texts = ["a" * 1000, "b" * 1000, "héllo"]
            for text in texts:
                await manager.broadcast(text)
            await manager.broadcast(b"\x00\x01" * 500)
            with anyio.fail_after(5):
                for ws in (plain, deflated):
                    assert [await ws.recv() for _ in texts] == texts
                    assert await ws.recv() == b"\x00\x01" * 500
