"""Tools shared by the reliability checks: sizes, figures, a server, raw peers, counts.

Every check runs a short form by default (CI) and the issue's full sizes when the
environment variable ``WSFLEET_RELIABILITY`` is ``full`` when the test runs (never read at
import time). Each check reports its measured figures through the ``figure`` fixture: printed
(``pytest -s`` shows them) and attached to the test report with ``record_property``.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import os
import socket
import struct
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc
import pytest
import sniffio
from anyio.streams.buffered import BufferedByteReceiveStream

import wsfleet.adapters.websockets  # noqa: F401  (registers the adapter)
from adapters.clients import client  # noqa: F401  (shared with the adapter tests)

T = TypeVar("T")

ENVIRONMENT = "WSFLEET_RELIABILITY"

Handler = Callable[[Any, str], Awaitable[None]]


# -- sizes and figures ----------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """The short form's or the full form's counts, chosen when the test runs."""

    full: bool

    def pick(self, short: T, full: T) -> T:
        return full if self.full else short


def full_form() -> bool:
    """Whether the full form was asked for; read when a test runs, never at import."""
    return os.environ.get(ENVIRONMENT, "").strip().lower() == "full"


@pytest.fixture
def sizes() -> Sizes:
    return Sizes(full=full_form())


Figure = Callable[..., None]


@pytest.fixture
def figure(
    request: pytest.FixtureRequest, record_property: Callable[[str, object], None]
) -> Figure:
    """``figure(name, value, unit, criterion)``: print one measured figure and record it."""

    def report(name: str, value: float | int | str, unit: str = "", criterion: str = "") -> None:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        line = f"[reliability] {request.node.name}: {name} = {shown}"
        if unit:
            line += f" {unit}"
        if criterion:
            line += f"  (criterion: {criterion})"
        print(line)
        record_property(name, value)

    return report


@pytest.fixture(autouse=True)
def collect_leftovers() -> None:
    """Collect what earlier tests left to the cycle collector before each check starts.

    coredis leaves the memory streams of a failed dial to the GC (see
    ``tests/backplane/redis/test_backplane.py``); after the Redis checks, some stay
    reachable (from log records, tracebacks) until their test is over, and would otherwise
    warn from inside whichever later check collects next. Memory checks start cleaner too.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Unclosed <MemoryObject", ResourceWarning)
        gc.collect()


# -- waiting ----------------------------------------------------------------------------------


# -- process-wide counts ------------------------------------------------------------------------


def task_count() -> int:
    """Tasks alive on the running event loop (trio: every task of the tree)."""
    if sniffio.current_async_library() == "trio":
        import trio

        count = 0
        stack = [trio.lowlevel.current_root_task()]
        while stack:
            task = stack.pop()
            count += 1
            for nursery in task.child_nurseries:
                stack.extend(nursery.child_tasks)
        return count
    return len(asyncio.all_tasks())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        resident = int(statm.read().split()[1])
    return resident * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def errors_logged() -> Iterator[list[logging.LogRecord]]:
    """Every record of level ERROR or above that wsfleet or websockets logs meanwhile."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.ERROR)
    loggers = [logging.getLogger(name) for name in ("wsfleet", "websockets")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


# -- a websockets server on 127.0.0.1 -----------------------------------------------------------


def identifier_of(path: str) -> str:
    return parse_qs(urlsplit(path).query).get("id", ["anonymous"])[0]


@asynccontextmanager
async def serve(handler: Handler, **options: Any) -> AsyncIterator[str]:
    """A websockets server (asyncio or trio, as the test runs) calling ``handler(ws, id)``.

    Like ``tests/adapters/harness_websockets.serve`` but every option of websockets' server
    may be given (compression, ``max_size``, ``close_timeout`` ...). wsfleet pings, so
    websockets' own keepalive is off; so is compression unless asked for.

    On trio, leaving cancels the server's tasks; first it lets the handlers of connections
    already closing finish (for up to a second), as websockets' asyncio server does. A
    handler cancelled while its peer's close is on its way would otherwise spend the
    manager's ``close_timeout`` on a closing handshake its cancelled connection cannot
    finish.
    """
    active: set[Any] = set()

    async def on_connection(ws: Any) -> None:
        active.add(ws)
        try:
            await handler(ws, identifier_of(ws.request.path))
        finally:
            active.discard(ws)

    def closing() -> bool:
        from websockets.protocol import State

        return any(ws.protocol.state is not State.OPEN for ws in active)

    options.setdefault("ping_interval", None)
    options.setdefault("compression", None)
    options.setdefault("max_size", 1024 * 1024)
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
                with anyio.move_on_after(1.0, shield=True):
                    while closing():
                        await anyio.sleep(0.001)
                nursery.cancel_scope.cancel()
    else:
        from websockets.asyncio.server import serve as asyncio_serve

        async with asyncio_serve(on_connection, "127.0.0.1", 0, **options) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            yield f"ws://127.0.0.1:{port}/ws"


# -- raw peers and frames -----------------------------------------------------------------------


async def raw_connect(
    url: str, *, extensions: str | None = None, rcvbuf: int | None = None
) -> tuple[anyio.abc.SocketStream, str]:
    """A TCP peer that completes the handshake, then does only what the test makes it do.

    ``extensions`` is offered in ``Sec-WebSocket-Extensions``; ``rcvbuf`` sets ``SO_RCVBUF``
    before connecting (so the kernel holds little for a peer that never reads). Returns the
    stream and the response's headers; nothing past them has been read.
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
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    )
    if extensions is not None:
        request += f"Sec-WebSocket-Extensions: {extensions}\r\n"
    response = b""
    try:
        await stream.send((request + "\r\n").encode())
        with anyio.fail_after(5):
            while b"\r\n\r\n" not in response:
                response += await stream.receive(1)  # byte by byte: nothing past the headers
        assert response.startswith(b"HTTP/1.1 101"), response
    except BaseException:
        await stream.aclose()
        raise
    return stream, response.decode("latin-1")


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """A masked client frame (RFC 6455 section 5.2)."""
    head = bytearray([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    length = len(payload)
    if length < 126:
        head.append(0x80 | length)
    elif length < 1 << 16:
        head.append(0x80 | 126)
        head += struct.pack("!H", length)
    else:
        head.append(0x80 | 127)
        head += struct.pack("!Q", length)
    mask = os.urandom(4)
    head += mask
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload[:64]))
    if length > 64:  # large payloads: XOR through int arithmetic, far faster than per byte
        whole = (mask * (length // 4 + 1))[:length]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(whole, "big")).to_bytes(
            length, "big"
        )
    return bytes(head) + masked


class FrameReader:
    """Reads the server's (unmasked) frames from a raw peer's stream."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.buffered = BufferedByteReceiveStream(stream)
        #: Data frames (text, binary, continuation) read so far.
        self.data_frames = 0

    async def read(self) -> tuple[int, bytes]:
        """The next frame's opcode and payload; ``(-1, b"")`` when the connection ends."""
        try:
            head = await self.buffered.receive_exactly(2)
            length = head[1] & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.buffered.receive_exactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.buffered.receive_exactly(8))
            payload = await self.buffered.receive_exactly(length) if length else b""
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError):
            return -1, b""
        return head[0] & 0x0F, payload

    async def close_code(self, timeout: float = 5.0) -> int:
        """Skip data frames until the server's close frame: its code (1005 if none, 1006 if
        the connection ended without one)."""
        with anyio.fail_after(timeout):
            while True:
                opcode, payload = await self.read()
                if opcode == -1:
                    return 1006
                if opcode == 0x8:
                    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                if opcode in (0x0, 0x1, 0x2):
                    self.data_frames += 1


async def reset(stream: anyio.abc.SocketStream) -> None:
    """Close with a TCP reset (RST) instead of a FIN: ``SO_LINGER`` on, zero seconds."""
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    assert ordered, "no values"
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))
    return ordered[rank]


async def close_client(ws: Any, code: int = 1000) -> None:
    """Close a websockets client cleanly, on asyncio (``close``) or trio (``aclose``)."""
    if sniffio.current_async_library() == "trio":
        await ws.aclose(code)
    else:
        await ws.close(code)
