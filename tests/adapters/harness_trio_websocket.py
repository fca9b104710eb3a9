"""A real trio-websocket server on 127.0.0.1, for the adapter tests (trio only)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio
from trio_websocket import WebSocketRequest, serve_websocket

import wsfleet.adapters.trio_websocket  # noqa: F401  (registers the adapter)

BACKENDS = ("trio",)

Handler = Callable[[Any, str], Awaitable[None]]


def identifier_of(path: str) -> str:
    return parse_qs(urlsplit(path).query).get("id", ["anonymous"])[0]


@asynccontextmanager
async def serve(handler: Handler, *, max_message_size: int = 65536) -> AsyncIterator[str]:
    async def on_request(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await handler(ws, identifier_of(request.path))

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(
                serve_websocket,
                on_request,
                "127.0.0.1",
                0,
                None,
                max_message_size=max_message_size,
                connect_timeout=5,
                disconnect_timeout=1,  # bounds the library's own close after a handler
            )
        )
        try:
            yield f"ws://127.0.0.1:{server.port}/ws"
        finally:
            nursery.cancel_scope.cancel()
