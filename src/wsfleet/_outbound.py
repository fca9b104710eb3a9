"""Outbound (client) connections that the manager dials, and redials by its retry policy.

The connection is born RECONNECTING (its first dial is under way). Each attempt runs a
*holder* task in the manager's task group: it opens the WebSocket with the backend's client,
reports the new transport (-> CONNECTED), then keeps reading from it for as long as it lives,
handing messages to ``on_message``. When the socket closes or fails, the holder reports it
(-> ERROR, or DISCONNECTED for a close that says "do not come back") and ends; the retry
policy then schedules the next attempt. Messages sent while the connection is down wait in
its bounded queue and go out, in order, once it is back.

Close codes that say "don't come back" end the connection without retrying: 1008 (policy
violation) and the application range 4000-4999; an HTTP 4xx answer to the handshake likewise.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import anyio
import anyio.abc

from ._connection import Connection
from .errors import InvalidArgument, TransportClosed, TransportError, WrongType
from .fsm.states import ConnectionState
from .policies.retry import RetryPolicy
from .transport import Message, Outbound, Transport

if TYPE_CHECKING:
    from ._manager import ConnectionManager

__all__ = ["Dialer", "OutboundSocket", "dial", "make_reconnector"]

R = ConnectionState.RECONNECTING

logger = logging.getLogger("wsfleet")

MessageHandler = Callable[[Connection, Message], Awaitable[None] | None]


class Dialer(Protocol):
    """What a client backend provides: open a WebSocket, as a transport, for a block."""

    def __call__(self, url: str, **options: Any) -> AbstractAsyncContextManager[Transport]: ...


class OutboundSocket:
    """The handle an outbound connection is registered under (its "socket")."""

    __slots__ = ("__weakref__", "url")

    def __init__(self, url: str) -> None:
        self.url = url

    def __repr__(self) -> str:
        return f"<OutboundSocket {self.url}>"


class Unconnected(Transport):
    """Stands in for the socket while none is open; the manager never writes to it."""

    def send_nowait(self, batch: Sequence[Outbound]) -> bool:
        return False

    async def send(self, batch: Sequence[Outbound]) -> None:
        raise TransportError("not connected")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await anyio.lowlevel.checkpoint()


async def _deliver(handler: MessageHandler | None, conn: Connection, message: Message) -> None:
    if handler is None:
        return
    try:
        result = handler(conn, message)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("on_message handler %r raised", handler)


async def holder(
    manager: ConnectionManager,
    conn: Connection,
    dialer: Dialer,
    url: str,
    options: dict[str, Any],
    on_message: MessageHandler | None,
    decided: anyio.Event,
    *,
    task_status: anyio.abc.TaskStatus[Transport] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Open, report, read until it ends, report the end. See the module docstring.

    The attempt installs the transport (or turns it down) after ``started``; until then
    ``conn.transport`` is still the old one, and a close seen that early would be reported
    to nobody. So nothing is read before the attempt has decided (``decided``). Once
    started, a failure is reported, never raised: it would end the manager's task group.
    """
    opened: Transport | None = None
    try:
        async with dialer(url, **options) as transport:
            opened = transport
            task_status.started(transport)
            await decided.wait()
            try:
                while conn.registered and conn.transport is transport:
                    message = await transport.receive()
                    conn.touch()
                    await _deliver(on_message, conn, message)
            except TransportClosed as closed:
                if conn.transport is transport:
                    manager._outbound_closed(conn, closed.code, closed.reason)
            except TransportError as exc:
                if conn.transport is transport:
                    conn.failed(exc)
    except Exception as exc:  # from closing the client, after it was reported open
        if opened is None:
            raise  # the dial failed: the attempt reports it
        logger.debug("closing %r failed: %r", opened, exc)
        if conn.transport is opened:
            conn.failed(exc)


def make_reconnector(
    manager: ConnectionManager,
    dialer: Dialer,
    url: str,
    options: dict[str, Any],
    on_message: MessageHandler | None,
) -> Callable[[Connection], Awaitable[Transport]]:
    """The ``Reconnector`` of an outbound connection: one holder task per attempt."""

    async def attempt(conn: Connection) -> Transport:
        tg = manager._running()
        decided = anyio.Event()
        transport: Transport = await tg.start(
            holder, manager, conn, dialer, url, options, on_message, decided
        )
        # The holder wakes at the next checkpoint at the earliest: by then the caller
        # (``Timers.attempt``) has installed or refused the transport, without awaiting.
        decided.set()
        return transport

    return attempt


def _host(url: str) -> str | None:
    """The host of ``url``; ``None`` if it has none or its port is not a port number."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port out of range or not a number)
    except ValueError:
        return None
    return parts.hostname


async def dial(
    manager: ConnectionManager,
    url: str,
    identifier: str,
    retry_policy: RetryPolicy | None,
    backend: str,
    on_message: MessageHandler | None,
    options: dict[str, Any],
) -> Connection:
    """``manager.connect``: register the connection (RECONNECTING) and start its first dial."""
    if not isinstance(url, str) or not url.startswith(("ws://", "wss://")) or not _host(url):
        raise InvalidArgument(f"url must be a ws:// or wss:// URL with a host, got {url!r}")
    if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
        raise WrongType(f"retry_policy must be a RetryPolicy, got {retry_policy!r}")
    dialer: Dialer
    if backend == "websockets":
        from .adapters.websockets import open_client as dialer
    elif backend == "trio-websocket":
        import sniffio  # trio needs it, so it is there whenever the adapter imports

        from .adapters.trio_websocket import open_client as dialer

        if sniffio.current_async_library() != "trio":
            raise InvalidArgument("backend 'trio-websocket' runs on trio only")
    else:
        raise InvalidArgument(f"backend: 'websockets' or 'trio-websocket', not {backend!r}")
    socket = OutboundSocket(url)
    conn = manager._register(
        socket, identifier, transport=Unconnected(), initial=R, retry_policy=retry_policy
    )
    conn.reconnector = make_reconnector(manager, dialer, url, options, on_message)
    manager._spawn(manager._timers.attempt, conn, conn.reconnector, name=f"wsfleet dial {url}")
    await anyio.lowlevel.checkpoint()
    return conn
