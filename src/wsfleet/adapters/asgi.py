"""wsfleet over ASGI WebSockets through Starlette, hence FastAPI too.

Importing this module registers ``starlette.websockets.WebSocket`` (FastAPI's ``WebSocket``
is the same class), so ``manager.register(websocket, ...)`` and
``manager.session(websocket, ...)`` accept what an endpoint receives. The application
accepts the WebSocket first, as FastAPI and Starlette endpoints always do; registering one
that is not accepted raises ``InvalidArgument`` rather than accepting it behind the app's
back (the app may want a subprotocol or headers)::

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        async with manager.session(websocket, websocket.query_params["id"]) as session:
            async for message in session:
                ...

How writes are coalesced
------------------------
ASGI has no synchronous write path and no batch event: every ``websocket.send`` event the
application awaits carries exactly one message, and the server decides how frames become
system calls. For the servers it knows, in the releases it was tested with (uvicorn's
websockets-sansio and wsproto protocols, hypercorn over HTTP/1.1 on asyncio), this adapter
goes past Starlette to the server's connection and writes a whole batch to its transport
with one write, in ``send_nowait`` when the server's own send would write at once, else in
``send`` after waiting as that send waits (the server's flow control); a fan-out encodes
the batch's frames once for every connection without compression. hypercorn on trio has
no synchronous write: there the adapter calls hypercorn's send itself, one event per
message. Everything else, middleware wrapping ``send`` included, takes the public path:
``send_nowait`` declines and ``send`` awaits one ASGI send per message, in order. See
``_asgi_server`` for what is recognised and why anything else falls back.

Backpressure is whatever the server applies to ``websocket.send``: hypercorn awaits its
socket write (on trio shielded from cancellation), so a peer that stops reading blocks the
writer and the manager's overflow policy evicts it.

Pings: the ASGI server's job
----------------------------
ASGI has no ping event and tells the application nothing about pongs, so this adapter can
neither send wsfleet's ``PING`` nor learn that a peer answered one. Pretending (counting a
ping as answered because the socket has not been reported closed) would mark dead peers
alive. The honest split is: the ASGI server keeps the connection alive and detects dead
peers (uvicorn's ``--ws-ping-interval``/``--ws-ping-timeout``, 20 s each by default with
its websockets implementation; hypercorn's ``websocket_ping_interval``, off by default,
sends pings but never times out a pong, so only TCP errors end a dead connection), and
reports the loss as ``websocket.disconnect``, which ends the session with ERROR; wsfleet's
``HeartbeatPolicy`` is then used with ``ping_interval=None`` and ``ping_timeout=None``
(``idle_after`` works, being based on inbound messages). Registering an ASGI WebSocket with
a manager whose heartbeat sends pings raises ``InvalidArgument`` saying so, instead of
letting every quiet client time out later. A ``PING`` that reaches ``send`` anyway is
skipped and never reported as answered.

Close codes
-----------
``websocket.disconnect`` carries the close code the server reports; the session maps it as
usual (1000/1001/1005 DISCONNECTED, anything else ERROR). Servers differ: hypercorn up to at
least 0.18 reports 1006 for every close the client starts, even a clean 1000
(pgjones/hypercorn#127), so over hypercorn a clean client close ends in ERROR. uvicorn
reports a connection lost without a close frame (a dead peer its keepalive gave up on, a
dropped TCP connection) as 1005, the code of a close frame without one; it leaves out the
event's ``reason`` then, which a close read from a frame always has, so this adapter
reports such a 1005 as 1006 (abnormal, ERROR).

When the adapter closes a socket (``close``, e.g. an eviction or the manager shutting down),
a ``receive`` waiting on it ends at once with that code rather than waiting for the peer to
answer the close (for a known server, by a ``websocket.disconnect`` put in the server's own
queue, as the server does; else by cancelling the wait). The handler then returns, and only
that makes the server drop a peer that stopped reading: hypercorn on trio cannot even write
the close frame past the stalled write, which ends only when the server closes the socket
after the application has finished.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator, Sequence
from typing import Any

import anyio

from ..errors import InvalidArgument, TransportClosed, TransportError
from ..transport import Message, Outbound, Ping, Reporter, Transport, register_adapter
from . import _asgi_hypercorn, _asgi_uvicorn
from ._asgi_server import Server, Unknown, fall_back, server_send

try:
    from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "wsfleet.adapters.asgi needs Starlette (FastAPI uses it): pip install 'wsfleet[asgi]'"
    ) from exc

__all__ = ["StarletteTransport"]

_NO_PINGS = (
    "ASGI has no ping event, so wsfleet cannot ping an ASGI WebSocket: give the manager "
    "HeartbeatPolicy(ping_interval=None, ping_timeout=None) and let the ASGI server keep "
    "connections alive (uvicorn --ws-ping-interval/--ws-ping-timeout, hypercorn "
    "websocket_ping_interval)"
)


def _disconnect_code(event: Any) -> tuple[int, str]:
    """The close code and reason of a ``websocket.disconnect`` event.

    ASGI says 1005 when the peer's close frame carried no code (a browser's plain
    ``ws.close()``), which is a clean close. uvicorn (its websockets-sansio and wsproto
    implementations) also reports a connection lost without any close frame, its own
    keepalive timeout included, as 1005, but without the event's ``reason`` field, which
    every close it reads from a frame carries. Such a 1005 is reported as 1006: a dead peer
    is an abnormal close, held for a resume like any other, not a goodbye.
    """
    code = int(event.get("code", 1005))
    if "reason" not in event:
        if code == 1005:
            return 1006, "connection lost"
        return code, ""
    return code, str(event.get("reason") or "")


class _Receiving(Coroutine[Any, Any, Message]):
    """``StarletteTransport.receive`` from a known server: the wait in the server's queue,
    then the event's message, as a small object rather than a coroutine frame (every idle
    connection keeps one waiting for its whole life).

    ``wait`` is what the server's strategy gave: an awaitable of the queue's next event
    (``QueueGet``), or on trio the channel's own ``receive()`` coroutine. An exception thrown
    in (a cancellation) reaches that coroutine, or undoes the queue wait, and goes on.
    """

    __slots__ = ("_transport", "_wait")

    def __init__(self, transport: StarletteTransport, wait: Any) -> None:
        self._transport = transport
        self._wait = wait

    def __await__(self) -> Generator[Any, None, Message]:
        return self  # type: ignore[return-value]

    def __next__(self) -> Any:
        return self.send(None)

    def send(self, value: Any) -> Any:
        try:
            return self._wait.send(value)
        except StopIteration as stop:
            raise StopIteration(self._transport._received(stop.value)) from None

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        wait = self._wait
        error = typ if val is None and isinstance(typ, BaseException) else None
        inner_throw = getattr(wait, "throw", None)
        if inner_throw is not None:  # a coroutine: it unwinds its own wait
            try:
                if error is not None:
                    return inner_throw(error)
                return inner_throw(typ, val, tb)
            except StopIteration as stop:
                raise StopIteration(self._transport._received(stop.value)) from None
        server = self._transport._server
        assert server is not None
        server.cancelled(wait)
        if error is None:
            error = typ(val) if val is None or not isinstance(val, BaseException) else val
        raise error.with_traceback(tb) if tb is not None else error

    def close(self) -> None:
        wait = self._wait
        if hasattr(wait, "close"):
            wait.close()
        else:
            server = self._transport._server
            assert server is not None
            server.cancelled(wait)


def _find_server(websocket: WebSocket) -> tuple[Server | None, Any]:
    """The known server behind the socket and its connection object, or ``(None, None)``
    after logging (once per reason) why the public path is taken."""
    send = server_send(websocket._send)
    receive = websocket._receive
    try:
        for find in (_asgi_uvicorn.find, _asgi_hypercorn.find):
            found = find(send, receive)
            if found is not None:
                return found
    except (Unknown, AttributeError, ValueError) as exc:
        fall_back(str(exc) or type(exc).__name__)
        return None, None
    fall_back(f"send is {getattr(send, '__qualname__', type(send).__qualname__)}")
    return None, None


class StarletteTransport(Transport):
    """An accepted Starlette (or FastAPI) ``WebSocket`` as a wsfleet ``Transport``."""

    __slots__ = ("_closed", "_conn", "_receiving", "_server", "connection", "websocket")

    can_ping = False
    no_ping_reason = _NO_PINGS

    def __init__(self, websocket: WebSocket) -> None:
        state = websocket.application_state
        if state is WebSocketState.CONNECTING:
            raise InvalidArgument(
                "accept the WebSocket before registering it: await websocket.accept()"
            )
        if state is WebSocketState.RESPONSE:
            raise InvalidArgument("this WebSocket was answered with an HTTP response")
        self.websocket = websocket
        self.connection: Reporter | None = None
        #: (code, reason) once the socket is known to be closed, by either side.
        self._closed: tuple[int, str] | None = None
        #: The scope of a ``receive`` in progress, which ``close`` cancels (public path).
        self._receiving: anyio.CancelScope | None = None
        #: For a known server (see ``_asgi_server``): how to write to it, and its connection.
        server, conn = _find_server(websocket)
        self._server: Server | None = server
        self._conn: Any = conn

    def __repr__(self) -> str:
        client = self.websocket.client
        where = f"{client.host}:{client.port}" if client is not None else "?"
        return f"<StarletteTransport {where}>"

    @property
    def direct(self) -> str | None:
        """The server implementation written to directly (a key of ``TESTED``), or ``None``
        when every message is an ASGI event through Starlette."""
        return None if self._server is None else self._server.name

    def _closed_error(self, fallback: str) -> TransportClosed:
        if self._closed is None:
            # Closed by someone else (the app or another receiver): the code is not known.
            return TransportClosed(1006, fallback)
        return TransportClosed(*self._closed)

    # -- writes: the whole batch at once to a known server, else one ASGI event per message --

    def send_nowait(self, batch: Sequence[Outbound]) -> bool:
        server = self._server
        if server is None or self._closed is not None:
            return False
        try:
            return server.write_nowait(self._conn, batch)
        except OSError as exc:
            raise TransportError(f"write failed: {exc}") from exc

    async def send(self, batch: Sequence[Outbound]) -> None:
        if self._closed is not None:
            raise TransportClosed(*self._closed)
        server = self._server
        try:
            if server is not None and await server.write(self._conn, batch):
                return
        except TransportClosed:  # closed in the middle of the batch
            raise self._closed_error("closed") from None
        except OSError as exc:
            raise TransportError(f"write failed: {exc}") from exc
        # Public path, and a known server that would no longer write: its send says why.
        send = self.websocket.send
        try:
            for item in batch:
                if isinstance(item, Ping):
                    continue  # not expressible in ASGI; see the module docstring
                if isinstance(item, str):
                    await send({"type": "websocket.send", "text": item})
                else:
                    await send({"type": "websocket.send", "bytes": item})
        except WebSocketDisconnect as exc:  # Starlette's translation of the server's OSError
            self._closed = self._closed or (exc.code, exc.reason)
            raise TransportClosed(exc.code, exc.reason) from exc
        except RuntimeError as exc:  # Starlette refuses a send once the socket is closed
            if self.websocket.application_state is WebSocketState.DISCONNECTED:
                raise self._closed_error("closed by the application") from exc
            raise TransportError(f"write failed: {exc}") from exc
        except OSError as exc:
            raise TransportError(f"write failed: {exc}") from exc

    # -- reads and close -----------------------------------------------------------------------

    def receive(self) -> Coroutine[Any, Any, Message]:
        if self._closed is not None:
            return self._raise_closed()
        server = self._server
        if server is None:
            return self._receive_public()
        # From the server's own queue, with no cancel scope: ``close`` wakes this wait by
        # putting a disconnect in that queue, as the server does when the socket closes.
        return _Receiving(self, server.receive(self._conn, self.websocket._receive))

    async def _raise_closed(self) -> Message:
        raise self._closed_error("closed")

    def _received(self, event: Any) -> Message:
        """The message of an event a known server's queue gave (see ``_Receiving``)."""
        assert self._server is not None
        self._server.received(self._conn)
        if event["type"] == "websocket.disconnect":
            self.websocket.client_state = WebSocketState.DISCONNECTED
        return self._message(event)

    async def _receive_public(self) -> Message:
        event: Any = None
        with anyio.CancelScope() as scope:
            self._receiving = scope
            try:
                event = await self.websocket.receive()
            except WebSocketDisconnect as exc:
                self._closed = self._closed or (exc.code, exc.reason)
                raise TransportClosed(exc.code, exc.reason) from exc
            except RuntimeError as exc:  # received from elsewhere, or an unexpected event
                if self.websocket.client_state is WebSocketState.DISCONNECTED:
                    raise self._closed_error("disconnect received elsewhere") from exc
                raise TransportError(f"receive failed: {exc}") from exc
            except OSError as exc:
                raise TransportError(f"receive failed: {exc}") from exc
            finally:
                self._receiving = None
        if event is None:  # ``close`` cancelled the wait
            raise self._closed_error("closed")
        return self._message(event)

    def _message(self, event: Any) -> Message:
        kind = event["type"]
        if kind == "websocket.receive":
            text = event.get("text")
            if text is not None:
                return str(text)
            data = event.get("bytes")
            if data is not None:
                return bytes(data)
            raise TransportError("websocket.receive event with neither text nor bytes")
        if kind == "websocket.disconnect":
            code, reason = _disconnect_code(event)
            self._closed = self._closed or (code, reason)
            raise TransportClosed(code, reason)
        raise TransportError(f"unexpected ASGI event {kind!r}")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closed is None:
            self._closed = (code, reason)
        ws = self.websocket
        try:
            if (
                ws.application_state is WebSocketState.CONNECTED
                and ws.client_state is not WebSocketState.DISCONNECTED
            ):
                await ws.close(code, reason)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the peer is gone already: closed is closed
        finally:
            # The handler's receive would wait for the peer to answer the close, which
            # a stalled or vanished peer never does.
            if self._server is not None:
                self._server.wake(self._conn, *self._closed)
            elif self._receiving is not None:
                self._receiving.cancel()


register_adapter(WebSocket, StarletteTransport)
