"""A real ASGI server (hypercorn) on 127.0.0.1 running a Starlette app, on asyncio or trio.

hypercorn up to 0.18 tells the application 1006 for every close it did not start itself,
even a client's clean 1000 or its own 1009 for an oversize message (pgjones/hypercorn#127),
although ASGI says ``websocket.disconnect`` carries the connection's close code. By default
the harness serves with ``_SpecWSStream``, which reports the code the close frames carried,
so the tests check the adapter's mapping rather than that bug; ``spec_close_codes=False``
serves with hypercorn exactly as released.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import hypercorn.protocol.h11
import sniffio
from hypercorn.config import Config
from hypercorn.protocol.events import Event, StreamClosed
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection

import wsfleet.adapters.asgi  # noqa: F401  (registers the adapter)

BACKENDS = ("asyncio", "trio")

Handler = Callable[[Any, str], Awaitable[None]]


class _SpecWSStream(WSStream):
    """hypercorn's stream, reporting the close frames' code (ASGI) instead of always 1006."""

    _close: tuple[int, str] | None = None

    async def _send_wsproto_event(self, event: Any) -> None:
        # hypercorn itself sends a close in two cases: echoing the client's (the
        # connection is REMOTE_CLOSING) and refusing an oversize message (1009).
        if (
            isinstance(event, CloseConnection)
            and self.state is ASGIWebsocketState.CONNECTED
            and self.connection.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING)
            and getattr(self.config, "wsfleet_spec_close_codes", False)
        ):
            self._close = (event.code, event.reason or "")
        await super()._send_wsproto_event(event)

    async def handle(self, event: Event) -> None:
        if (
            isinstance(event, StreamClosed)
            and self._close is not None
            and not self.closed
            and self.app_put is not None
            and self.state is ASGIWebsocketState.CONNECTED
        ):
            self.closed = True
            code, reason = self._close
            await self.app_put({"type": "websocket.disconnect", "code": code, "reason": reason})
            return
        await super().handle(event)


hypercorn.protocol.h11.WSStream = _SpecWSStream  # type: ignore[misc]


@asynccontextmanager
async def serve(
    handler: Handler, *, max_message_size: int = 65536, spec_close_codes: bool = True
) -> AsyncIterator[str]:
    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        await handler(websocket, websocket.query_params.get("id", "anonymous"))

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])

    # Bind here and hand the listening socket over: the port is known before the server
    # runs and no other process can take it in between.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]

    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.websocket_max_message_size = max_message_size
    config.websocket_ping_interval = None  # wsfleet does no pinging over ASGI; neither do we
    config.graceful_timeout = 1.0
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.wsfleet_spec_close_codes = spec_close_codes  # type: ignore[attr-defined]

    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        if sniffio.current_async_library() == "trio":
            from hypercorn.trio import serve as trio_serve

            await tg.start(partial(trio_serve, app, config, shutdown_trigger=stop.wait))
        else:
            from hypercorn.asyncio import serve as asyncio_serve

            # The socket already listens: connections wait in its backlog until it accepts.
            tg.start_soon(partial(asyncio_serve, app, config, shutdown_trigger=stop.wait))
        try:
            yield f"ws://127.0.0.1:{port}/ws"
        finally:
            stop.set()
