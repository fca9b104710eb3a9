"""The ASGI adapter's direct path under hypercorn, over HTTP/1.1 (h11), asyncio or trio.

hypercorn's ``WSStream.app_send`` encodes a ``websocket.send`` event with wsproto and hands
the bytes down (``H11Protocol.stream_send``) to its ``TCPServer.protocol_send``, which
writes them under the server's send lock and, on asyncio, awaits ``drain()`` (so a writer
waits while the transport's buffer is over its high-water mark). On asyncio the direct path
writes the frames of a whole batch to the transport with one write, only when that send
would write at once: the stream is open (not ``closed``, CONNECTED, its wsproto connection
OPEN), nobody holds the send lock, the transport is not closing and its buffer is not over
the high-water mark. Otherwise ``write`` hands the batch's bytes to ``protocol_send``
itself, which takes the lock and drains as hypercorn always does. With permessage-deflate
the frames are encoded by the stream's own wsproto connection.

On trio, hypercorn writes with an awaited ``send_all``: there is no synchronous write to
take, so the adapter only skips Starlette and calls ``app_send`` with one event per message.

Receiving takes events from the app queue hypercorn created for the connection (an
``asyncio.Queue``, or a trio memory channel); closing stays hypercorn's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

from ..errors import TransportClosed
from ..transport import Outbound, Ping
from ._asgi_frames import batch_bytes
from ._asgi_server import QueueGet, Server, Unknown, attrs_typed, releases_tested

__all__ = ["find"]


class _Hypercorn(Server):
    __slots__ = ()

    #: Set by ``find``: the stream state and the wsproto state in which hypercorn writes.
    connected: Any = None
    open_state: Any = None

    def _open(self, stream: Any) -> bool:
        return (
            not stream.closed
            and stream.state is self.connected
            and stream.connection.state is self.open_state
        )


class _Asyncio(_Hypercorn):
    __slots__ = ()
    name = "hypercorn-asyncio"
    raw_data: Any = None

    @staticmethod
    def _encode(stream: Any, batch: Sequence[Outbound]) -> bytes:
        connection = stream.connection
        if not connection._proto.extensions:
            return batch_bytes(batch)
        from wsproto.events import Message

        frames = [
            connection.send(Message(data=item))  # type: ignore[type-var]
            for item in batch
            if not isinstance(item, Ping)
        ]
        return b"".join(frames)

    def write_nowait(self, conn: Any, batch: Sequence[Outbound]) -> bool:
        if not self._open(conn):
            return False
        tcp = conn.send.__self__.send.__self__
        if tcp.send_lock.locked():
            return False
        transport = tcp.writer.transport
        if (
            transport.is_closing()
            or transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]
        ):
            return False
        transport.write(self._encode(conn, batch))
        return True

    async def write(self, conn: Any, batch: Sequence[Outbound]) -> bool:
        if not self._open(conn):
            return False
        tcp = conn.send.__self__.send.__self__
        await tcp.protocol_send(self.raw_data(data=self._encode(conn, batch)))
        return True

    async def send_event(self, conn: Any, event: dict[str, Any]) -> None:
        await conn.app_send(event)

    def receive(self, conn: Any, receive: Any) -> QueueGet:
        return QueueGet(conn.app_put.__self__)

    def cancelled(self, wait: Any) -> None:
        wait.cancel()

    def wake(self, conn: Any, code: int, reason: str) -> None:
        queue = conn.app_put.__self__
        if queue.empty():
            queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})


class _Trio(_Hypercorn):
    __slots__ = ()
    name = "hypercorn-trio"

    async def write(self, conn: Any, batch: Sequence[Outbound]) -> bool:
        if not self._open(conn):
            return False
        send = conn.app_send
        for item in batch:
            if not self._open(conn):  # closed while an earlier message was written
                raise TransportClosed(1006, "closed")
            if isinstance(item, str):
                await send({"type": "websocket.send", "text": item})
            elif not isinstance(item, Ping):
                await send({"type": "websocket.send", "bytes": item})
        return True

    async def send_event(self, conn: Any, event: dict[str, Any]) -> None:
        await conn.app_send(event)

    def receive(self, conn: Any, receive: Any) -> Any:
        return receive()  # the app channel's own receive: a trio wait needs a coroutine

    def wake(self, conn: Any, code: int, reason: str) -> None:
        import trio

        channel = conn.app_put.__self__
        if channel.statistics().current_buffer_used == 0:
            event = {"type": "websocket.disconnect", "code": code, "reason": reason}
            # A queue that is gone or full holds events of its own for the application.
            with suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                channel.send_nowait(event)


_ASYNCIO = _Asyncio()
_TRIO = _Trio()


def find(send: object, receive: object) -> tuple[Server, Any] | None:
    """hypercorn's ``WSStream`` behind ``send``, if this path knows it; ``None`` if ``send``
    is not hypercorn's; ``Unknown`` (saying why) if it is, but not as tested."""
    func = getattr(send, "__func__", None)
    module = getattr(func, "__module__", "") or ""
    if not module.startswith("hypercorn."):
        return None
    from hypercorn.events import RawData
    from hypercorn.protocol.h11 import H11Protocol
    from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
    from wsproto.connection import Connection, ConnectionState

    stream: Any = getattr(send, "__self__", None)
    if type(stream) is not WSStream or func is not WSStream.app_send:
        raise Unknown(f"{type(stream).__qualname__}.app_send, not hypercorn's WSStream")
    h11: Any = getattr(stream.send, "__self__", None)
    if (
        type(h11) is not H11Protocol
        or getattr(stream.send, "__func__", None) is not H11Protocol.stream_send
    ):
        raise Unknown(f"hypercorn over {type(h11).__name__}, not HTTP/1.1")
    tcp: Any = getattr(h11.send, "__self__", None)
    tcp_module = type(tcp).__module__
    server: _Hypercorn
    if tcp_module == "hypercorn.asyncio.tcp_server":
        from hypercorn.asyncio.tcp_server import TCPServer

        server = _ASYNCIO
        _Asyncio.raw_data = RawData
        if (
            type(tcp) is not TCPServer
            or getattr(h11.send, "__func__", None) is not TCPServer.protocol_send
        ):
            raise Unknown("hypercorn's asyncio TCPServer, not as released")
        queue = getattr(stream.app_put, "__self__", None)
        if (
            type(queue) is not asyncio.Queue
            or getattr(receive, "__func__", None) is not asyncio.Queue.get
            or getattr(receive, "__self__", None) is not queue
        ):
            raise Unknown("receive is not hypercorn's app queue")
        attrs_typed(tcp, {"send_lock": asyncio.Lock, "writer": asyncio.StreamWriter})
        attrs_typed(tcp.writer, {"transport": asyncio.WriteTransport})
    elif tcp_module == "hypercorn.trio.tcp_server":
        import trio
        from hypercorn.trio.tcp_server import TCPServer as TrioTCPServer

        server = _TRIO
        if (
            type(tcp) is not TrioTCPServer
            or getattr(h11.send, "__func__", None) is not TrioTCPServer.protocol_send
        ):
            raise Unknown("hypercorn's trio TCPServer, not as released")
        channel = getattr(stream.app_put, "__self__", None)
        if (
            type(channel) is not trio.MemorySendChannel
            or getattr(receive, "__func__", None) is not trio.MemoryReceiveChannel.receive
        ):
            raise Unknown("receive is not hypercorn's app channel")
    else:
        raise Unknown(f"hypercorn's {tcp_module}")
    if not releases_tested(server.name):
        raise Unknown(f"{server.name}: releases not tested")
    attrs_typed(stream, {"connection": Connection, "closed": bool})
    _Hypercorn.connected = ASGIWebsocketState.CONNECTED
    _Hypercorn.open_state = ConnectionState.OPEN
    return server, stream
