"""A real websockets server on 127.0.0.1, on asyncio or trio, for the adapter tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

import sniffio

import wsfleet.adapters.websockets  # noqa: F401  (registers the adapter)

BACKENDS = ("asyncio", "trio")

Handler = Callable[[Any, str], Awaitable[None]]


def identifier_of(path: str) -> str:
    return parse_qs(urlsplit(path).query).get("id", ["anonymous"])[0]


@asynccontextmanager
async def serve(
    handler: Handler, *, max_message_size: int = 65536, compression: str | None = None
) -> AsyncIterator[str]:
    async def on_connection(ws: Any) -> None:
        await handler(ws, identifier_of(ws.request.path))

    options: dict[str, Any] = {
        "max_size": max_message_size,
        "ping_interval": None,  # wsfleet's HeartbeatPolicy does the pinging
        "compression": compression,
    }
    if sniffio.current_async_library() == "trio":
        import trio
        from websockets.trio.server import serve as trio_serve

        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(trio_serve, on_connection, 0, host="127.0.0.1", **options)
            )
            port = server.listeners[0].socket.getsockname()[1]
            try:
                yield f"ws://127.0.0.1:{port}/ws"
            finally:
                nursery.cancel_scope.cancel()
    else:
        from websockets.asyncio.server import serve as asyncio_serve

        async with asyncio_serve(on_connection, "127.0.0.1", 0, **options) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            yield f"ws://127.0.0.1:{port}/ws"
