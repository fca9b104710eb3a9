"""The ASGI adapter's direct path under uvicorn: its websockets-sansio and wsproto protocols.

Both protocols are ``asyncio.Protocol`` objects that own the connection's transport. Their
``send`` for a ``websocket.send`` event waits for ``writable`` (cleared by
``pause_writing`` when the transport's buffer passes its high-water mark), refuses once the
connection is lost or the close was sent, encodes one frame and writes it. The direct path
does the same for a whole batch, with one write: it writes only while ``writable`` is set,
neither ``disconnected`` nor ``close_sent`` is, the transport is not closing and the
protocol's own state is OPEN; otherwise ``write_nowait`` declines, and ``write`` waits for
``writable`` as uvicorn's send does. Without an extension the frames are the shared bytes of
``_asgi_frames``; with permessage-deflate they go through the connection's own protocol
object (its compressor's context), still one write per batch.

Receiving takes events from the protocol's queue as its ``receive`` does, resuming reads
when it paused them; closing stays uvicorn's (``websocket.close`` through its send).
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

from ..transport import Outbound, Ping
from ._asgi_frames import batch_bytes
from ._asgi_server import QueueGet, Server, Unknown, attrs_typed, releases_tested

__all__ = ["find"]


class _Uvicorn(Server):
    """What both of uvicorn's protocols share."""

    __slots__ = ()

    #: The protocol state in which uvicorn's send writes (set by ``find``).
    open_state: Any = None

    def _open(self, conn: Any) -> bool:
        return conn.conn.state is self.open_state

    @abstractmethod
    def _encode(self, conn: Any, batch: Sequence[Outbound]) -> bytes:
        """The batch as frames, by this implementation's protocol object."""

    def write_nowait(self, conn: Any, batch: Sequence[Outbound]) -> bool:
        if (
            conn.close_sent
            or conn.disconnected
            or not conn.writable.is_set()
            or conn.transport.is_closing()
            or not self._open(conn)
        ):
            return False
        conn.transport.write(self._encode(conn, batch))
        return True

    async def write(self, conn: Any, batch: Sequence[Outbound]) -> bool:
        while not self.write_nowait(conn, batch):
            if conn.close_sent or conn.disconnected or conn.transport.is_closing():
                return False
            if not self._open(conn):
                return False
            await conn.writable.wait()
        return True

    async def send_event(self, conn: Any, event: dict[str, Any]) -> None:
        await conn.send(event)

    def receive(self, conn: Any, receive: Any) -> QueueGet:
        return QueueGet(conn.queue)

    def cancelled(self, wait: Any) -> None:
        wait.cancel()

    def received(self, conn: Any) -> None:
        if conn.read_paused and conn.queue.empty():
            conn.read_paused = False
            conn.transport.resume_reading()

    def wake(self, conn: Any, code: int, reason: str) -> None:
        if conn.queue.empty():
            conn.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})


class _SansIO(_Uvicorn):
    __slots__ = ()
    name = "uvicorn-websockets-sansio"

    def _encode(self, conn: Any, batch: Sequence[Outbound]) -> bytes:
        protocol = conn.conn
        if not protocol.extensions:
            return batch_bytes(batch)
        for item in batch:
            if isinstance(item, str):
                protocol.send_text(item.encode())
            elif not isinstance(item, Ping):
                protocol.send_binary(item)
        return b"".join(protocol.data_to_send())


class _WSProto(_Uvicorn):
    __slots__ = ()
    name = "uvicorn-wsproto"

    def _encode(self, conn: Any, batch: Sequence[Outbound]) -> bytes:
        wsconn = conn.conn
        inner = wsconn.connection
        if inner is None or not inner._proto.extensions:
            return batch_bytes(batch)
        from wsproto.events import Message

        frames = [
            wsconn.send(Message(data=item))  # type: ignore[type-var]
            for item in batch
            if not isinstance(item, Ping)
        ]
        return b"".join(frames)


_SANSIO = _SansIO()
_WSPROTO = _WSProto()


def find(send: object, receive: object) -> tuple[Server, Any] | None:
    """uvicorn's protocol object behind ``send``, if it is one this path knows; ``None`` if
    ``send`` is not uvicorn's; ``Unknown`` (saying why) if it is, but not as tested."""
    func = getattr(send, "__func__", None)
    module = getattr(func, "__module__", "") or ""
    if not module.startswith("uvicorn.protocols.websockets."):
        return None
    conn = send.__self__  # type: ignore[attr-defined]
    server: _Uvicorn
    if module.endswith(".websockets_sansio_impl"):
        from uvicorn.protocols.websockets.websockets_sansio_impl import (
            WebSocketsSansIOProtocol as cls,
        )
        from websockets.protocol import State
        from websockets.server import ServerProtocol as proto

        server = _SANSIO
        _SansIO.open_state = State.OPEN
    elif module.endswith(".wsproto_impl"):
        from uvicorn.protocols.websockets.wsproto_impl import WSProtocol as cls  # type: ignore[assignment]
        from wsproto import WSConnection as proto  # type: ignore[assignment]
        from wsproto.connection import ConnectionState

        server = _WSPROTO
        _WSProto.open_state = ConnectionState.OPEN
    else:
        raise Unknown(f"uvicorn's {module.rpartition('.')[2]} protocol")
    if type(conn) is not cls or func is not cls.send:
        raise Unknown(f"{type(conn).__qualname__}.send, not uvicorn's {cls.__name__}.send")
    if getattr(receive, "__func__", None) is not cls.receive or receive.__self__ is not conn:  # type: ignore[attr-defined]
        raise Unknown("receive is not uvicorn's")
    if not releases_tested(server.name):
        raise Unknown(f"{server.name}: releases not tested")
    attrs_typed(
        conn,
        {
            "transport": asyncio.WriteTransport,
            "writable": asyncio.Event,
            "queue": asyncio.Queue,
            "conn": proto,
            "close_sent": bool,
            "disconnected": bool,
            "read_paused": bool,
        },
    )
    return server, conn
