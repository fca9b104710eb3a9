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
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from .._errors import TransportClosed, TransportError
from .._outbound import FinalRefusal
from ..transport import Message, Outbound, Ping, PongSignal, Transport, register_adapter

try:
    import trio
    from trio_websocket import (
        ConnectionClosed,
        ConnectionRejected,
        HandshakeError,
        WebSocketConnection,
        open_websocket_url,
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


@asynccontextmanager
async def open_client(url: str, **options: Any) -> AsyncIterator[TrioWebsocketTransport]:
    """Dial ``url`` with trio-websocket; the manager's dialer for ``backend="trio-websocket"``.

    Handshake failures are translated: an HTTP 4xx answer is a ``FinalRefusal`` (retrying
    will not help), anything else a ``TransportError``. ``options`` go to
    ``open_websocket_url`` (``connect_timeout``, ``message_queue_size``, ...).
    """
    dial = open_websocket_url(url, **options)
    try:
        ws = await dial.__aenter__()
    except ConnectionRejected as exc:
        if 400 <= exc.status_code < 500:
            raise FinalRefusal(f"handshake refused with HTTP {exc.status_code}") from exc
        raise TransportError(f"handshake refused with HTTP {exc.status_code}") from exc
    except (HandshakeError, *_IO_ERRORS, trio.TooSlowError) as exc:
        raise TransportError(f"cannot connect to {url}: {type(exc).__name__}: {exc}") from exc
    try:
        yield TrioWebsocketTransport(ws)
    except BaseException as exc:
        if not await dial.__aexit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        await dial.__aexit__(None, None, None)
