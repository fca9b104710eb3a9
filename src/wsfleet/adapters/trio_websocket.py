"""wsfleet over trio-websocket (``trio_websocket.WebSocketConnection``), on trio.

Importing this module registers ``WebSocketConnection``, so ``manager.register(ws, ...)`` and
``manager.session(ws, ...)`` accept the connection that ``await request.accept()`` returns in a
``serve_websocket`` handler (or a client connection from ``open_websocket_url``).

How writes go out, and why they are not coalesced
-------------------------------------------------
trio-websocket (checked against 0.12.2) keeps its wsproto connection, its stream and its send
lock private. Its public write calls are ``send_message``, ``ping``, ``pong`` and ``aclose``;
each serializes ONE wsproto event and awaits ONE ``stream.send_all`` under the connection's
send lock (``WebSocketConnection._send``). No public call takes several messages, and none
returns frame bytes for the caller to write itself. Coalescing a batch into one ``send_all``
would mean serializing through ``ws._wsproto``, writing to ``ws._stream`` under
``ws._stream_lock`` and copying ``_send``'s abort-on-broken-stream handling: three private
attributes and a private contract. So this adapter does not coalesce: ``send`` awaits one
``send_message`` per message, in order (one ``send_all``, hence one system call, each).
What that costs, measured on loopback with bursts of 100 messages of 64 bytes to one
client in another process: about 16-17 us of server CPU per message this way, against
2.4-2.6 us when the same burst goes out in one ``send_all`` through those private attributes.
``send_nowait`` keeps the default ``False``: trio has no synchronous write path, so every
batch is written by the manager's writer task. Users who need coalesced writes on trio can
use ``wsfleet.adapters.websockets`` over websockets' own trio implementation, which exposes
its sans-I/O protocol and lets a batch go out in one ``send_all``.

How pings go out without waiting for the pong
---------------------------------------------
``WebSocketConnection.ping()`` sends the ping and then waits for its pong, and it never wakes
if the connection closes first. The manager must not block its writer on a pong, and a task
per ping would outlive the transport when no pong comes (nothing cancels it). ``ping()`` is
two steps: remember the payload in ``ws._pings`` (the reader task calls ``.set()`` on what it
finds there when the matching pong arrives, and on the entries of earlier pings the peer
skipped), then send the frame with ``ws._send``. This adapter does those two steps itself and
registers a small object whose ``set()`` reports ``touch(pong=True)`` instead of an event to
wait on: no task, no wait, the ping stays in its place in the batch, and nothing is left to
cancel when the socket goes away. That is the only private API used (``_pings`` and
``_send``); ``tests/adapters/test_trio_websocket_adapter.py`` pins both.

Closing
-------
trio-websocket reports a close it initiated itself as code 1000 whatever code it sent, so
after ``close(code, reason)`` this transport reports the code and reason it closed with.
trio-websocket has no keepalive of its own: wsfleet's ``HeartbeatPolicy`` does the pinging.

Client connections (``open_client``, the dialer of ``manager.connect``) open their TCP
stream themselves and give it to ``wrap_client_stream``, so that it is always closed and the
handshake always bounded; ``open_client``'s docstring says what ``open_websocket_url`` gets
wrong there.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

from ..errors import FinalRefusal, TransportClosed, TransportError
from ..transport import Message, Outbound, Ping, PongSignal, Transport, register_adapter

try:
    import trio
    from trio_websocket import (
        ConnectionClosed,
        ConnectionRejected,
        HandshakeError,
        WebSocketConnection,
        wrap_client_stream,
    )
    from wsproto.events import Ping as PingEvent
    from wsproto.utilities import LocalProtocolError
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without the extra
    raise ImportError(
        "wsfleet.adapters.trio_websocket needs trio-websocket: pip install 'wsfleet[trio]'"
    ) from exc

__all__ = ["TrioWebsocketTransport", "open_client"]

#: What a write or a close may raise besides ``ConnectionClosed`` when the socket breaks.
_IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, LocalProtocolError)
#: trio-websocket's default ``connect_timeout``, in seconds.
_CONNECT_TIMEOUT = 60.0


class TrioWebsocketTransport(Transport):
    """A trio-websocket ``WebSocketConnection`` as a wsfleet ``Transport``."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        #: The close this side initiated, reported instead of trio-websocket's 1000.
        self._local_close: TransportClosed | None = None

    def __repr__(self) -> str:
        return f"<TrioWebsocketTransport {self.ws}>"

    def _closed(self, exc: ConnectionClosed) -> TransportClosed:
        if self._local_close is not None:
            return self._local_close
        reason = exc.reason
        if reason is None:
            return TransportClosed(1006, "connection lost")
        return TransportClosed(int(reason.code), reason.reason or "")

    # -- writes ----------------------------------------------------------------------------

    async def send(self, batch: Sequence[Outbound]) -> None:
        ws = self.ws
        try:
            for item in batch:
                if isinstance(item, Ping):
                    await self._ping()
                else:
                    await ws.send_message(item)
        except ConnectionClosed as exc:
            raise self._closed(exc) from exc
        except _IO_ERRORS as exc:
            raise TransportError(f"write failed: {type(exc).__name__}: {exc}") from exc

    async def _ping(self) -> None:
        """What ``ws.ping()`` does, minus waiting for the pong (see the module docstring)."""
        ws = self.ws
        if ws.closed is not None:
            raise ConnectionClosed(ws.closed)
        pending: dict[bytes, Any] = ws._pings
        payload = random.getrandbits(32).to_bytes(4, "big")
        while payload in pending:
            payload = random.getrandbits(32).to_bytes(4, "big")
        pending[payload] = PongSignal(self)
        await ws._send(PingEvent(payload=payload))

    # -- reads and close -------------------------------------------------------------------

    async def receive(self) -> Message:
        try:
            return await self.ws.get_message()
        except ConnectionClosed as exc:
            raise self._closed(exc) from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        ws = self.ws
        if ws.closed is None and self._local_close is None:
            self._local_close = TransportClosed(code, reason)
        try:
            await ws.aclose(code, reason or None)
        except (ConnectionClosed, *_IO_ERRORS):
            pass  # already closed, or the peer went away meanwhile


register_adapter(WebSocketConnection, TrioWebsocketTransport)


def _target(url: str, ssl_context: ssl.SSLContext | None) -> tuple[str, int, str, Any]:
    """Host, port, resource (path and query) and TLS context (``None``: plain TCP) of ``url``."""
    parts = urlsplit(url)
    tls = parts.scheme == "wss"
    if tls and ssl_context is None:
        ssl_context = ssl.create_default_context()
    host = parts.hostname
    if parts.scheme not in ("ws", "wss") or host is None:
        raise ValueError(f"not a WebSocket URL: {url!r}")
    port = parts.port if parts.port is not None else (443 if tls else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return host, port, resource, ssl_context if tls else None


def _refusal(url: str, exc: BaseException) -> TransportError:
    if isinstance(exc, ConnectionRejected):
        text = f"handshake refused with HTTP {exc.status_code}"
        return FinalRefusal(text) if 400 <= exc.status_code < 500 else TransportError(text)
    return TransportError(f"cannot connect to {url}: {type(exc).__name__}: {exc}")


@asynccontextmanager
async def open_client(url: str, **options: Any) -> AsyncIterator[TrioWebsocketTransport]:
    """Dial ``url`` with trio-websocket; the manager's dialer for ``backend="trio-websocket"``.

    Handshake failures are translated: an HTTP 4xx answer is a ``FinalRefusal`` (retrying
    will not help), anything else a ``TransportError``. ``options`` are those of
    ``open_websocket_url`` (``connect_timeout``, ``disconnect_timeout``, ``ssl_context``,
    ``message_queue_size`` ...).

    This opens the TCP stream itself and hands it to trio-websocket's ``wrap_client_stream``
    rather than using ``open_websocket_url``, which (in 0.12) leaves the client's TCP socket
    open after a close the server started or an HTTP refusal, and never returns from a
    server that accepts TCP but does not answer the handshake (its ``connect_timeout``
    fires, then it waits for its reader task, which waits for the server). Here the stream
    is closed on the way out whatever happened, and the handshake is bounded by
    ``connect_timeout``.
    """
    host, port, resource, tls = _target(url, options.pop("ssl_context", None))
    timeout = options.pop("connect_timeout", _CONNECT_TIMEOUT)
    close_timeout = options.pop("disconnect_timeout", _CONNECT_TIMEOUT)
    deadline = trio.current_time() + timeout
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
    try:
        with trio.fail_at(deadline):
            if tls is None:
                stream = await trio.open_tcp_stream(host, port)
            else:
                stream = await trio.open_ssl_over_tcp_stream(
                    host, port, ssl_context=tls, https_compatible=True
                )
    except (*_IO_ERRORS, trio.TooSlowError) as exc:
        raise _refusal(url, exc) from exc
    failure: TransportError | None = None
    try:
        try:
            async with trio.open_nursery() as nursery:  # trio-websocket's reader task
                ws: WebSocketConnection | None = None
                with trio.move_on_at(deadline):
                    header = host if port in (80, 443) else f"{host}:{port}"
                    ws = await wrap_client_stream(nursery, stream, header, resource, **options)
                if ws is None:
                    failure = TransportError(
                        f"cannot connect to {url}: no handshake within {timeout} s"
                    )
                    nursery.cancel_scope.cancel()
                else:
                    try:
                        yield TrioWebsocketTransport(ws)
                    finally:
                        with trio.move_on_after(close_timeout, shield=True):
                            await ws.aclose()
                        nursery.cancel_scope.cancel()
        except* (HandshakeError, *_IO_ERRORS) as group:  # raised by the reader task
            failure = _refusal(url, group.exceptions[0])
    finally:
        with trio.CancelScope(shield=True), suppress(*_IO_ERRORS):
            await stream.aclose()
    if failure is not None:
        raise failure
