"""The other end: real websockets clients as a browser behaves, and raw TCP peers for what no
well-behaved client sends (a close without a code, invalid UTF-8, reserved opcodes, unmasked
frames, silence, a dropped TCP connection, a stalled reader).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
import sniffio
from anyio.streams.buffered import BufferedByteReceiveStream

# -- websockets clients -------------------------------------------------------------------------


@asynccontextmanager
async def client(url: str, **options: Any) -> AsyncIterator[Any]:
    """A websockets client on the running loop, with a browser's habits.

    It never pings (browsers do not) but answers every ping, and offers permessage-deflate
    (websockets' default, as browsers do). Nothing else differs from websockets' defaults.
    """
    options.setdefault("ping_interval", None)
    if sniffio.current_async_library() == "trio":
        from websockets.trio.client import connect as trio_connect

        async with trio_connect(url, **options) as ws:
            yield ws
    else:
        from websockets.asyncio.client import connect as asyncio_connect

        async with asyncio_connect(url, **options) as ws:
            yield ws


async def close(ws: Any, code: int = 1000) -> None:
    """Close a websockets client with a closing handshake (asyncio ``close``, trio ``aclose``)."""
    if sniffio.current_async_library() == "trio":
        await ws.aclose(code)
    else:
        await ws.close(code)


async def wait_closed(ws: Any, timeout: float = 5.0) -> int | None:
    """Wait until the server has closed ``ws``; the close code it received."""
    with anyio.fail_after(timeout):
        await ws.wait_closed()
    code: int | None = ws.close_code
    return code


async def receive_json(ws: Any, timeout: float = 5.0) -> Any:
    with anyio.fail_after(timeout):
        return json.loads(await ws.recv())


async def send_json(ws: Any, **fields: Any) -> None:
    await ws.send(json.dumps(fields))


async def join(ws: Any, room: str) -> None:
    """Join ``room`` and wait for the server to confirm it."""
    await send_json(ws, type="join", room=room)
    assert await receive_json(ws) == {"type": "joined", "room": room}


# -- raw peers ---------------------------------------------------------------------------------


async def raw_connect(url: str, *, rcvbuf: int | None = None) -> anyio.abc.SocketStream:
    """A TCP peer that completes the WebSocket handshake and then does only what it is made to.

    ``rcvbuf`` sets ``SO_RCVBUF`` before connecting, so the kernel holds little for a peer
    that never reads. Nothing past the response's headers has been read.
    """
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        try:
            sock.connect((parts.hostname, parts.port))
        except BlockingIOError:
            with anyio.fail_after(5):
                await anyio.wait_writable(sock)
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, os.strerror(error))
    except BaseException:
        sock.close()
        raise
    stream = await anyio.abc.SocketStream.from_socket(sock)
    key = base64.b64encode(os.urandom(16)).decode()
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    head = (
        f"GET {path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    response = b""
    try:
        await stream.send(head.encode())
        with anyio.fail_after(5):
            while b"\r\n\r\n" not in response:
                response += await stream.receive(1)  # byte by byte: nothing past the headers
        assert response.startswith(b"HTTP/1.1 101"), response
    except BaseException:
        await stream.aclose()
        raise
    return stream


def frame(opcode: int, payload: bytes = b"", *, masked: bool = True, fin: bool = True) -> bytes:
    """A client frame (RFC 6455 section 5.2); clients must mask, ``masked=False`` breaks that."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    length = len(payload)
    bit = 0x80 if masked else 0
    if length < 126:
        head.append(bit | length)
    elif length < 1 << 16:
        head.append(bit | 126)
        head += struct.pack("!H", length)
    else:
        head.append(bit | 127)
        head += struct.pack("!Q", length)
    if not masked:
        return bytes(head) + payload
    mask = os.urandom(4)
    whole = (mask * (length // 4 + 1))[:length]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(whole, "big")).to_bytes(length, "big")
    return bytes(head) + mask + body


async def close_code(stream: anyio.abc.SocketStream, timeout: float = 5.0) -> int:
    """Read the server's frames until its close frame; its code.

    1005 for a close frame without a code, 1006 if the connection ended without one.
    """
    buffered = BufferedByteReceiveStream(stream)
    with anyio.fail_after(timeout):
        while True:
            try:
                head = await buffered.receive_exactly(2)
                length = head[1] & 0x7F
                if length == 126:
                    (length,) = struct.unpack("!H", await buffered.receive_exactly(2))
                elif length == 127:
                    (length,) = struct.unpack("!Q", await buffered.receive_exactly(8))
                payload = await buffered.receive_exactly(length) if length else b""
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError):
                return 1006
            if head[0] & 0x0F == 0x8:
                code: int = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                return code


async def reset(stream: anyio.abc.SocketStream) -> None:
    """Drop the TCP connection with a reset (RST), as a crashed or unplugged client does."""
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()
