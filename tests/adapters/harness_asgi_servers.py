"""Real ASGI servers on 127.0.0.1 for the ASGI adapter's direct path: uvicorn (its
websockets-sansio, wsproto and legacy websockets protocols, asyncio) and hypercorn (asyncio
and trio), each serving a Starlette app whose endpoint accepts and hands the socket over.

``harness_asgi`` swaps hypercorn's ``WSStream`` for a subclass of its own, process-wide,
when it is imported; that subclass is exactly what the direct path refuses. So ``serve``
puts the released class back while it serves (or the class it is given, to test that
refusal) and restores whatever was there afterwards.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import hypercorn.protocol.h11
import sniffio
from anyio.abc import TaskStatus
from hypercorn.protocol.ws_stream import WSStream
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

import wsfleet.adapters.asgi  # noqa: F401  (registers the adapter)

Handler = Callable[[Any, str], Awaitable[None]]

#: (server, its websocket protocol) pairs; uvicorn runs on asyncio only.
UVICORN_SANSIO = ("uvicorn", "websockets-sansio")
UVICORN_WSPROTO = ("uvicorn", "wsproto")
UVICORN_LEGACY = ("uvicorn", "websockets")
HYPERCORN = ("hypercorn", "")

#: What ``StarletteTransport.direct`` says for each, by event loop.
DIRECT = {
    (UVICORN_SANSIO, "asyncio"): "uvicorn-websockets-sansio",
    (UVICORN_WSPROTO, "asyncio"): "uvicorn-wsproto",
    (HYPERCORN, "asyncio"): "hypercorn-asyncio",
    (HYPERCORN, "trio"): "hypercorn-trio",
}


def starlette_app(handler: Handler, middleware: list[Middleware] | None = None) -> Starlette:
    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        await handler(websocket, websocket.query_params.get("id", "anonymous"))

    return Starlette(routes=[WebSocketRoute("/ws", endpoint)], middleware=middleware)


@asynccontextmanager
async def serve(
    server: tuple[str, str],
    handler: Handler,
    *,
    compression: bool = False,
    keepalive: tuple[float, float] | None = None,
    middleware: list[Middleware] | None = None,
    stream_class: type[WSStream] = WSStream,
) -> AsyncIterator[str]:
    """Serve ``handler(websocket, identifier)``; yields the URL (``?id=`` names the client)."""
    app = starlette_app(handler, middleware)
    name, protocol = server
    serving = _uvicorn(app, protocol, compression, keepalive) if name == "uvicorn" else None
    if serving is None:
        serving = _hypercorn(app, compression, keepalive, stream_class)
    async with serving as url:
        yield url


@asynccontextmanager
async def _uvicorn(
    app: Starlette, protocol: str, compression: bool, keepalive: tuple[float, float] | None
) -> AsyncIterator[str]:
    import uvicorn

    ping_interval, ping_timeout = keepalive if keepalive is not None else (None, None)
    config = uvicorn.Config(
        app,
        ws=protocol,
        ws_per_message_deflate=compression,
        ws_ping_interval=ping_interval,
        ws_ping_timeout=ping_timeout,
        lifespan="off",
        log_config=None,  # uvicorn would otherwise reconfigure the process's logging
    )
    server = uvicorn.Server(config)
    sock = socket.create_server(("127.0.0.1", 0), backlog=128)
    port = sock.getsockname()[1]
    stopped = anyio.Event()

    async def run() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            stopped.set()

    with sock:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            try:
                with anyio.fail_after(10):
                    while not server.started:
                        await anyio.sleep(0.01)
                yield f"ws://127.0.0.1:{port}/ws"
            finally:
                server.should_exit = True
                with anyio.move_on_after(15, shield=True):
                    await stopped.wait()


@asynccontextmanager
async def _hypercorn(
    app: Starlette,
    compression: bool,
    keepalive: tuple[float, float] | None,
    stream_class: type[WSStream],
) -> AsyncIterator[str]:
    from hypercorn.config import Config

    sock = socket.create_server(("127.0.0.1", 0), backlog=128)
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.errorlog = logging.getLogger("hypercorn.error")
    config.accesslog = None
    config.graceful_timeout = 1.0
    config.websocket_ping_interval = None if keepalive is None else keepalive[0]
    # hypercorn negotiates permessage-deflate whenever the client offers it: the tests ask
    # for it, or not, through the client's offer; ``compression`` is there for symmetry.
    del compression
    stop = anyio.Event()
    stopped = anyio.Event()

    async def run(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            if sniffio.current_async_library() == "trio":
                from hypercorn.trio import serve as trio_serve

                await trio_serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)
            else:
                from hypercorn.asyncio import serve as asyncio_serve

                task_status.started()
                await asyncio_serve(app, config, shutdown_trigger=stop.wait)
        finally:
            stopped.set()

    swapped = hypercorn.protocol.h11.WSStream
    hypercorn.protocol.h11.WSStream = stream_class  # type: ignore[misc]
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(run)
            try:
                yield f"ws://127.0.0.1:{port}/ws"
            finally:
                stop.set()
                with anyio.move_on_after(15, shield=True):
                    await stopped.wait()
    finally:
        hypercorn.protocol.h11.WSStream = swapped  # type: ignore[misc]
