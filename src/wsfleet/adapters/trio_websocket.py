"""wsfleet over trio-websocket (``trio_websocket.WebSocketConnection``), on trio.

Importing this module registers ``WebSocketConnection``, so ``manager.register(ws, ...)`` and
``manager.session(ws, ...)`` accept the connection that ``await request.accept()`` returns in a
``serve_websocket`` handler (or a client connection from ``open_websocket_url``).

How a batch goes out
--------------------
trio-websocket's public write calls take one message each: ``send_message`` serializes one
wsproto event and awaits one ``stream.send_all`` under the connection's send lock
(``WebSocketConnection._send``). Through them, a fan-out costs a task switch and several
trio checkpoints per message and per connection: more server CPU than the plain loop
(``for ws in clients: await ws.send_message(m)``) it is meant to replace. So the adapter
writes whole batches itself, through what ``_send`` uses: the wsproto connection
(``ws._wsproto``), the stream (``ws._stream``) and the send lock (``ws._stream_lock``). It
keeps what ``_send`` guarantees:

* no two writes interleave: the adapter writes under the send lock, or without awaiting
  while nobody holds it (``_send`` serializes its event and takes the lock without yielding
  in between, so no write of trio-websocket's own can be half way then);
* a stream that breaks under a write marks the connection closed, as ``_send`` does
  (``ws._abort_web_socket()``), so that ``get_message`` and the reader task end with 1006;
* nothing is written once the connection is closing (``ws.closed``, wsproto's state).

``send_nowait``, over plain TCP while the lock is free, writes a batch's frames to the
non-blocking socket in one system call from the manager's flusher, with no task (as
``wsfleet.adapters.websockets`` does on trio). What the kernel does not take is kept
(``unsent``) for ``send`` to finish under the lock. Until then no other frame may follow
on the wire, yet trio-websocket's own task may write one at any time (the pong its reader
answers a ping with, a close): meanwhile ``ws._stream_lock`` is replaced by a stand-in
that takes the real lock and writes what is kept first. While the lock is held, or over
TLS, ``send_nowait`` declines and the writer's ``send`` writes the batch in one go under the
lock (over TLS with the stream's ``send_all``). A write cancelled while it waits for room
keeps its rest the same way, so a frame is never cut; a close while something is kept
resets the TCP connection instead, since a close frame would be read as the rest of the
frame and writing the rest first would wait for a peer that may never read.

A server frame is the same bytes for every connection (servers do not mask, and
trio-websocket negotiates no extension), so a fan-out encodes each message once, with
wsproto's frame encoder, into a small cache of recent frames bounded in bytes. Client frames
are masked, so each client connection's own wsproto encodes them.

What pins this to the versions it was checked against: the versions (``TESTED``) and the
class's coroutines are checked at import, each connection's attributes and their types at
registration. When anything differs, the adapter takes the public path (one
``send_message`` per message, by the writer task; ``send_nowait`` declines) and says why
once in the log, at INFO. What it costs either way, on loopback at 1,000 and 5,000 clients,
is in ``docs/explanation/adapters.md``.

How pings go out without waiting for the pong
---------------------------------------------
``WebSocketConnection.ping()`` sends the ping and then waits for its pong, and it never wakes
if the connection closes first. The manager must not block its writer on a pong, and a task
per ping would outlive the transport when no pong comes (nothing cancels it). ``ping()`` is
two steps: remember the payload in ``ws._pings`` (the reader task calls ``.set()`` on what it
finds there when the matching pong arrives, and on the entries of earlier pings the peer
skipped), then send the frame. This adapter does those two steps itself and registers a
small object whose ``set()`` reports ``touch(pong=True)`` instead of an event to wait on:
no task, no wait, the ping keeps its place in the batch, and nothing is left to cancel when
the socket goes away. On the public path the frame goes out with ``ws._send``; without
those two names (a trio-websocket this module does not know), the writer awaits
``ws.ping()`` itself, messages queued behind the ping waiting for its pong.

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

import inspect
import logging
import os
import random
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from ..errors import (
    FinalRefusal,
    InvalidArgument,
    TransportClosed,
    TransportError,
    Unauthenticated,
)
from ..transport import (
    Message,
    Outbound,
    Ping,
    PongSignal,
    Transport,
    register_adapter,
    register_dialer,
)

try:
    import trio
    import trio_websocket
    import wsproto
    from trio_websocket import (
        CloseReason,
        ConnectionClosed,
        ConnectionRejected,
        HandshakeError,
        WebSocketConnection,
        WebSocketRequest,
        wrap_client_stream,
    )
    from wsproto.connection import ConnectionState as ProtocolState
    from wsproto.events import BytesMessage, TextMessage
    from wsproto.events import Ping as PingEvent
    from wsproto.frame_protocol import FrameProtocol
    from wsproto.utilities import LocalProtocolError
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without the extra
    raise ImportError(
        "wsfleet.adapters.trio_websocket needs trio-websocket: pip install 'wsfleet[trio]'"
    ) from exc

__all__ = ["TrioWebsocketTransport", "accept", "open_client"]

logger = logging.getLogger("wsfleet")

#: What a write or a close may raise besides ``ConnectionClosed`` when the socket breaks.
_IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, LocalProtocolError)
#: What trio raises from a stream write when the connection is gone.
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError)
#: trio-websocket's default ``connect_timeout``, in seconds.
_CONNECT_TIMEOUT = 60.0

#: The releases (major.minor) whose write path the batch path was checked against. In all of
#: them ``_send``, ``_abort_web_socket`` and the attributes below are the same code, and
#: ``_stream_lock`` is taken by ``_send`` only; the tests run on the newest.
TESTED: Final = {"trio-websocket": ("0.11", "0.12"), "wsproto": ("1.2", "1.3")}

_OPEN = ProtocolState.OPEN


def _release(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _library_refusal() -> str | None:
    """Why this trio-websocket cannot take the batch path, or ``None`` if it can."""
    installed = {
        "trio-websocket": getattr(trio_websocket, "__version__", "?"),
        "wsproto": getattr(wsproto, "__version__", "?"),
    }
    for name, version in installed.items():
        if _release(version) not in TESTED[name]:
            return f"{name} {version} is not a tested release ({', '.join(TESTED[name])})"
    for name in ("_send", "_abort_web_socket"):
        if not inspect.iscoroutinefunction(getattr(WebSocketConnection, name, None)):
            return f"WebSocketConnection.{name} is not a coroutine function"
    if not isinstance(getattr(WebSocketConnection, "closed", None), property):
        return "WebSocketConnection.closed is not a property"
    return None


#: Checked once, at import (the tests force it to a reason to test the public path).
_LIBRARY_REFUSAL: str | None = _library_refusal()
#: The reasons for the public path already logged, so that each is said once.
_LOGGED: set[str] = set()


def _refusal_for(ws: WebSocketConnection) -> str | None:
    """Why this connection must take the public path, or ``None``: the batch path's pin."""
    if _LIBRARY_REFUSAL is not None:
        return _LIBRARY_REFUSAL
    expected: tuple[tuple[str, type | tuple[type, ...]], ...] = (
        ("_wsproto", wsproto.WSConnection),
        ("_stream", trio.abc.SendStream),
        ("_stream_lock", (trio.StrictFIFOLock, trio.Lock)),
        ("_pings", dict),
    )
    for name, kind in expected:
        if not isinstance(getattr(ws, name, None), kind):
            return f"WebSocketConnection.{name} is not what this adapter was checked against"
    return None


def _ping_hooks(ws: WebSocketConnection) -> bool:
    """Whether ``ws._pings`` and ``ws._send`` are there to ping without waiting."""
    return isinstance(getattr(ws, "_pings", None), dict) and inspect.iscoroutinefunction(
        getattr(ws, "_send", None)
    )


# -- frames shared by every server connection ----------------------------------------------

#: The frame cache's bounds: entries, and bytes of frames (one larger frame may stay alone).
_FRAME_CACHE_SIZE = 1024
_FRAME_CACHE_BYTES = 1 << 20
_frame_cache: dict[Message, bytes] = {}
_frame_cache_bytes = 0


def _shared_frame(message: Message) -> bytes:
    """The unmasked frame of ``message`` without extensions: one for every server connection.

    Keyed by the message (a fan-out hands the same object to every connection, whose hash
    is computed once), and large enough for a burst: a batch of up to a thousand distinct
    messages, or a megabyte of frames, is encoded once however many connections it goes
    to. Encoded by a fresh wsproto ``FrameProtocol`` each time, so that no encoder state is
    shared (between threads running trio, say).
    """
    global _frame_cache_bytes
    frame = _frame_cache.get(message)
    if frame is None:
        frame = bytes(FrameProtocol(False, []).send_data(message, True))
        full = _frame_cache_bytes + len(frame) > _FRAME_CACHE_BYTES
        if full or len(_frame_cache) >= _FRAME_CACHE_SIZE:
            _frame_cache.clear()
            _frame_cache_bytes = 0
        _frame_cache[message] = frame
        _frame_cache_bytes += len(frame)
    return frame


def _extensions(proto: wsproto.WSConnection) -> list[Any] | None:
    """The extensions a wsproto connection frames with (``None``: cannot tell)."""
    frames = getattr(getattr(proto, "connection", None), "_proto", None)
    extensions = getattr(frames, "extensions", None)
    return extensions if isinstance(extensions, list) else None


class _KeptFirst:
    """Stands in for ``ws._stream_lock`` while a batch's end is kept (see the module docstring).

    Whoever enters it takes the real lock and writes what is kept before its own frame, so
    a pong or a close of trio-websocket's never lands inside a frame of the batch.
    """

    __slots__ = ("_transport",)

    def __init__(self, transport: TrioWebsocketTransport) -> None:
        self._transport = transport

    async def __aenter__(self) -> None:
        transport = self._transport
        lock = transport._lock
        await lock.acquire()
        try:
            await transport._write_kept()
        except _BROKEN:
            pass  # the write this lock guards meets the broken stream and closes, as it does
        except BaseException:
            lock.release()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._transport._lock.release()


class TrioWebsocketTransport(Transport):
    """A trio-websocket ``WebSocketConnection`` as a wsfleet ``Transport``."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        #: The close this side initiated, reported instead of trio-websocket's 1000.
        self._local_close: TransportClosed | None = None
        refusal = _refusal_for(ws)
        #: Batches written through wsproto, the stream and the lock (else: the public path).
        self.batched = refusal is None
        #: The plain TCP socket under the stream: what ``send_nowait`` writes to.
        self._socket: Any = None
        #: Frames are shared between connections: a server without extensions.
        self._shared = False
        #: Part of a batch ``send_nowait`` wrote; the socket did not take the rest yet.
        self._rest = b""
        #: Stands in for ``ws._stream_lock`` while ``_rest`` is kept (made once, when needed).
        self._stand_in: _KeptFirst | None = None
        #: What ``ws._send`` writes with (the batch path only; see the module docstring).
        self._proto: Any = None
        self._stream: Any = None
        self._lock: Any = None
        if refusal is not None:
            if refusal not in _LOGGED:
                _LOGGED.add(refusal)
                logger.info(
                    "trio-websocket: one send_message per message (no batched writes): %s",
                    refusal,
                )
            return
        self._proto = ws._wsproto
        self._stream = ws._stream
        self._lock = ws._stream_lock
        if isinstance(self._stream, trio.SocketStream):
            self._socket = self._stream.socket
        self._shared = not self._proto.client and _extensions(self._proto) == []

    def __repr__(self) -> str:
        return f"<TrioWebsocketTransport {self.ws}>"

    def _closed(self, reason: CloseReason | None) -> TransportClosed:
        if self._local_close is not None:
            return self._local_close
        if reason is None:
            return TransportClosed(1006, "connection lost")
        return TransportClosed(int(reason.code), reason.reason or "")

    # -- the batch path ----------------------------------------------------------------------

    def _check_writable(self) -> None:
        """Raise unless a frame may go out now (what ``send_message`` and wsproto check)."""
        reason = self.ws.closed
        if reason is not None:
            raise self._closed(reason)
        if self._proto.state is not _OPEN:
            raise TransportError("write failed: the connection is closing")

    def _frames(self, batch: Sequence[Outbound]) -> bytes:
        """Every frame of the batch, in order, as one buffer; pings registered on the way."""
        if self._shared:
            if len(batch) == 1:  # a fan-out of one message: no list, no join
                item = batch[0]
                if not isinstance(item, Ping):
                    return _shared_frame(item)
            parts = [
                self._ping_frame() if isinstance(item, Ping) else _shared_frame(item)
                for item in batch
            ]
        else:
            proto = self._proto
            parts = [
                self._ping_frame()
                if isinstance(item, Ping)
                else proto.send(
                    TextMessage(data=item) if isinstance(item, str) else BytesMessage(data=item)
                )
                for item in batch
            ]
        return b"".join(parts)

    def _ping_payload(self) -> bytes:
        """A fresh payload, registered so that its pong reaches us as ``touch(pong=True)``."""
        pending: dict[bytes, Any] = self.ws._pings
        payload = random.getrandbits(32).to_bytes(4, "big")
        while payload in pending:
            payload = random.getrandbits(32).to_bytes(4, "big")
        pending[payload] = PongSignal(self)
        return payload

    def _ping_frame(self) -> bytes:
        frame: bytes = self._proto.send(PingEvent(payload=self._ping_payload()))
        return frame

    def send_nowait(self, batch: Sequence[Outbound]) -> bool:
        sock = self._socket
        if sock is None or self.unsent or self._lock.locked():
            return False  # TLS or the public path, something kept, or a write under way
        self._check_writable()
        data = self._frames(batch)
        fd = sock.fileno()
        if fd < 0:
            raise TransportError("write failed: the socket is closed")
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            raise TransportError(f"write failed: {exc}") from exc
        if written < len(data):
            self._keep(data[written:])
        return True

    def _keep(self, rest: bytes) -> None:
        """Keep the end of a write the socket did not take, ahead of any other frame."""
        self._rest = rest
        self.unsent = len(rest)
        stand_in = self._stand_in
        if stand_in is None:
            stand_in = self._stand_in = _KeptFirst(self)
        self.ws._stream_lock = stand_in  # type: ignore[assignment]

    async def _write_kept(self) -> None:
        """Write what was kept; the caller holds the real lock."""
        rest = self._rest
        if rest:
            self._rest = b""
            self.unsent = 0
            self.ws._stream_lock = self._lock
            await self._write(rest)

    async def _write(self, data: bytes) -> None:
        """Write ``data`` to the stream; the caller holds the real lock.

        Over plain TCP this writes to the socket itself and waits for room with
        ``wait_writable``, which is what ``SocketStream.send_all`` does through several more
        coroutines and context managers per wait. A fan-out to thousands of peers that read
        slower than it writes keeps one such wait per connection alive at once, and the
        garbage collector, walking the young objects they make, was most of the cost that
        grew with the fleet. A write cancelled while it waits keeps what it did not write,
        as ``send_nowait`` does, so no frame is ever cut. Over TLS, ``SSLStream.send_all``:
        a cancelled one leaves the stream broken, so no frame follows a cut one either.
        """
        sock = self._socket
        if sock is None:
            await self._stream.send_all(data)
            return
        done = 0
        while True:
            fd = sock.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("the socket was closed")
            try:
                # (a view made and dropped at once: nothing the collector sees while waiting)
                done += os.write(fd, memoryview(data)[done:] if done else data)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise trio.BrokenResourceError(f"socket write failed: {exc}") from exc
            if done == len(data):
                return
            try:
                await trio.lowlevel.wait_writable(sock)
            except trio.Cancelled:
                self._keep(data[done:])
                raise

    async def send(self, batch: Sequence[Outbound]) -> None:
        if not self.batched:
            await self._send_public(batch)
            return
        ws = self.ws
        try:
            async with self._lock:
                self._check_writable()
                try:
                    await self._write_kept()
                    if batch:
                        await self._write(self._frames(batch))
                except _BROKEN as exc:
                    await ws._abort_web_socket()  # as _send does: the connection is closed
                    raise self._closed(ws.closed) from exc
        except TransportError:
            raise  # an OSError too: not to be wrapped again
        except _IO_ERRORS as exc:
            raise TransportError(f"write failed: {type(exc).__name__}: {exc}") from exc

    # -- the public path ---------------------------------------------------------------------

    async def _send_public(self, batch: Sequence[Outbound]) -> None:
        ws = self.ws
        try:
            for item in batch:
                if isinstance(item, Ping):
                    await self._ping()
                else:
                    await ws.send_message(item)
        except ConnectionClosed as exc:
            raise self._closed(exc.reason) from exc
        except _IO_ERRORS as exc:
            raise TransportError(f"write failed: {type(exc).__name__}: {exc}") from exc

    async def _ping(self) -> None:
        """What ``ws.ping()`` does, minus waiting for the pong (see the module docstring)."""
        ws = self.ws
        if not _ping_hooks(ws):
            await ws.ping()  # a trio-websocket this module does not know: wait for the pong
            PongSignal(self).set()
            return
        if ws.closed is not None:
            raise ConnectionClosed(ws.closed)
        await ws._send(PingEvent(payload=self._ping_payload()))

    # -- reads and close -------------------------------------------------------------------

    def limit_inbound(self, max_size: int) -> bool:
        """trio-websocket's reader compares each message, as it grows, with the connection's
        ``_max_message_size`` (what ``serve_websocket(max_message_size=...)`` sets) and
        closes with 1009 past it. It counts text in characters, not bytes, so this only cuts
        the largest floods early; the session's check on receipt holds the limit in bytes.
        A release without that attribute: checked on receipt alone."""
        if not isinstance(getattr(self.ws, "_max_message_size", None), int):
            return False
        self.ws._max_message_size = max_size
        return True

    async def receive(self) -> Message:
        try:
            return await self.ws.get_message()
        except ConnectionClosed as exc:
            raise self._closed(exc.reason) from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with a closing handshake, or reset the TCP connection while a part is kept.

        A peer that was sent only part of a frame (the rest kept as ``unsent``: the socket
        was full, or the write was cancelled when the manager evicted it) would read a close
        frame as the rest of that frame; writing the rest first would wait for a peer that
        may never read. The connection is reset instead, and the peer sees 1006.
        """
        ws = self.ws
        if ws.closed is None and self._local_close is None:
            self._local_close = TransportClosed(code, reason)
        if self.unsent:
            self._reset()
        try:
            await ws.aclose(code, reason or None)
        except (ConnectionClosed, *_IO_ERRORS):
            pass  # already closed, or the peer went away meanwhile

    def _reset(self) -> None:
        """Drop what is kept and reset the TCP connection: no close frame can follow."""
        self._rest = b""
        self.unsent = 0
        self.ws._stream_lock = self._lock
        sock = self._socket  # something is kept only over plain TCP
        with suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


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


register_dialer("trio-websocket", open_client, loops=("trio",))


class _Authenticates(Protocol):
    async def authenticate(self, socket: object, /) -> str: ...


async def accept(
    manager: _Authenticates,
    request: WebSocketRequest,
    *,
    subprotocol: str | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    status: int = 401,
) -> tuple[WebSocketConnection, str] | None:
    """Ask the manager's ``authenticate`` hook about ``request``, then accept or reject it::

        async def handler(request: WebSocketRequest) -> None:
            accepted = await accept(manager, request)
            if accepted is None:
                return  # refused with HTTP 401, or the client left during the handshake
            ws, who = accepted
            async with manager.session(ws) as session:  # or manager.session(ws, who)
                ...

    Refused (the hook returned ``None`` or raised ``Unauthenticated``), the request is
    rejected with HTTP ``status`` (401) and the reason as its body: no WebSocket, nothing
    registered, ``None`` returned. Accepted, the identity is remembered for the connection
    (``manager.session(ws)`` uses it) and returned with it. A client gone during the
    handshake gives ``None`` too: on trio, an error escaping a handler would end the whole
    server. Another exception of the hook's is the application's bug: the client gets an
    HTTP 500 and the exception goes on.
    """
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status < 500:
        raise InvalidArgument(f"status must be an HTTP 4xx code, got {status!r}")
    try:
        identifier = await manager.authenticate(request)
    except Unauthenticated as exc:
        with suppress(ConnectionClosed, *_IO_ERRORS):
            await request.reject(status, body=exc.reason.encode("utf-8", "replace"))
        return None
    except Exception:
        with suppress(ConnectionClosed, *_IO_ERRORS):
            await request.reject(500)  # what websockets answers too; the error goes on
        raise
    try:
        ws = await request.accept(subprotocol=subprotocol, extra_headers=extra_headers)
    except (ConnectionClosed, *_IO_ERRORS):
        return None
    return ws, identifier
