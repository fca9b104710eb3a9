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

The identifier usually comes from the client (a query parameter, a token's subject), so a
bad one is the client's mistake, not the server's: the session is *refused*. The socket is
closed with 1008 and the reason, one line is logged, and the block runs with a session that
yields nothing; a wsfleet error the block raises because that identifier is not registered
(``add_to_group(bad, ...)``) ends the block quietly. Nothing reaches the server's task group:
on trio, an exception escaping one handler would end the whole server.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from types import TracebackType
from typing import Protocol

import anyio

from ..closecodes import POLICY_VIOLATION
from ..errors import (
    InvalidArgument,
    TransportClosed,
    TransportError,
    UnknownSocket,
    WsfleetError,
)
from ..fsm.states import WRITABLE
from ..presence import check_meta
from ..transport import Message, Transport
from .connection import Connection
from .registry import check_name

__all__ = ["Session", "SessionBlock", "SessionHost", "close_reason", "open_session"]

logger = logging.getLogger("wsfleet")


class SessionHost(Protocol):
    """What a session needs from the runtime that holds its connection."""

    close_timeout: float

    def check(self) -> None:
        """Refuse new work from another thread or outside the manager's block."""

    def transport_for(self, socket: object) -> Transport: ...

    def take_over(self, socket: object, identifier: str, token: str) -> Connection | None: ...

    def register(self, socket: object, identifier: str, *, meta: object = None) -> Connection: ...

    def hold(self, conn: Connection) -> bool: ...

    def forget(self, conn: Connection, reason: str) -> None: ...

    def admit(self, conn: Connection, message: Message) -> tuple[bool, float]:
        """Whether a received message goes on to the application, and how long the sender
        must not be read first (the rate limits: ``Inbound.admit``)."""

    def lost(self, conn: Connection, admitted: bool) -> None:
        """A received message the application will not see: its connection was let go
        while it waited (``admitted``: it had passed ``admit``) or as it arrived."""


class InboundGate(Protocol):
    """What a session hands each received message to (the runtime's ``Inbound``)."""

    def admit(self, conn: Connection, message: Message) -> tuple[bool, float]: ...

    def lost(self, conn: Connection, admitted: bool) -> None: ...


class Session:
    """An async iterator over the messages a registered socket receives."""

    __slots__ = (
        "_connection",
        "_gate",
        "_identifier",
        "_transport",
        "close_code",
        "close_reason",
        "refused",
        "resumed",
    )

    def __init__(
        self,
        connection: Connection | None,
        resumed: bool = False,
        *,
        identifier: str = "",
        refused: str | None = None,
        gate: InboundGate | None = None,
    ) -> None:
        self._connection = connection
        #: The runtime's inbound gate (counts, rate limits); ``None`` lets every message by.
        self._gate = gate
        #: This session's own socket: once another socket takes the connection over (a
        #: resume), this session has nothing more to receive and nothing to report.
        self._transport = None if connection is None else connection.transport
        self._identifier = identifier if connection is None else connection.identifier
        #: The close code that ended the iteration, once it has ended (1008 when refused).
        self.close_code: int | None = None if refused is None else 1008
        #: The reason that came with ``close_code`` ("" when the close frame had none).
        self.close_reason: str | None = refused
        #: Whether this socket took over a held session (its groups and buffered messages).
        self.resumed = resumed
        #: Why the session was refused (its socket closed with 1008); ``None`` if it was not.
        self.refused = refused

    @property
    def connection(self) -> Connection:
        """The registered connection; ``UnknownSocket`` for a refused session (it has none)."""
        if self._connection is None:
            raise UnknownSocket(f"this session was refused ({self.refused}): it has no connection")
        return self._connection

    @property
    def identifier(self) -> str:
        return self._identifier

    @property
    def resume_token(self) -> str | None:
        """Hand this to the client: passed back to ``manager.session(..., resume=token)`` by
        the next socket, it takes the session over. ``None`` without a retry policy."""
        return None if self._connection is None else self._connection.resume_token

    def __aiter__(self) -> Session:
        return self

    def _current(self) -> bool:
        """Whether the session's socket is still the live one of a writable connection."""
        conn = self._connection
        return (
            conn is not None
            and self.close_code is None
            and conn.registered
            and conn.transport is self._transport
            and conn.state in WRITABLE
        )

    async def __anext__(self) -> Message:
        conn = self._connection
        transport = self._transport
        if conn is None or transport is None:
            raise StopAsyncIteration
        while True:
            if not self._current():
                raise StopAsyncIteration
            # Received here rather than in a helper coroutine: an idle connection's handler
            # waits in this frame for its whole life, and a second frame would double that.
            try:
                message = await transport.receive()
            except TransportClosed as closed:
                self.close_code = closed.code
                self.close_reason = closed.reason
                if conn.transport is transport:  # not taken over meanwhile: it reports for it
                    conn.closed(closed.code, closed.reason)
                raise StopAsyncIteration from None
            except TransportError as exc:
                self.close_code = 1006
                self.close_reason = str(exc)
                if conn.transport is transport:
                    conn.failed(exc)
                raise StopAsyncIteration from None
            gate = self._gate
            if not self._current():
                # It arrived as the connection was evicted, unregistered or taken over: the
                # application must not act for a client the manager let go (its identifier
                # may be in no group any more), so the message ends the iteration instead,
                # counted as lost.
                if gate is not None:
                    gate.lost(conn, admitted=False)
                raise StopAsyncIteration
            conn.touch()
            if gate is None:
                return message
            deliver, pause = gate.admit(conn, message)
            if pause:
                # Over its rate limit: the sender is not read until it is back within it, so
                # its kernel buffers fill and TCP slows it down (reading a flood only to drop
                # it would cost the server as much as delivering it).
                await anyio.sleep(pause)
                if deliver and not self._current():
                    gate.lost(conn, admitted=True)  # held back, and let go meanwhile
                    raise StopAsyncIteration
            if deliver:
                return message
            if not self._current():
                # The gate cut the sender off (its rate limit, a message too big): the close
                # that started must reach the peer before the handler's exit closes the
                # socket with a plain 1000. Closing again here waits for that one (a close
                # is idempotent) without reading the rest of a flood through this loop.
                code, reason = conn.cut_off or (POLICY_VIOLATION, RATE_LIMITED)
                self.close_code, self.close_reason = code, reason
                with anyio.move_on_after(CUT_OFF_WAIT, shield=True), suppress(Exception):
                    await transport.close(code, reason)
                raise StopAsyncIteration
            # Dropped and counted: the next one is read.

    async def send(self, message: Message) -> int:
        """Queue ``message`` for this socket alone (it goes through the same bounded queue).

        Returns 0 for a refused session: there is no connection to queue for.
        """
        if self._connection is None:
            return 0
        return await self._connection.send(message)


#: The close reason of a sender cut off by ``RateLimitAction.CLOSE``.
RATE_LIMITED = "rate limit"
#: How long a session cut off by its rate limit waits for its close to complete.
CUT_OFF_WAIT = 10.0

#: The longest close reason the WebSocket protocol allows, in bytes of UTF-8.
MAX_CLOSE_REASON = 123


def close_reason(text: str) -> str:
    """``text`` cut to what fits in a close frame, on a character boundary."""
    data = text.encode("utf-8", "replace")
    if len(data) <= MAX_CLOSE_REASON:
        return text
    return data[: MAX_CLOSE_REASON - 3].decode("utf-8", "ignore") + "..."


async def _refuse(host: SessionHost, socket: object, reason: str) -> None:
    """Close a socket whose session is refused with 1008; the reason tells the client why."""
    logger.info("refused a session: %s", reason)
    transport = host.transport_for(socket)
    with (
        anyio.CancelScope(shield=True),
        anyio.move_on_after(host.close_timeout),
        suppress(Exception),  # the peer may be gone already
    ):
        await transport.close(POLICY_VIOLATION, reason)


class SessionBlock:
    """The ``async with`` of ``open_session``: registers on entry, cleans up on exit.

    A small class rather than an ``@asynccontextmanager`` generator: one is held by every
    connection's handler for the connection's whole life, and a suspended generator (its
    frame, its context manager, the event loop's record of it) costs several hundred bytes
    per connection more than these few slots.
    """

    __slots__ = ("_conn", "_host", "_identifier", "_meta", "_refused", "_resume", "_socket")

    def __init__(
        self,
        host: SessionHost,
        socket: object,
        identifier: str,
        resume: str | None,
        meta: object = None,
    ) -> None:
        self._host = host
        self._meta = meta
        self._socket = socket
        self._identifier = identifier
        self._resume = resume
        self._conn: Connection | None = None
        self._refused: str | None = None

    async def __aenter__(self) -> Session:
        host = self._host
        socket = self._socket
        identifier = self._identifier
        host.check()
        meta = None if self._meta is None else check_meta(self._meta)  # the application's
        try:
            check_name("identifier", identifier)
        except InvalidArgument as exc:  # a bad value came from the client (a bad type is a bug)
            reason = close_reason(f"invalid identifier: {exc}")
            await _refuse(host, socket, reason)
            self._refused = reason
            return Session(None, identifier=identifier, refused=reason)
        resume = self._resume
        if resume is not None and not isinstance(resume, str):
            resume = None  # whatever the client sent, it names no held session
        conn = None if resume is None else host.take_over(socket, identifier, resume)
        resumed = conn is not None
        if conn is None:
            conn = host.register(socket, identifier, meta=meta)
        self._conn = conn
        return Session(conn, resumed, gate=host)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._refused is not None:
            if isinstance(exc, WsfleetError):  # the block used the identifier it was refused for
                logger.debug("a refused session's block ended with %r", exc)
                return True
            return False
        conn = self._conn
        if conn is None:
            return False
        host = self._host
        if conn.registered and conn.socket is self._socket and not host.hold(conn):
            with anyio.CancelScope(shield=True):
                if conn.state in WRITABLE:
                    with anyio.move_on_after(host.close_timeout), suppress(Exception):
                        await conn.transport.close(1000, "")  # the peer may be gone already
                host.forget(conn, "unregistered")
        return False


def open_session(
    host: SessionHost,
    socket: object,
    identifier: str,
    resume: str | None = None,
    meta: object = None,
) -> SessionBlock:
    """Register ``socket`` for the duration of the block; see the module docstring.

    ``meta``: the identity's presence metadata (``register``); a resumed session keeps
    the metadata its identity has."""
    return SessionBlock(host, socket, identifier, resume, meta)
