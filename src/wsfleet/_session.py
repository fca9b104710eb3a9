"""A connection for the whole life of an application's WebSocket handler.

Every adapter's server side has the same shape::

    async with manager.session(websocket, "alice") as session:
        async for message in session:
            ...

Entering registers the socket (CONNECTED). Iterating receives through the transport and
reports each message to the heartbeat/idle logic. A close from the peer ends the iteration:
1000 and 1001 move the connection to DISCONNECTED, any other code (1006 for a lost TCP
connection, 1009 for an oversize message, 1011 for a timeout ...) to ERROR. Leaving the
block closes the socket if it is still open and unregisters the connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING

import anyio

from ._connection import Connection
from ._errors import TransportClosed, TransportError
from .fsm.states import ConnectionState
from .transport import Message

if TYPE_CHECKING:
    from ._manager import ConnectionManager

__all__ = ["Session", "open_session"]

_OPEN = frozenset((ConnectionState.CONNECTED, ConnectionState.IDLE))


class Session:
    """An async iterator over the messages a registered socket receives."""

    __slots__ = ("close_code", "connection", "resumed")

    def __init__(self, connection: Connection, resumed: bool = False) -> None:
        self.connection = connection
        #: The close code that ended the iteration, once it has ended.
        self.close_code: int | None = None
        #: Whether this socket took over a held session (its groups and buffered messages).
        self.resumed = resumed

    @property
    def identifier(self) -> str:
        return self.connection.identifier

    @property
    def resume_token(self) -> str | None:
        """Hand this to the client: passed back to ``manager.session(..., resume=token)`` by
        the next socket, it takes the session over. ``None`` without a retry policy."""
        return self.connection.resume_token

    def __aiter__(self) -> Session:
        return self

    async def __anext__(self) -> Message:
        conn = self.connection
        if self.close_code is not None or not conn.registered or conn.state not in _OPEN:
            raise StopAsyncIteration
        try:
            message = await conn.transport.receive()
        except TransportClosed as closed:
            self.close_code = closed.code
            conn.closed(closed.code, closed.reason)
            raise StopAsyncIteration from None
        except TransportError as exc:
            self.close_code = 1006
            conn.failed(exc)
            raise StopAsyncIteration from None
        conn.touch()
        return message

    async def send(self, message: Message) -> int:
        """Queue ``message`` for this socket alone (it goes through the same bounded queue)."""
        return await self.connection.send(message)


@asynccontextmanager
async def open_session(
    manager: ConnectionManager, socket: object, identifier: str, resume: str | None = None
) -> AsyncIterator[Session]:
    """Register ``socket`` for the duration of the block; see the module docstring."""
    conn = None if resume is None else manager._take_over(socket, identifier, resume)
    resumed = conn is not None
    if conn is None:
        conn = manager.register(socket, identifier)
    try:
        yield Session(conn, resumed)
    finally:
        if conn.registered and conn.socket is socket and not manager._hold(conn):
            with anyio.CancelScope(shield=True):
                if conn.state in _OPEN:
                    with anyio.move_on_after(manager.close_timeout), suppress(Exception):
                        await conn.transport.close(1000, "")  # the peer may be gone already
                manager.unregister(socket)
