"""The ASGI adapter's direct path: real uvicorn (websockets-sansio and wsproto) and hypercorn
(asyncio and trio) on 127.0.0.1, real clients; every server and release it does not know
takes the public path, one ASGI event per message."""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import pytest
from hypercorn.protocol.ws_stream import WSStream
from starlette.middleware import Middleware
from websockets.exceptions import ConnectionClosed

from wsfleet import ConnectionManager, ConnectionState, HeartbeatPolicy, OverflowPolicy
from wsfleet.adapters import _asgi_server
from wsfleet.adapters._asgi_frames import batch_bytes, frame
from wsfleet.adapters.asgi import StarletteTransport

from .app import App
from .clients import client, raw_upgrade
from .harness_asgi_servers import (
    DIRECT,
    HYPERCORN,
    UVICORN_LEGACY,
    UVICORN_SANSIO,
    UVICORN_WSPROTO,
    serve,
)

pytestmark = pytest.mark.anyio

C = ConnectionState.CONNECTED
NO_PINGS = HeartbeatPolicy(ping_interval=None, ping_timeout=None, idle_after=None)
ROOMY = OverflowPolicy(max_messages=100_000, max_bytes=256 * 1024 * 1024, action="disconnect")


@pytest.fixture(params=[UVICORN_SANSIO, UVICORN_WSPROTO, HYPERCORN], ids=lambda s: "-".join(s))
def server(request: pytest.FixtureRequest, anyio_backend: str) -> tuple[str, str]:
    chosen: tuple[str, str] = request.param
    if chosen[0] == "uvicorn" and anyio_backend == "trio":
        pytest.skip("uvicorn runs on asyncio")
    return chosen


@pytest.fixture
async def app() -> AsyncIterator[App]:
    async with ConnectionManager(heartbeat=NO_PINGS, overflow=ROOMY) as manager:
        yield App(manager)


def transport_of(app: App, who: str) -> StarletteTransport:
    transport = app.manager.connection(app.manager.sockets_of(who)[0]).transport
    assert isinstance(transport, StarletteTransport)
    return transport


def expected(server: tuple[str, str], backend: str) -> str:
    return DIRECT[(server, backend)]


def messages(size: int, count: int, binary: bool) -> list[str] | list[bytes]:
    texts = [f"{i:06d}".ljust(size, "x") for i in range(count)]
    if binary:
        return [t.encode() for t in texts]
    return texts


async def receive_all(ws: Any, count: int) -> list[Any]:
    got = []
    with anyio.fail_after(20):
        for _ in range(count):
            got.append(await ws.recv())
    return got


# -- delivery ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 4096])
@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize("mode", ["single", "burst", "batch"])
async def test_messages_arrive_in_order_through_the_direct_path(
    app: App, server: tuple[str, str], anyio_backend: str, size: int, binary: bool, mode: str
) -> None:
    sent = messages(size, 100, binary)
    async with serve(server, app.handler) as url, client(f"{url}?id=a", max_size=None) as ws:
        await app.wait_for("a", C)
        assert transport_of(app, "a").direct == expected(server, anyio_backend)
        manager = app.manager
        if mode == "batch":
            async with manager.batch():
                for message in sent:
                    await manager.broadcast(message)
            got = await receive_all(ws, len(sent))
        elif mode == "burst":
            for message in sent:
                await manager.broadcast(message)
            got = await receive_all(ws, len(sent))
        else:
            got = []
            for message in sent:
                await manager.broadcast(message)
                got.extend(await receive_all(ws, 1))
        assert got == sent
        assert manager.stats().sent_messages >= len(sent)


async def test_with_compression_negotiated_each_connection_encodes_its_own(
    app: App, server: tuple[str, str], anyio_backend: str
) -> None:
    sent = messages(4096, 50, False) + messages(64, 50, True)
    async with (
        serve(server, app.handler, compression=True) as url,
        client(f"{url}?id=a", compression="deflate", max_size=None) as a,
        client(f"{url}?id=b", compression="deflate", max_size=None) as b,
    ):
        await app.wait_for("a", C)
        await app.wait_for("b", C)
        assert a.protocol.extensions, "the server did not negotiate permessage-deflate"
        assert transport_of(app, "a").direct == expected(server, anyio_backend)
        async with app.manager.batch():
            for message in sent[:50]:
                await app.manager.broadcast(message)
        for message in sent[50:]:
            await app.manager.broadcast(message)
        assert await receive_all(a, len(sent)) == sent
        assert await receive_all(b, len(sent)) == sent


# -- the server's flow control ----------------------------------------------------------------


def server_paused(transport: StarletteTransport) -> bool:
    """Whether the server's own send would wait now (its flow control holds the writer)."""
    conn: Any = transport._conn
    if hasattr(conn, "writable"):  # uvicorn
        return not conn.writable.is_set()
    tcp = conn.send.__self__.send.__self__
    writer = getattr(tcp, "writer", None)
    if writer is None:  # hypercorn on trio: a send_all waits in the kernel's buffers
        return bool(tcp.send_lock.locked())
    limits = writer.transport.get_write_buffer_limits()
    return bool(writer.transport.get_write_buffer_size() > limits[1])


def server_buffered(transport: StarletteTransport) -> tuple[int, int] | None:
    """The bytes in the server's asyncio transport and its high-water mark (``None`` on
    trio, where hypercorn's writes wait in ``send_all`` and buffer nothing of their own)."""
    conn: Any = transport._conn
    if hasattr(conn, "writable"):  # uvicorn
        asyncio_transport = conn.transport
    else:
        writer = getattr(conn.send.__self__.send.__self__, "writer", None)
        if writer is None:
            return None
        asyncio_transport = writer.transport
    size: int = asyncio_transport.get_write_buffer_size()
    return size, asyncio_transport.get_write_buffer_limits()[1]


async def test_a_client_that_does_not_read_holds_the_writer_until_it_reads(
    app: App, server: tuple[str, str]
) -> None:
    payload = "z" * 65536
    frame_size = len(frame(payload))
    count = 200  # 13 MB: more than the kernel's buffers and the server's high-water mark
    async with serve(server, app.handler) as url:
        stalled = await raw_upgrade(f"{url}?id=slow")
        await app.wait_for("slow", C)
        transport = transport_of(app, "slow")
        conn = app.manager.connection(app.manager.sockets_of("slow")[0])
        for i in range(count):
            await app.manager.broadcast(f"{i:06d}" + payload[6:])
            for _ in range(3):  # one message per batch: the flusher writes it before the next
                await anyio.lowlevel.checkpoint()
        # The server's flow control holds the rest: messages wait in wsfleet's queue, and
        # the server's buffer holds no more than its own send would have put there.
        with anyio.fail_after(10):
            while not (server_paused(transport) and conn.queued):
                await anyio.sleep(0.01)
        buffered = server_buffered(transport)
        if buffered is not None:
            size, high = buffered
            assert size <= high + 2 * frame_size
        # A large batch on top waits behind them, whole.
        async with app.manager.batch():
            for i in range(count, count + 50):
                await app.manager.broadcast(f"{i:06d}" + payload[6:])
        total = count + 50
        assert app.state_of("slow") is C
        # Once the client reads, the writer resumes and everything arrives, in order.
        data = b""
        with anyio.fail_after(30):
            while len(data) < total * frame_size:
                data += await stalled.receive(1 << 20)
        frames = [data[i * frame_size : (i + 1) * frame_size] for i in range(total)]
        assert frames == [frame(f"{i:06d}" + payload[6:]) for i in range(total)]
        await stalled.aclose()


# -- keepalive, closes, receive ---------------------------------------------------------------


async def test_uvicorn_keepalive_pings_go_on_during_direct_writes(
    app: App, anyio_backend: str
) -> None:
    if anyio_backend == "trio":
        pytest.skip("uvicorn runs on asyncio")
    async with (
        serve(UVICORN_SANSIO, app.handler, keepalive=(0.05, 10)) as url,
        client(f"{url}?id=a") as ws,
    ):
        await app.wait_for("a", C)
        transport = transport_of(app, "a")
        assert transport.direct == "uvicorn-websockets-sansio"
        protocol: Any = transport._conn
        sent = 0
        with anyio.fail_after(10):
            # The client answers pings as it reads; a pong that came back sets the RTT.
            while protocol.last_ping_rtt == 0.0:
                await app.manager.broadcast(f"m{sent}")
                sent += 1
                assert await ws.recv() == f"m{sent - 1}"
                await anyio.sleep(0.005)
        assert app.state_of("a") is C


async def test_close_codes_both_ways(app: App, server: tuple[str, str]) -> None:
    async with serve(server, app.handler) as url:
        async with client(f"{url}?id=evicted") as ws:
            await app.wait_for("evicted", C)
            await app.manager.close(app.manager.sockets_of("evicted")[0], 4001, "go away")
            with anyio.fail_after(5), pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.protocol.close_rcvd.code == 4001
            assert ws.protocol.close_rcvd.reason == "go away"
        assert await app.wait_ended("evicted") == 4001
        async with client(f"{url}?id=leaver") as ws:
            await app.wait_for("leaver", C)
            closing = getattr(ws, "aclose", None) or ws.close  # websockets' trio or asyncio
            await closing(1000)
        # hypercorn reports 1006 for a close the client starts (pgjones/hypercorn#127).
        assert await app.wait_ended("leaver") == (1006 if server == HYPERCORN else 1000)


async def test_closing_a_stalled_peer_ends_its_waiting_receive(
    app: App, server: tuple[str, str]
) -> None:
    async with serve(server, app.handler) as url:
        stalled = await raw_upgrade(f"{url}?id=slow")
        await app.wait_for("slow", C)
        transport = transport_of(app, "slow")
        for i in range(200):
            await app.manager.broadcast(f"{i:06d}" + "w" * 65530)
        with anyio.fail_after(10):
            while not server_paused(transport):
                await anyio.sleep(0.01)
        await app.manager.close(app.manager.sockets_of("slow")[0], 4002, "stalled")
        assert await app.wait_ended("slow", seconds=10) == 4002
        await stalled.aclose()


async def test_a_receive_cancelled_mid_wait_leaves_the_next_one_intact(
    server: tuple[str, str],
) -> None:
    got: list[Any] = []
    cancelled = anyio.Event()
    done = anyio.Event()

    async with ConnectionManager(heartbeat=NO_PINGS) as manager:

        async def handler(ws: Any, identifier: str) -> None:
            transport = manager.register(ws, identifier).transport
            with anyio.CancelScope() as scope:
                scope.deadline = anyio.current_time() + 0.05
                await transport.receive()
            if scope.cancelled_caught:
                cancelled.set()
                got.append(await transport.receive())
                got.append(await transport.receive())
            manager.unregister(ws)
            await ws.close()
            done.set()

        async with serve(server, handler) as url, client(f"{url}?id=a") as ws:
            with anyio.fail_after(5):
                await cancelled.wait()
            await ws.send("one")
            await ws.send(b"two")
            with anyio.fail_after(5):
                await done.wait()
    assert got == ["one", b"two"]


# -- what falls back --------------------------------------------------------------------------


class _Recorder:
    """A pure ASGI middleware that wraps ``send`` and records every event sent."""

    seen: ClassVar[list[Any]] = []

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def recording(event: Any) -> None:
            if event["type"] == "websocket.send":
                _Recorder.seen.append(event.get("text") or event.get("bytes"))
            await send(event)

        await self.app(scope, receive, recording)


class _StreamSubclass(WSStream):
    pass


async def check_fallback(app: App, url: str, caplog: pytest.LogCaptureFixture) -> None:
    async with client(f"{url}?id=a") as ws:
        await app.wait_for("a", C)
        assert transport_of(app, "a").direct is None
        sent = messages(64, 20, False)
        async with app.manager.batch():
            for message in sent:
                await app.manager.broadcast(message)
        assert await receive_all(ws, len(sent)) == sent
    assert any("one ASGI event per message" in r.getMessage() for r in caplog.records)


@pytest.fixture
def fresh_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The fall-back reasons are logged once per process: forget them for the test."""
    saved = set(_asgi_server._logged)
    _asgi_server._logged.clear()
    caplog.set_level(logging.INFO, logger="wsfleet")
    yield caplog
    _asgi_server._logged.update(saved)


async def test_a_middleware_that_wraps_send_sees_every_message(
    app: App, server: tuple[str, str], fresh_log: pytest.LogCaptureFixture
) -> None:
    _Recorder.seen = []
    async with serve(server, app.handler, middleware=[Middleware(_Recorder)]) as url:
        await check_fallback(app, url, fresh_log)
    assert _Recorder.seen == messages(64, 20, False)


# uvicorn's legacy protocol, deprecated by uvicorn, is built on websockets.legacy, deprecated
# since websockets 14: still served, so the adapter must still work with it.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::uvicorn.config.UvicornDeprecationWarning")
async def test_uvicorn_legacy_websockets_protocol_falls_back(
    app: App, anyio_backend: str, fresh_log: pytest.LogCaptureFixture
) -> None:
    if anyio_backend == "trio":
        pytest.skip("uvicorn runs on asyncio")
    async with serve(UVICORN_LEGACY, app.handler) as url:
        await check_fallback(app, url, fresh_log)


async def test_a_hypercorn_stream_subclass_falls_back(
    app: App, fresh_log: pytest.LogCaptureFixture
) -> None:
    async with serve(HYPERCORN, app.handler, stream_class=_StreamSubclass) as url:
        await check_fallback(app, url, fresh_log)


async def test_an_untested_release_falls_back(
    app: App,
    server: tuple[str, str],
    anyio_backend: str,
    fresh_log: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = expected(server, anyio_backend)
    dist = server[0]
    tested = dict(_asgi_server.TESTED)
    tested[name] = {**tested[name], dist: "0.0.1"}
    monkeypatch.setattr(_asgi_server, "TESTED", tested)
    monkeypatch.setattr(_asgi_server, "_release_checked", {})
    async with serve(server, app.handler) as url:
        await check_fallback(app, url, fresh_log)
    assert any("0.0.1" in r.getMessage() for r in fresh_log.records)


async def test_an_attribute_of_an_unexpected_type_falls_back(
    server: tuple[str, str], fresh_log: pytest.LogCaptureFixture
) -> None:
    seen: list[StarletteTransport] = []

    async with ConnectionManager(heartbeat=NO_PINGS) as manager:

        async def handler(ws: Any, identifier: str) -> None:
            owner: Any = _asgi_server.server_send(ws._send).__self__
            name = "writable" if server[0] == "uvicorn" else "closed"
            saved = getattr(owner, name)
            setattr(owner, name, object())
            try:
                conn = manager.register(ws, identifier)
            finally:
                setattr(owner, name, saved)
            transport = conn.transport
            assert isinstance(transport, StarletteTransport)
            seen.append(transport)
            await manager.send_to_one(identifier, "still delivered")
            with anyio.fail_after(5):
                assert await transport.receive() == "bye"
            manager.unregister(ws)
            await ws.close()

        async with serve(server, handler) as url, client(f"{url}?id=a") as ws:
            with anyio.fail_after(5):
                assert await ws.recv() == "still delivered"
            await ws.send("bye")
    assert seen[0].direct is None
    assert any("not the" in r.getMessage() for r in fresh_log.records)


# -- pins -------------------------------------------------------------------------------------


def _digest(obj: Any) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def _relied_on() -> dict[str, Any]:
    import asyncio

    from hypercorn.asyncio.tcp_server import TCPServer
    from hypercorn.protocol.h11 import H11Protocol
    from hypercorn.trio.tcp_server import TCPServer as TrioTCPServer
    from starlette._exception_handler import wrap_app_handling_exceptions
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from uvicorn.protocols.websockets.wsproto_impl import WSProtocol

    return {
        "starlette wrap_app_handling_exceptions": wrap_app_handling_exceptions,
        "uvicorn sansio send": WebSocketsSansIOProtocol.send,
        "uvicorn sansio receive": WebSocketsSansIOProtocol.receive,
        "uvicorn sansio connection_lost": WebSocketsSansIOProtocol.connection_lost,
        "uvicorn wsproto send": WSProtocol.send,
        "uvicorn wsproto receive": WSProtocol.receive,
        "uvicorn wsproto connection_lost": WSProtocol.connection_lost,
        "hypercorn WSStream.app_send": WSStream.app_send,
        "hypercorn WSStream._send_wsproto_event": WSStream._send_wsproto_event,
        "hypercorn H11Protocol.stream_send": H11Protocol.stream_send,
        "hypercorn asyncio TCPServer.protocol_send": TCPServer.protocol_send,
        "hypercorn trio TCPServer.protocol_send": TrioTCPServer.protocol_send,
        "asyncio Queue.get": asyncio.Queue.get,
        "asyncio Queue.put_nowait": asyncio.Queue.put_nowait,
        "asyncio Queue._wakeup_next": asyncio.Queue._wakeup_next,  # type: ignore[attr-defined]
    }


#: The source the direct path was written against, by function (sha256, 16 hex digits).
#: A change means a new release: read it, then update ``TESTED`` and these.
PINNED: dict[str, str] = {
    "starlette wrap_app_handling_exceptions": "d5e41f0fa794c0a8",
    "uvicorn sansio send": "3b8afeb81b9b9ae8",
    "uvicorn sansio receive": "1dc0e715390021a1",
    "uvicorn sansio connection_lost": "d0f4179c028b3303",
    "uvicorn wsproto send": "f7f6ddb90bd1c325",
    "uvicorn wsproto receive": "a8e16ad8ca454266",
    "uvicorn wsproto connection_lost": "9a74b40570812bfe",
    "hypercorn WSStream.app_send": "a6dd1160bfc416e7",
    "hypercorn WSStream._send_wsproto_event": "3a4df3f0d2dfd314",
    "hypercorn H11Protocol.stream_send": "56a36254a368d71a",
    "hypercorn asyncio TCPServer.protocol_send": "06144915fc094c1b",
    "hypercorn trio TCPServer.protocol_send": "225856426bff7be0",
    "asyncio Queue.get": "35cbd848cd945f22",
    "asyncio Queue.put_nowait": "1ab7a1443ec2bc08",
    "asyncio Queue._wakeup_next": "b53f54f91a2d9393",
}


def test_the_server_functions_relied_on_are_the_ones_read() -> None:
    digests = {name: _digest(obj) for name, obj in _relied_on().items()}
    assert digests == PINNED


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_frames_are_the_bytes_websockets_and_wsproto_write(size: int) -> None:
    from websockets.frames import Frame, Opcode
    from wsproto.frame_protocol import FrameProtocol

    for message in ("é" * (size // 2) + "a" * (size % 2), b"\x00" * size):
        if isinstance(message, str):
            ours = frame(message)
            theirs = Frame(Opcode.TEXT, message.encode()).serialize(mask=False, extensions=[])
        else:
            ours = frame(message)
            theirs = Frame(Opcode.BINARY, message).serialize(mask=False, extensions=[])
        assert ours == theirs
        assert ours == bytes(FrameProtocol(client=False, extensions=[]).send_data(message))
    batch = ["a", b"b", "c" * 300]
    assert batch_bytes(batch) == b"".join(frame(m) for m in batch)
