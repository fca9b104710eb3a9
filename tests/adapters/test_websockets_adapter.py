"""The websockets adapter's write paths, with a real websockets server and client on 127.0.0.1.

On asyncio a batch goes to the transport's buffer in one write; on trio ``send_nowait``
writes to the non-blocking socket itself and keeps what the kernel does not take
(``unsent``) for the writer task to finish. These tests fill the socket on purpose, so that
the kept part is real, and check that nothing is lost, doubled or reordered; and that a
burst is held once for all its recipients (shared frames, views of them for what is kept),
not once per connection.
"""

from __future__ import annotations

import socket
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import sniffio
from anyio.lowlevel import checkpoint

from support import C, wait_until
from wsfleet import ConnectionManager, OverflowPolicy
from wsfleet.adapters import websockets as adapter
from wsfleet.adapters.websockets import WebsocketsTransport

from .clients import client, raw_upgrade
from .harness_websockets import serve

pytestmark = pytest.mark.anyio

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


async def test_a_batch_the_socket_cannot_take_at_once_arrives_whole_and_in_order() -> None:
    async with one_reader() as (manager, native, ws):
        conn = manager.connection(native)
        transport = conn.transport
        assert isinstance(transport, WebsocketsTransport)
        async with manager.batch():  # one batch of 25 MiB; the client reads nothing yet
            for i in range(MESSAGES):
                await manager.broadcast(message(i))
        await wait_until(lambda: manager.stats().queued_messages == 0, "handed over")
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
        await wait_until(lambda: transport.unsent == 0, "the kept part written")
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
        await wait_until(lambda: manager.stats().queued_messages == 0, "handed over")
        for i in range(half, MESSAGES):  # one by one, while the socket is full
            await manager.broadcast(message(i))
        received = []
        with anyio.fail_after(30):
            for _ in range(MESSAGES):
                received.append((await ws.recv())[:5])
        assert received == [f"{i:05d}" for i in range(MESSAGES)]
        await wait_until(lambda: manager.stats().sent_messages == MESSAGES, "every message counted")


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
async def test_on_trio_a_pong_websockets_sends_while_half_a_frame_is_kept_goes_after_it() -> None:
    """websockets answers a ping by itself, under its send lock, which is free between the
    partial write of ``send_nowait`` and the writer that finishes it: the pong must not
    land inside the frame the peer is halfway through."""
    async with one_reader() as (manager, native, ws):
        transport = transport_of(manager, native)
        texts = [message(i) for i in range(MESSAGES)]
        assert transport.send_nowait(texts)  # straight to the transport: no writer follows
        assert transport._unsent is not None
        assert transport._unsent.torn  # the socket took part of a frame
        pong = await ws.ping()  # the client stops reading once its queue is full
        await wait_until(native.send_lock.locked, "websockets writing its pong")
        with anyio.fail_after(20):
            received = [await ws.recv() for _ in texts]
            await pong.wait()  # the pong came, after every message
        assert received == texts
        assert transport.unsent == 0


@pytest.mark.parametrize("anyio_backend", ["trio"])  # asyncio's transport keeps whole frames
async def test_on_trio_a_socket_registered_again_first_gets_what_was_kept_for_it() -> None:
    """What the socket has not taken belongs to the socket, not to one registration: a
    connection unregistered with half a frame kept, then registered again, is finished
    first, and the new registration's messages follow it."""
    registered: dict[str, Any] = {}
    texts = [message(i) for i in range(MESSAGES)]

    async def handler(ws: Any, identifier: str) -> None:
        registered[identifier] = ws
        await ws.wait_closed()

    async with (
        ConnectionManager(overflow=ROOMY, close_timeout=1.0) as manager,
        serve(handler, max_message_size=2 * SIZE) as url,
        client(f"{url}?id=reader", max_size=2 * SIZE) as ws,
    ):
        await wait_until(lambda: "reader" in registered, "connected")
        native = registered["reader"]
        first = manager.register(native, "first")
        async with manager.batch():
            for text in texts:
                await manager.broadcast(text)
        await wait_until(lambda: first.transport.unsent > 0, "part of the batch kept")
        assert manager.unregister(native)
        again = manager.register(native, "again")
        assert again.transport is not first.transport
        assert again.transport.unsent > 0  # it knows what is still to go
        await manager.broadcast("after")
        with anyio.fail_after(30):
            received = [await ws.recv() for _ in range(MESSAGES + 1)]
        assert received == [*texts, "after"]


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
        await wait_until(lambda: transport.unsent > 0, "part of the batch kept")
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
            await wait_until(lambda: len(server.sockets) == 2, "both registered")
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


def transport_of(manager: ConnectionManager, native: Any) -> WebsocketsTransport:
    transport = manager.connection(native).transport
    assert isinstance(transport, WebsocketsTransport)
    return transport


async def test_a_batch_of_more_than_64_messages_shares_its_frames_between_connections() -> None:
    """Each frame of a burst is encoded once for the whole fan-out, whatever its length
    (a cache of 64 frames was emptied by a 65th message and re-encoded every frame for
    every connection), and a batch is handed to the socket as those shared frames, never
    joined into one buffer per connection."""
    burst = [f"{i:04d}" + "x" * 4092 for i in range(200)]
    policy = OverflowPolicy(max_messages=2 * len(burst), max_bytes=4 * 1024 * 1024)
    async with ConnectionManager(overflow=policy) as manager:
        server = Server(manager)
        async with (
            serve(server.handler) as url,
            client(f"{url}?id=a") as a,
            client(f"{url}?id=b") as b,
        ):
            await wait_until(lambda: len(server.sockets) == 2, "both registered")
            ta, tb = (transport_of(manager, server.sockets[name]) for name in "ab")
            frames_a, frames_b = ta._frames(burst), tb._frames(burst)
            assert len(frames_a) == len(frames_b) == len(burst)
            assert all(fa is fb for fa, fb in zip(frames_a, frames_b, strict=True))
            async with manager.batch():
                for text in burst:
                    await manager.broadcast(text)
            with anyio.fail_after(10):
                for ws in (a, b):
                    assert [await ws.recv() for _ in burst] == burst


@pytest.mark.parametrize("anyio_backend", ["trio"])  # the option trio sets
@pytest.mark.skipif(not hasattr(socket, "TCP_NOTSENT_LOWAT"), reason="no TCP_NOTSENT_LOWAT")
async def test_on_trio_a_burst_the_kernel_can_buffer_goes_out_without_a_writer() -> None:
    """trio bounds what a socket buffers unsent to 16 KiB (``TCP_NOTSENT_LOWAT``), which
    cut a burst of large messages short on every connection and gave each a writer task;
    the adapter lifts the bound, so the kernel takes what its send buffer holds."""
    burst = [message(i) for i in range(16)]  # 1 MiB in one batch
    async with one_reader() as (manager, native, ws):
        stream = native.stream
        assert stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == 0
        conn = manager.connection(native)
        transport = transport_of(manager, native)
        async with manager.batch():
            for text in burst:
                await manager.broadcast(text)
        await wait_until(lambda: manager.stats().queued_messages == 0, "handed over")
        assert transport.unsent == 0
        assert not conn._out.writing  # written by send_nowait: no task was started for it
        with anyio.fail_after(10):
            assert [await ws.recv() for _ in burst] == burst


@pytest.mark.parametrize("anyio_backend", ["trio"])  # asyncio's transport buffers for itself
async def test_on_trio_peers_that_do_not_read_keep_views_of_one_copy_of_a_burst() -> None:
    """What the sockets do not take is kept as views of the shared frames: a burst held
    back by many peers costs its own size once, not once per peer; and what is kept goes
    when the connection does."""
    peers = 8
    burst = [message(i) for i in range(128)]  # 8 MiB: twice what a socket takes
    size = sum(len(text) for text in burst)
    policy = OverflowPolicy(max_messages=2 * len(burst), max_bytes=2 * size)
    async with ConnectionManager(overflow=policy, close_timeout=1.0) as manager:
        server = Server(manager)
        async with serve(server.handler, max_message_size=2 * SIZE) as url:
            streams = [await raw_upgrade(f"{url}?id=p{i}") for i in range(peers)]
            await wait_until(lambda: len(server.sockets) == peers, "every peer registered")
            transports = [transport_of(manager, ws) for ws in server.sockets.values()]
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                async with manager.batch():
                    for text in burst:
                        await manager.broadcast(text)
                await wait_until(lambda: manager.stats().queued_messages == 0, "handed over")
                await wait_until(lambda: all(t.unsent for t in transports), "kept for every peer")
                held = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            kept = sum(t.unsent for t in transports)
            assert kept > peers * size // 4  # most of the burst is waiting for every peer
            assert held < 2 * size  # its frames once, and views of them
            for ws in list(server.sockets.values()):
                await manager.close(ws, 1001, "going away")
            assert all(t.unsent == 0 and t._unsent and not t._unsent.buffers for t in transports)
            for stream in streams:
                await stream.aclose()


async def test_a_client_reading_slowly_gets_every_burst_whole_and_in_order() -> None:
    """Bursts keep coming while earlier ones are still kept: each batch is written after
    what is kept, through as many partial writes as the reader's pace makes; once all is
    read, the transport holds nothing."""
    bursts, per_burst = 12, 16  # 12 MiB: more than the socket buffers hold
    texts = [message(i) for i in range(bursts * per_burst)]
    policy = OverflowPolicy(max_messages=len(texts), max_bytes=2 * len(texts) * SIZE)
    async with ConnectionManager(overflow=policy) as manager:
        server = Server(manager)
        async with (
            serve(server.handler, max_message_size=2 * SIZE) as url,
            client(f"{url}?id=slow", max_size=2 * SIZE, max_queue=2) as ws,
        ):
            await server.registered.wait()
            transport = transport_of(manager, server.sockets["slow"])
            received: list[str] = []
            most_kept = 0

            async def read_slowly() -> None:
                while len(received) < len(texts):
                    received.append(await ws.recv())
                    await checkpoint()  # let the server run between two messages

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(read_slowly)
                    for b in range(bursts):
                        async with manager.batch():
                            for text in texts[b * per_burst : (b + 1) * per_burst]:
                                await manager.broadcast(text)
                        await checkpoint()
                        most_kept = max(most_kept, transport.unsent)
            assert received == texts
            if sniffio.current_async_library() == "trio":
                assert most_kept > 0  # the bursts did queue up behind a partial write
            await wait_until(lambda: transport.unsent == 0, "the kept part written")
            assert transport._unsent is None or not transport._unsent.buffers


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_on_trio_a_batch_of_more_frames_than_one_writev_takes_arrives_in_order() -> None:
    """A batch of more than ``_IOV_MAX`` frames is written in several ``writev`` calls."""
    count = 2 * adapter._IOV_MAX + 100
    texts = [f"{i:05d}" for i in range(count)]
    policy = OverflowPolicy(max_messages=count, max_bytes=1024 * 1024)
    async with ConnectionManager(overflow=policy) as manager:
        server = Server(manager)
        async with serve(server.handler) as url, client(f"{url}?id=many") as ws:
            await server.registered.wait()
            async with manager.batch():
                for text in texts:
                    await manager.broadcast(text)
            with anyio.fail_after(10):
                assert [await ws.recv() for _ in texts] == texts
            assert manager.stats().sent_messages == count


async def test_a_transport_shows_itself_even_once_its_socket_is_closed() -> None:
    """Logged as it goes (an eviction, a failed write): its repr must not raise then."""
    async with one_reader() as (manager, native, _client):
        transport = manager.connection(native).transport
        assert "127.0.0.1" in repr(transport)
        await manager.close(native, 1000, "bye")
        with anyio.fail_after(10):
            while native.state.name != "CLOSED":
                await anyio.sleep(0.01)
        assert repr(transport).startswith("<WebsocketsTransport ")
