"""The trio-websocket adapter's batch path, with a real trio-websocket server and real clients.

A batch's frames go to the socket in one write from the flusher (``send_nowait``), or in
one ``send_all`` under trio-websocket's send lock (``send``); what the kernel does not take
is kept for the writer. These tests fill the socket on purpose, so that the kept part is
real, and check that nothing is lost, doubled, reordered or interleaved with the frames
trio-websocket writes itself (pongs); that a broken stream closes the connection as
trio-websocket would; and that the public path, when the batch path is refused, delivers
the same.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

import wsfleet.adapters.trio_websocket as adapter
from support import C, wait_for
from wsfleet import PING, ConnectionManager, OverflowPolicy
from wsfleet.adapters.trio_websocket import TrioWebsocketTransport, open_client
from wsfleet.errors import TransportClosed, TransportError

from .clients import client, raw_upgrade
from .harness_trio_websocket import serve

pytestmark = pytest.mark.anyio

MESSAGES = 400
SIZE = 64 * 1024  # 400 x 64 KiB = 25 MiB: far more than loopback's socket buffers hold
ROOMY = OverflowPolicy(max_messages=2 * MESSAGES, max_bytes=2 * MESSAGES * SIZE)


@pytest.fixture
def anyio_backend() -> str:
    return "trio"  # trio-websocket runs on trio only


def message(i: int) -> str:
    return f"{i:05d}" + "x" * (SIZE - 5)


class Server:
    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        self.sockets: dict[str, WebSocketConnection] = {}
        self.registered = anyio.Event()

    async def handler(self, ws: WebSocketConnection, identifier: str) -> None:
        async with self.manager.session(ws, identifier) as session:
            self.sockets[identifier] = ws
            self.registered.set()
            async for _ in session:
                pass


@asynccontextmanager
async def one_reader(
    close_timeout: float = 1.0,
) -> AsyncIterator[tuple[ConnectionManager, WebSocketConnection, Any]]:
    """A manager, a trio-websocket server feeding it, and one connected websockets client
    that reads only when told: (manager, the server's connection, the client)."""
    async with ConnectionManager(overflow=ROOMY, close_timeout=close_timeout) as manager:
        server = Server(manager)
        async with (
            serve(server.handler, max_message_size=2 * SIZE) as url,
            client(f"{url}?id=reader", max_size=2 * SIZE) as ws,
        ):
            await server.registered.wait()
            yield manager, server.sockets["reader"], ws


@asynccontextmanager
async def bare() -> AsyncIterator[tuple[str, list[WebSocketConnection]]]:
    """A trio-websocket server whose handlers only hold their connection (no manager):
    (its URL, the connections as they come)."""
    sockets: list[WebSocketConnection] = []

    async def hold(ws: WebSocketConnection, identifier: str) -> None:
        sockets.append(ws)
        await trio.sleep_forever()

    async with serve(hold) as url:
        yield url, sockets


def transport_of(manager: ConnectionManager, ws: WebSocketConnection) -> TrioWebsocketTransport:
    transport = manager.connection(ws).transport
    assert isinstance(transport, TrioWebsocketTransport)
    return transport


async def read_until_closed(ws: Any, received: list[str]) -> None:
    while True:
        received.append(await ws.recv())


async def test_a_batch_the_socket_cannot_take_at_once_arrives_whole_and_in_order() -> None:
    async with one_reader() as (manager, native, ws):
        conn = manager.connection(native)
        transport = transport_of(manager, native)
        assert transport.batched
        async with manager.batch():  # one batch of 25 MiB; the client reads nothing yet
            for i in range(MESSAGES):
                await manager.broadcast(message(i))
        await wait_for(lambda: manager.stats().queued_messages == 0)
        # Written to the socket by send_nowait as far as the kernel took it; the rest is
        # kept for the writer, which waits for the peer to read.
        assert 0 < transport.unsent < MESSAGES * (SIZE + 10)
        assert conn._out.writing
        received = []
        with anyio.fail_after(30):
            for _ in range(MESSAGES):
                received.append(await ws.recv())
        assert [m[:5] for m in received] == [f"{i:05d}" for i in range(MESSAGES)]
        assert all(m == message(i) for i, m in enumerate(received))
        await wait_for(lambda: transport.unsent == 0)
        assert manager.stats().sent_messages == MESSAGES
        assert manager.stats().drops == {}
        # The socket is usable as before: the next message takes the direct path.
        await manager.broadcast("after")
        with anyio.fail_after(5):
            assert await ws.recv() == "after"
        assert conn.state is C


async def test_messages_sent_while_the_rest_is_kept_follow_it_in_order() -> None:
    """A client that stops reading, is sent more one message at a time, then resumes."""
    async with one_reader() as (manager, _, ws):
        half = MESSAGES // 2
        async with manager.batch():
            for i in range(half):
                await manager.broadcast(message(i))
        await wait_for(lambda: manager.stats().queued_messages == 0)
        for i in range(half, MESSAGES):  # one by one, while the socket is full
            await manager.broadcast(message(i))
        received = []
        with anyio.fail_after(30):
            for _ in range(MESSAGES):
                received.append((await ws.recv())[:5])
        assert received == [f"{i:05d}" for i in range(MESSAGES)]
        await wait_for(lambda: manager.stats().sent_messages == MESSAGES)


async def test_pings_within_a_batch_are_answered_and_reported() -> None:
    async with one_reader() as (manager, native, ws):
        conn = manager.connection(native)
        transport = transport_of(manager, native)
        seen = conn._beat.last_seen
        assert transport.send_nowait(["a", PING, b"b", PING, "c"])
        assert transport.unsent == 0
        with anyio.fail_after(5):
            assert [await ws.recv() for _ in range(3)] == ["a", b"b", "c"]
        await wait_for(lambda: not native._pings)  # both pongs came back ...
        assert conn._beat.last_seen > seen  # ... and reached the manager
        # A ping at the end of a batch that is only partly written goes out after the rest.
        assert transport.send_nowait([message(i) for i in range(MESSAGES)] + [PING])
        assert transport.unsent > 0
        assert len(native._pings) == 1
        seen = conn._beat.last_seen
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(transport.send, [])  # what the writer does: finish the kept part
                for i in range(MESSAGES):
                    assert await ws.recv() == message(i)
        await wait_for(lambda: not native._pings)
        assert conn._beat.last_seen > seen


async def test_a_pong_trio_websocket_owes_the_peer_waits_for_the_kept_part() -> None:
    """trio-websocket's reader answers a ping at once; while part of a frame is kept, the
    pong must come after it, or the peer would read it inside that frame."""
    async with one_reader() as (manager, native, ws):
        transport = transport_of(manager, native)
        # Straight to the transport: no writer task is started to finish the kept part.
        assert transport.send_nowait([message(i) for i in range(MESSAGES)])
        kept = transport.unsent
        assert kept > 0
        pong = await ws.ping(b"are you there")
        # The reader's pong takes the send lock's stand-in, which writes what is kept first.
        await wait_for(lambda: transport.unsent == 0)
        assert not pong.is_set()
        with anyio.fail_after(30):
            for i in range(MESSAGES):
                assert await ws.recv() == message(i)
            await pong.wait()
        assert native._stream_lock is transport._lock  # the stand-in is gone
        await manager.broadcast("after")
        with anyio.fail_after(5):
            assert await ws.recv() == "after"


async def test_closing_a_peer_holding_half_a_frame_resets_it_at_once() -> None:
    """A close frame after half a frame would be read as the rest of it: reset instead."""
    from websockets.exceptions import ConnectionClosed as ClientClosed

    close_timeout = 2.0
    async with one_reader(close_timeout) as (manager, native, ws):
        transport = transport_of(manager, native)
        async with manager.batch():
            for i in range(MESSAGES):
                await manager.broadcast(message(i))
        await wait_for(lambda: transport.unsent > 0)
        started = anyio.current_time()
        await manager.close(native, 1008, "slow consumer")
        assert anyio.current_time() - started < close_timeout / 4  # no closing handshake
        received: list[str] = []
        with anyio.fail_after(10), pytest.raises(ClientClosed) as closed:
            await read_until_closed(ws, received)
        # Whole messages, in order, up to where the connection was cut; then 1006.
        assert 0 < len(received) < MESSAGES
        assert received == [message(i) for i in range(len(received))]
        assert closed.value.rcvd is None  # no close frame: the connection was reset


async def test_a_write_cancelled_part_way_keeps_the_rest_and_it_goes_out_first() -> None:
    """A writer cancelled while it waits for the peer has written part of a frame: the rest
    is kept, ahead of any other frame, rather than cut."""
    async with one_reader() as (manager, native, ws):
        transport = transport_of(manager, native)
        with trio.move_on_after(0.2) as scope:  # the client reads nothing: the write waits
            await transport.send([message(i) for i in range(MESSAGES)])
        assert scope.cancelled_caught
        assert transport.unsent > 0
        assert native._stream_lock is not transport._lock  # trio-websocket's writes wait too
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(transport.send, ["after"])
                for i in range(MESSAGES):
                    assert await ws.recv() == message(i)
                assert await ws.recv() == "after"
        assert transport.unsent == 0


async def test_a_stream_broken_under_a_write_closes_the_connection_as_trio_websocket_does() -> None:
    async with bare() as (url, sockets):
        peer = await raw_upgrade(url)  # a peer that reads nothing and never closes
        await wait_for(lambda: sockets)
        ws = sockets[0]
        transport = TrioWebsocketTransport(ws)
        assert transport.batched
        ws._stream.socket.shutdown(socket.SHUT_WR)  # every write now fails (EPIPE)
        with pytest.raises(TransportError, match="write failed"):
            transport.send_nowait(["lost"])
        assert ws.closed is None  # a synchronous write cannot close it; send does:
        with pytest.raises(TransportClosed) as closed:
            await transport.send(["lost"])
        assert closed.value.code == 1006
        assert ws.closed is not None
        assert ws.closed.code == 1006
        with pytest.raises(ConnectionClosed):
            await ws.get_message()
        await peer.aclose()


async def test_a_client_connection_masks_its_frames_with_its_own_wsproto() -> None:
    received: list[str | bytes] = []

    async def collect(ws: WebSocketConnection, identifier: str) -> None:
        with suppress(ConnectionClosed):
            while True:
                received.append(await ws.get_message())

    async with serve(collect) as url, open_client(url) as transport:
        assert transport.batched
        assert not transport._shared  # client frames are masked, each with its own key
        assert transport.send_nowait(["a", PING, b"b"])
        await transport.send(["c", PING])
        await wait_for(lambda: len(received) == 3)
        assert received == ["a", b"b", "c"]
        await wait_for(lambda: not transport.ws._pings)  # the server answered both pings


async def test_the_public_path_when_refused_delivers_the_same(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(adapter, "_LIBRARY_REFUSAL", "refused for a test")
    monkeypatch.setattr(adapter, "_LOGGED", set())
    caplog.set_level(logging.INFO, logger="wsfleet")
    async with ConnectionManager(close_timeout=1.0) as manager:
        server = Server(manager)
        async with (
            serve(server.handler) as url,
            client(f"{url}?id=alice") as alice,
            client(f"{url}?id=bob") as bob,
        ):
            await wait_for(lambda: len(server.sockets) == 2)
            native = server.sockets["alice"]
            conn = manager.connection(native)
            transport = transport_of(manager, native)
            assert not transport.batched
            assert transport.send_nowait(["direct"]) is False  # every batch goes to a writer
            async with manager.batch():
                for i in range(50):
                    await manager.broadcast(f"m{i}")
            with anyio.fail_after(10):
                for peer in (alice, bob):
                    assert [await peer.recv() for _ in range(50)] == [f"m{i}" for i in range(50)]
            seen = conn._beat.last_seen
            await transport.send([PING, "after the ping"])
            with anyio.fail_after(5):
                assert await alice.recv() == "after the ping"
            await wait_for(lambda: not native._pings)
            assert conn._beat.last_seen > seen
            said = [r for r in caplog.records if "refused for a test" in r.getMessage()]
            assert len(said) == 1  # once, not once per connection
            assert said[0].levelno == logging.INFO
            # Without the two names pings use, the writer awaits ws.ping() and its pong.
            monkeypatch.setattr(adapter, "_ping_hooks", lambda ws: False)
            seen = conn._beat.last_seen
            with anyio.fail_after(5):
                await transport.send([PING, "after a public ping"])
                assert await alice.recv() == "after a public ping"
            assert conn._beat.last_seen > seen
