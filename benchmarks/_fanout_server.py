"""One fan-out server variant in a process of its own, driven over stdin by fanout_bench.py.

    python benchmarks/_fanout_server.py <variant> [--cpu <n>]

Prints ``port <port>`` once it accepts WebSocket connections at ``/ws?id=<name>`` on
127.0.0.1, then answers one line per command read from stdin:

    wait <n> <timeout>          -> ready <connections>       (at least n connections, or timeout)
    go <m> <size> <mode> <t>    -> sent <seconds> <errors>   (fan out m messages to every one)
    cpu                         -> cpu <process_time>
    memory                      -> memory <rss bytes>        (after a full garbage collection)
    stats                       -> stats <json>
    quit                        (exits at once: the driver is done with this process)

``mode`` is ``single`` (each message written to every connection before the next one),
``burst`` (every message handed over back to back, then wait until all are written),
``batch`` (wsfleet only: the burst inside ``async with manager.batch()``, so that each
connection's messages are written as one batch) or ``stream`` (the stalled-client
scenario: message after message, yielding to the event loop between two, then wait until
all are written; a wsfleet producer also waits while more than 2 MiB is queued in all; the
wsfleet variants evict a connection whose queue passes 1 MiB, the plain ones have no such
bound; each message then carries the moment it was handed over, for the clients' latency
mode; ``stream:<rate>`` paces the messages at ``rate`` per second). Library keepalives,
compression and wsfleet's heartbeat are off everywhere.

Every wsfleet variant has a plain peer on the same library and server, written the way a
user of that library fans out by hand: ``ws-broadcast`` (websockets' ``broadcast()`` on
asyncio) and ``ws-loop`` (``for ws in sockets: await ws.send(m)``) beside
``wsfleet-ws-asyncio``; ``ws-trio-loop`` (the same loop over websockets' trio connections;
``ws-trio-broadcast``, websockets' awaited trio ``broadcast()``, on request) beside
``wsfleet-ws-trio``; ``trio-ws-loop`` (``await ws.send_message(m)``) beside
``wsfleet-trio-ws``; and one FastAPI app for ASGI, under uvicorn (``fastapi-docs`` beside
``wsfleet-asgi-uvicorn``) and under hypercorn (``fastapi-docs-hypercorn`` beside
``wsfleet-asgi``): the ConnectionManager of FastAPI's WebSockets page, or the endpoint of
wsfleet's FastAPI how-to. Further peers: ``starlette-loop`` (a Starlette app on hypercorn,
awaiting ``send_text`` on each socket), ``socketio-room`` (python-socketio's ASGI server under
uvicorn, ``emit`` to one room that every client joins; its clients speak Engine.IO v4) and
``raw-floor`` (an asyncio protocol that answers the upgrade by hand and then writes one
pre-encoded frame to every transport). A diagnostic, ``wsfleet-ws-asyncio-nobp``, is
``wsfleet-ws-asyncio`` with ``backpressure=None`` (benchmarks/compare.py: what the producer's
waits cost, apart from the library's own work).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import hashlib
import json
import os
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from functools import partial
from inspect import signature
from typing import Any

import anyio
import anyio.abc
from anyio.lowlevel import checkpoint

from _harness.process import commands, count_reaches, free_port, pin, raise_nofile, rss, say
from wsfleet import ConnectionManager, OverflowPolicy

VARIANTS: dict[str, str] = {
    "ws-broadcast": "asyncio",
    "ws-loop": "asyncio",
    "wsfleet-ws-asyncio": "asyncio",
    "wsfleet-ws-asyncio-nobp": "asyncio",
    "ws-trio-loop": "trio",
    "ws-trio-broadcast": "trio",
    "wsfleet-ws-trio": "trio",
    "trio-ws-loop": "trio",
    "wsfleet-trio-ws": "trio",
    "starlette-loop": "asyncio",
    "fastapi-docs": "asyncio",
    "wsfleet-asgi-uvicorn": "asyncio",
    "fastapi-docs-hypercorn": "asyncio",
    "wsfleet-asgi": "asyncio",
    "socketio-room": "asyncio",
    "raw-floor": "asyncio",
}

#: The plain loops: ``for ws in sockets: await ws.<method>(text)``, each library's own send.
LOOP_SEND: dict[str, str] = {
    "ws-loop": "send",
    "ws-trio-loop": "send",
    "trio-ws-loop": "send_message",
    "starlette-loop": "send_text",
}

#: The stalled-client scenario's bound: a connection 1 MiB behind is evicted (close 1008).
STALL_POLICY = OverflowPolicy(max_messages=4096, max_bytes=1024 * 1024, action="disconnect")
#: In ``stream`` mode a wsfleet producer waits while more than this is queued in all. A
#: producer that never waits outruns a writer that cannot coalesce (trio-websocket, ASGI), and
#: then every client's queue passes the 1 MiB bound, healthy or not; one stalled client alone
#: (at most 1 MiB before it is evicted) never holds the producer back.
STREAM_BACKLOG = 2 * 1024 * 1024


def identifier_of(target: str) -> str:
    """``/ws?id=h12`` -> ``h12``."""
    _, _, query = target.partition("?")
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key == "id" and value:
            return value
    return "anonymous"


class Fleet:
    """What a variant's handlers hold: the native sockets, and wsfleet's connections."""

    def __init__(self, manager: ConnectionManager | None) -> None:
        self.manager = manager
        self.sockets: list[Any] = []  # native connection objects, in arrival order
        self.ids: dict[int, str] = {}  # id(socket) -> identifier
        self.conns: list[Any] = []  # wsfleet Connection objects (wsfleet variants)
        self.errors = 0  # failed sends of the plain loops
        self.native: Any = None  # the peer's own fan-out object (docs manager, sio server)

    def add(self, ws: Any, identifier: str) -> None:
        self.sockets.append(ws)
        self.ids[id(ws)] = identifier

    def remove(self, ws: Any) -> None:
        with suppress(ValueError):
            self.sockets.remove(ws)
        self.ids.pop(id(ws), None)

    async def hold(self, ws: Any, identifier: str, receive: Callable[[], Awaitable[Any]]) -> None:
        """Keep one connection for its life: through wsfleet's session, or by hand."""
        manager = self.manager
        self.add(ws, identifier)
        try:
            if manager is not None:
                async with manager.session(ws, identifier) as session:
                    self.conns.append(session.connection)
                    try:
                        async for _ in session:
                            pass
                    finally:
                        self.conns.remove(session.connection)
            else:
                while True:
                    await receive()
        finally:
            self.remove(ws)


def message(serial: int, size: int) -> str:
    head = f"{serial:08d} "
    return head + "x" * (size - len(head))


def stamped(serial: int, size: int) -> str:
    """A message that carries the moment it is handed over (``time.monotonic_ns()``, one
    clock for every process here): the clients' latency mode reads it back."""
    head = f"{serial:08d} {time.monotonic_ns():019d} "
    return head + "x" * (size - len(head))


# -- the variants' servers: each yields its port -------------------------------------------


@asynccontextmanager
async def websockets_asyncio(
    fleet: Fleet, *, ping_interval: float | None = None, ping_timeout: float | None = None
) -> AsyncIterator[int]:
    """websockets on asyncio; its own keepalive only where ``ping_interval`` asks (the idle
    benchmark's peer, with no wsfleet)."""
    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosed

    if fleet.manager is not None:
        import wsfleet.adapters.websockets  # noqa: F401  (registers the adapter)

    async def handler(ws: Any) -> None:
        with suppress(ConnectionClosed):
            await fleet.hold(ws, identifier_of(ws.request.path), ws.recv)

    async with serve(
        handler,
        "127.0.0.1",
        0,
        compression=None,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        close_timeout=1,
        backlog=2048,
    ) as server:
        yield next(iter(server.sockets)).getsockname()[1]


@asynccontextmanager
async def websockets_trio(
    fleet: Fleet, *, ping_interval: float | None = None, ping_timeout: float | None = None
) -> AsyncIterator[int]:
    """websockets on trio; its own keepalive only where ``ping_interval`` asks."""
    from websockets.exceptions import ConnectionClosed
    from websockets.trio.server import serve

    if fleet.manager is not None:
        import wsfleet.adapters.websockets  # noqa: F401

    async def handler(ws: Any) -> None:
        with suppress(ConnectionClosed):
            await fleet.hold(ws, identifier_of(ws.request.path), ws.recv)

    async with anyio.create_task_group() as tg:
        server = await tg.start(
            partial(
                serve,
                handler,
                0,
                host="127.0.0.1",
                compression=None,
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
                close_timeout=1,
                backlog=2048,
            )
        )
        yield server.listeners[0].socket.getsockname()[1]
        tg.cancel_scope.cancel()


@asynccontextmanager
async def trio_websocket(fleet: Fleet) -> AsyncIterator[int]:
    from trio_websocket import ConnectionClosed, serve_websocket

    if fleet.manager is not None:
        import wsfleet.adapters.trio_websocket  # noqa: F401

    async def handler(request: Any) -> None:
        ws = await request.accept()
        with suppress(ConnectionClosed):
            await fleet.hold(ws, identifier_of(request.path), ws.get_message)

    async with anyio.create_task_group() as tg:
        server = await tg.start(partial(serve_websocket, handler, "127.0.0.1", 0, None))
        yield server.port
        tg.cancel_scope.cancel()


@asynccontextmanager
async def hypercorn_serving(app: Any) -> AsyncIterator[int]:
    """An ASGI app under hypercorn (asyncio worker), with no keepalive and no compression
    (the raw clients offer no extension, so none is negotiated)."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.backlog = 2048
    config.websocket_ping_interval = None  # the default; said for the record
    config.accesslog = None
    config.errorlog = None
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(serve, app, config, shutdown_trigger=stop.wait))
        with anyio.fail_after(10):
            while True:  # hypercorn has no "started" signal: wait until it accepts
                try:
                    stream = await anyio.connect_tcp("127.0.0.1", port)
                except OSError:
                    await anyio.sleep(0.02)
                    continue
                await stream.aclose()
                break
        yield port
        stop.set()
        tg.cancel_scope.cancel()


@asynccontextmanager
async def starlette_hypercorn(fleet: Fleet) -> AsyncIterator[int]:
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    if fleet.manager is not None:
        import wsfleet.adapters.asgi  # noqa: F401

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        with suppress(WebSocketDisconnect):
            await fleet.hold(ws, ws.query_params.get("id", "anonymous"), ws.receive_text)

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    async with hypercorn_serving(app) as port:
        yield port


@asynccontextmanager
async def uvicorn_serving(app: Any) -> AsyncIterator[int]:
    """An ASGI app under uvicorn (the server FastAPI's docs run), on its sans-IO websockets
    protocol, with no keepalive and no compression."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ws="websockets-sansio",
        ws_ping_interval=None,
        ws_per_message_deflate=False,
        lifespan="off",
        log_level="warning",
        access_log=False,
        backlog=2048,
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 (uvicorn sets it)
                await anyio.sleep(0.02)
        yield port
        server.should_exit = True
        tg.cancel_scope.cancel()


class DocsConnectionManager:
    """The pattern of FastAPI's WebSockets page ("Handling disconnections and multiple
    clients"), written here from its description: the accepted sockets in a plain list, and
    a broadcast that awaits one ``send_text`` after another."""

    def __init__(self) -> None:
        self.sockets: list[Any] = []

    async def connect(self, websocket: Any) -> None:
        await websocket.accept()
        self.sockets.append(websocket)

    def disconnect(self, websocket: Any) -> None:
        self.sockets.remove(websocket)  # a list: O(n), as in the pattern

    async def broadcast(self, text: str) -> None:
        for websocket in self.sockets:
            await websocket.send_text(text)


def fastapi_app(fleet: Fleet) -> Any:
    """One FastAPI app for both sides of the ASGI comparison, so that they differ only in
    how they hold and fan out: without a manager, the docs' ``ConnectionManager``; with one,
    the endpoint of wsfleet's FastAPI how-to (accept, then ``manager.session``)."""
    from fastapi import FastAPI, WebSocket, WebSocketDisconnect

    app = FastAPI()
    if fleet.manager is None:
        docs = fleet.native = DocsConnectionManager()

        async def endpoint(websocket: WebSocket) -> None:
            await docs.connect(websocket)
            fleet.add(websocket, websocket.query_params.get("id", "anonymous"))
            try:
                while True:
                    await websocket.receive_text()
            except WebSocketDisconnect:
                docs.disconnect(websocket)
            finally:
                fleet.remove(websocket)

    else:
        import wsfleet.adapters.asgi  # noqa: F401  (the manager would import it itself)

        async def endpoint(websocket: WebSocket) -> None:
            await websocket.accept()
            with suppress(WebSocketDisconnect):
                await fleet.hold(
                    websocket,
                    websocket.query_params.get("id", "anonymous"),
                    websocket.receive_text,
                )

    # This module's annotations are strings, and FastAPI resolves them in the module's
    # globals, where WebSocket (imported here, optional) is not: say it with the object.
    endpoint.__annotations__["websocket"] = WebSocket
    app.add_api_websocket_route("/ws", endpoint)
    return app


@asynccontextmanager
async def fastapi_docs(fleet: Fleet) -> AsyncIterator[int]:
    """The FastAPI app under uvicorn: the docs' ConnectionManager, or wsfleet's endpoint."""
    async with uvicorn_serving(fastapi_app(fleet)) as port:
        yield port


@asynccontextmanager
async def fastapi_hypercorn(fleet: Fleet) -> AsyncIterator[int]:
    """The same FastAPI app under hypercorn."""
    async with hypercorn_serving(fastapi_app(fleet)) as port:
        yield port


@asynccontextmanager
async def socketio_room(fleet: Fleet) -> AsyncIterator[int]:
    """python-socketio's ASGI server under uvicorn; every client joins room "r" on connect.

    Its pings are pushed out to an hour so that the byte-counting clients see nothing but
    the events (they answer a ping during the handshake only)."""
    import socketio

    sio = fleet.native = socketio.AsyncServer(
        async_mode="asgi", ping_interval=3600, ping_timeout=60, logger=False
    )

    async def connect(sid: str, environ: dict[str, Any]) -> None:
        await sio.enter_room(sid, "r")
        fleet.add(sid, identifier_of("?" + environ.get("QUERY_STRING", "")))

    async def disconnect(sid: str, *reason: Any) -> None:
        fleet.remove(sid)

    # sio.event's plain form: mypy cannot type a decorator from an untyped package
    sio.on("connect", connect)
    sio.on("disconnect", disconnect)

    async with uvicorn_serving(socketio.ASGIApp(sio)) as port:
        yield port


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame (server to client)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 65536:
        head = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return head + payload


class FloorProtocol(asyncio.Protocol):
    """The least a server can do: answer the upgrade, then only ever ``transport.write``."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.head = b""
        self.open = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.open:
            return  # the clients send nothing once open; a close frame is met by EOF
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        assert self.transport is not None
        lines = self.head.split(b"\r\n")
        key = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.open = True
        target = lines[0].split(b" ")[1].decode() if b" " in lines[0] else ""
        self.fleet.add(self.transport, identifier_of(target))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.open:
            self.fleet.remove(self.transport)


@asynccontextmanager
async def raw_floor(fleet: Fleet) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FloorProtocol(fleet), "127.0.0.1", 0, backlog=2048)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


SERVERS: dict[str, Callable[[Fleet], AbstractAsyncContextManager[int]]] = {
    "ws-broadcast": websockets_asyncio,
    "ws-loop": websockets_asyncio,
    "wsfleet-ws-asyncio": websockets_asyncio,
    "wsfleet-ws-asyncio-nobp": websockets_asyncio,
    "ws-trio-loop": websockets_trio,
    "ws-trio-broadcast": websockets_trio,
    "wsfleet-ws-trio": websockets_trio,
    "trio-ws-loop": trio_websocket,
    "wsfleet-trio-ws": trio_websocket,
    "starlette-loop": starlette_hypercorn,
    "fastapi-docs": fastapi_docs,
    "wsfleet-asgi-uvicorn": fastapi_docs,
    "fastapi-docs-hypercorn": fastapi_hypercorn,
    "wsfleet-asgi": fastapi_hypercorn,
    "socketio-room": socketio_room,
    "raw-floor": raw_floor,
}


# -- the fan-out jobs ------------------------------------------------------------------------


class Job:
    def __init__(self, variant: str, fleet: Fleet) -> None:
        self.variant = variant
        self.fleet = fleet
        self.serial = 0
        self.target = 0  # sent + dropped that the wsfleet job waits for

    async def run(self, m: int, size: int, mode: str, limit: float) -> None:
        mode, _, rate = mode.partition(":")
        texts: AsyncIterator[str]
        if mode == "stream":
            texts = self.stream(self.serial, m, size, float(rate or 0))
        else:
            texts = self.ready([message(self.serial + i, size) for i in range(m)])
        self.serial += m
        with anyio.fail_after(limit):
            if self.fleet.manager is not None:
                await self.wsfleet(texts, mode)
            elif self.variant == "ws-broadcast":
                await self.broadcast(texts, mode)
            elif self.variant == "ws-trio-broadcast":
                await self.trio_broadcast(texts)
            elif self.variant.startswith("fastapi-docs"):
                await self.docs(texts)
            elif self.variant == "socketio-room":
                await self.socketio(texts, mode)
            elif self.variant == "raw-floor":
                await self.floor(texts, mode)
            else:
                await self.loop(texts)

    @staticmethod
    async def ready(texts: list[str]) -> AsyncIterator[str]:
        """Messages made beforehand, handed out without a pause."""
        for text in texts:
            yield text

    @staticmethod
    async def stream(serial: int, m: int, size: int, rate: float) -> AsyncIterator[str]:
        """Messages stamped as each is handed over; ``rate`` > 0 paces them (per second)."""
        start = time.monotonic()
        for i in range(m):
            if rate > 0:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await anyio.sleep(delay)
            yield stamped(serial + i, size)

    async def docs(self, texts: AsyncIterator[str]) -> None:
        docs = self.fleet.native
        async for text in texts:
            try:
                await docs.broadcast(text)
            except Exception:
                self.fleet.errors += 1

    async def socketio(self, texts: AsyncIterator[str], mode: str) -> None:
        sio = self.fleet.native
        async for text in texts:
            await sio.emit("m", text, room="r")
            if mode != "burst":
                await checkpoint()
        await checkpoint()

    async def floor(self, texts: AsyncIterator[str], mode: str) -> None:
        """Encode once, write to every transport: what no library can undercut."""
        transports = self.fleet.sockets
        async for text in texts:
            frame = text_frame(text.encode())
            for transport in transports:
                transport.write(frame)
            if mode != "burst":
                await checkpoint()
        await checkpoint()

    async def broadcast(self, texts: AsyncIterator[str], mode: str) -> None:
        from websockets.asyncio.server import broadcast

        sockets = self.fleet.sockets
        async for text in texts:
            broadcast(sockets, text)
            if mode != "burst":
                await checkpoint()  # let the event loop write what the kernel did not take
        await checkpoint()

    async def trio_broadcast(self, texts: AsyncIterator[str]) -> None:
        """websockets' own ``broadcast()`` on trio: awaited, one task per connection."""
        from websockets.trio.server import broadcast

        sockets = self.fleet.sockets
        async for text in texts:
            await broadcast(sockets, text)

    async def loop(self, texts: AsyncIterator[str]) -> None:
        """The plain loop an application writes: await each send, one socket after another."""
        method = LOOP_SEND[self.variant]
        fleet = self.fleet
        async for text in texts:
            for ws in list(fleet.sockets):
                try:
                    await getattr(ws, method)(text)
                except Exception:
                    fleet.errors += 1

    async def wsfleet(self, texts: AsyncIterator[str], mode: str) -> None:
        manager = self.fleet.manager
        assert manager is not None
        stats = manager.stats()
        self.target = stats.sent_messages + sum(stats.drops.values())
        if mode == "batch":
            batch = getattr(manager, "batch", None)
            if batch is not None:
                # The public way to queue a burst whole before anything is written.
                async with batch():
                    async for text in texts:
                        self.target += await manager.broadcast(text)
            else:
                # Older managers: the same through a private call, as a diagnostic.
                conns = list(self.fleet.conns)
                send: Callable[[list[Any], str], int]
                send = getattr(manager, "_send_to_connections")  # noqa: B009 (not in its type)
                async for text in texts:
                    self.target += send(conns, text)
            await self.settle()
            return
        async for text in texts:
            self.target += await manager.broadcast(text)
            if mode == "single":
                await self.settle()
            elif mode == "stream":
                await self.backlog_below(STREAM_BACKLOG)
        await self.settle()

    async def backlog_below(self, limit: int) -> None:
        """The producer's backpressure: wait while the manager holds more than ``limit`` bytes."""
        manager = self.fleet.manager
        assert manager is not None
        spins = 0
        while manager.stats().queued_bytes > limit:
            spins += 1
            await anyio.sleep(0 if spins < 20 else 0.0005)

    async def settle(self) -> None:
        """Until every message queued so far was written (or dropped, for a stalled client).

        Read from the manager's counters only: a message counts as sent once its transport
        took it (``send_nowait`` returned, or ``send`` returned in a writer task).
        """
        manager = self.fleet.manager
        assert manager is not None
        spins = 0
        while True:
            stats = manager.stats()
            done = stats.sent_messages + sum(stats.drops.values())
            if not stats.queued_messages and done >= self.target:
                return
            spins += 1
            # A few bare checkpoints first (the flusher usually finishes within one), then
            # short sleeps so that a long wait does not spin on the CPU being measured.
            await anyio.sleep(0 if spins < 20 else 0.0005)


# -- main ------------------------------------------------------------------------------------


async def serve(variant: str) -> None:
    manager: ConnectionManager | None = None
    if variant.startswith("wsfleet"):
        options: dict[str, Any] = {}
        if variant.endswith("-nobp") and "backpressure" in signature(ConnectionManager).parameters:
            options["backpressure"] = None  # (a manager older than the policy has none)
        # heartbeat=None: the clients count bytes and answer no ping, so the manager's
        # default heartbeat would evict them all 40 s into a long run (its messages then
        # dropped, not delivered), and no peer here pings either.
        manager = ConnectionManager(
            overflow=STALL_POLICY,
            heartbeat=None,
            shutdown_timeout=1,
            close_timeout=1,
            **options,
        )
    fleet = Fleet(manager)
    job = Job(variant, fleet)
    async with AsyncExit(manager), SERVERS[variant](fleet) as port:
        say(f"port {port}")
        async for words in commands():
            command, args = words[0], words[1:]
            if command == "wait":
                held = await count_reaches(
                    lambda: len(fleet.sockets), int(args[0]), float(args[1]), 0.01
                )
                say(f"ready {held}")
            elif command == "go":
                m, size, mode, limit = int(args[0]), int(args[1]), args[2], float(args[3])
                t0 = time.perf_counter()
                errors = fleet.errors
                try:
                    await job.run(m, size, mode, limit)
                except TimeoutError:
                    say("timeout")
                    continue
                say(f"sent {time.perf_counter() - t0:.6f} {fleet.errors - errors}")
            elif command == "memory":
                # What the process holds once collectable garbage is gone: the same for every
                # variant, so that a collection pending in one does not count against it.
                gc.collect()
                say(f"memory {rss()}")
            elif command == "cpu":
                say(f"cpu {time.process_time():.6f}")
            elif command == "stats":
                info: dict[str, Any] = {"sockets": len(fleet.sockets), "rss": rss()}
                if manager is not None:
                    stats = manager.stats()
                    info.update(states=stats.states, drops=stats.drops, sent=stats.sent_messages)
                    info["stalled_state"] = next(
                        (c.state.name for c in fleet.conns if c.identifier.startswith("stalled")),
                        None,
                    )
                else:
                    info["stalled_connected"] = any(
                        i.startswith("stalled") for i in fleet.ids.values()
                    )
                say("stats " + json.dumps(info))
    # Closing thousands of sockets politely only costs the driver time; it is done with us.


class AsyncExit:
    """Enter the manager if there is one; leaving the process skips the polite shutdown."""

    def __init__(self, manager: ConnectionManager | None) -> None:
        self.manager = manager

    async def __aenter__(self) -> None:
        if self.manager is not None:
            await self.manager.__aenter__()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is not None:
            traceback.print_exception(exc)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0 if exc is None else 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU")
    args = parser.parse_args()
    raise_nofile()
    pin(args.cpu)
    anyio.run(serve, args.variant, backend=VARIANTS[args.variant])


if __name__ == "__main__":
    main()
