"""Real WebSocket clients and raw TCP peers for the adapter tests, on the running event loop."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
import sniffio


@asynccontextmanager
async def client(url: str, **options: Any) -> AsyncIterator[Any]:
    """A websockets client on whichever loop runs the test (no keepalive of its own)."""
    options.setdefault("ping_interval", None)
    options.setdefault("compression", None)
    if sniffio.current_async_library() == "trio":
        from websockets.trio.client import connect as trio_connect

        async with trio_connect(url, **options) as ws:
            yield ws
    else:
        from websockets.asyncio.client import connect as asyncio_connect

        async with asyncio_connect(url, **options) as ws:
            yield ws


async def raw_upgrade(url: str) -> anyio.abc.SocketStream:
    """A TCP peer that completes the WebSocket handshake and then does nothing at all.

    It never reads (so it never answers a ping and lets the server's writes pile up) and
    never writes: the kind of peer a heartbeat and an overflow policy exist for.
    """
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    stream = await anyio.connect_tcp(parts.hostname, parts.port)
    key = base64.b64encode(os.urandom(16)).decode()
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await stream.send(request.encode())
    response = b""
    with anyio.fail_after(5):
        while b"\r\n\r\n" not in response:
            response += await stream.receive(1)  # byte by byte: read nothing past the headers
    assert response.startswith(b"HTTP/1.1 101"), response
    return stream
