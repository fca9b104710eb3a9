"""wsfleet over the websockets library, on asyncio (``websockets.asyncio``) and trio
(``websockets.trio``, websockets >= 15).

Importing this module registers both connection classes, so ``manager.register(ws, ...)``
and ``manager.session(ws, ...)`` accept the ``ServerConnection`` (or ``ClientConnection``)
that websockets hands to a handler.

How writes are coalesced
------------------------
websockets is sans-I/O at its core: a ``Protocol`` turns messages into frame bytes, and the
connection writes those bytes to the network. On asyncio the transport write is
synchronous, so when the socket is not paused by flow control this adapter takes a whole
batch in ``send_nowait``: every frame of the batch is serialized and handed over in ONE
``transport.write`` (one system call), which is what websockets' own ``broadcast()`` does
one message at a time. On a server connection without per-connection compression, a frame
is the same bytes for every recipient, so it is encoded once per message and shared by the
whole fan-out. When the socket is paused (the peer reads slowly), ``send_nowait`` declines
and the manager's writer awaits ``send``, which goes through websockets' public API and its
flow control. On trio, ``send_nowait`` does the same over a plain TCP stream: when nobody
holds the connection's send lock (the lock websockets' own writes take around every
``send_all``, so no write of its own is under way), the batch's frames go to the
non-blocking socket in one ``send`` system call, and whatever the kernel does not take is
kept (``unsent``) for ``send`` to finish, under that lock, before anything else. trio has no
synchronous write of its own: without this, every batch to every connection would wait for
a writer task, and a fan-out would cost a task switch per connection (measured in
``benchmarks/results/fanout.md``). Over TLS, or while the lock is held, ``send_nowait``
declines and ``send`` writes the batch with one ``send_all`` under the lock.
"""

from __future__ import annotations

import os
import random
import socket
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any

import sniffio

from ..errors import FinalRefusal, TransportClosed, TransportError
from ..transport import Message, Outbound, Ping, PongSignal, Transport, register_adapter

try:
    from websockets.asyncio.connection import Connection as AsyncioConnection
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
    from websockets.frames import Frame, Opcode
    from websockets.protocol import SERVER, State
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "wsfleet.adapters.websockets needs the websockets library: "
        "pip install 'wsfleet[websockets]'"
    ) from exc

_trio_connection: type | None
try:
    from websockets.trio.connection import Connection as _trio_connection
except ImportError:  # websockets without its trio implementation, or trio not installed
    _trio_connection = None

__all__ = ["WebsocketsTransport", "open_client"]

_FRAME_CACHE_SIZE = 64
_frames: dict[Message, bytes] = {}


def _shared_frame(message: Message) -> bytes:
    """The unmasked, uncompressed frame of ``message``: identical for every server socket."""
    frame = _frames.get(message)
    if frame is None:
        if len(_frames) >= _FRAME_CACHE_SIZE:
            _frames.clear()
        if isinstance(message, str):
            frame = Frame(Opcode.TEXT, message.encode()).serialize(mask=False, extensions=[])
        else:
            frame = Frame(Opcode.BINARY, message).serialize(mask=False, extensions=[])
        _frames[message] = frame
    return frame


def _closed(exc: ConnectionClosed) -> TransportClosed:
    """The close code that tells what happened: the peer's if it closed first, else ours.

    A server that refuses an oversize message sends 1009 first; the peer echoes it (or not).
    """
    rcvd, sent = exc.rcvd, exc.sent
    if rcvd is not None and (sent is None or exc.rcvd_then_sent):
        return TransportClosed(rcvd.code, rcvd.reason)
    if sent is not None:
        return TransportClosed(sent.code, sent.reason)
    return TransportClosed(1006, "connection lost")


class WebsocketsTransport(Transport):
    """A websockets connection (asyncio or trio) as a wsfleet ``Transport``."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._asyncio = isinstance(ws, AsyncioConnection)
        # Registered after the handshake, so the extensions are settled: a server frame
        # without any is the same bytes for every recipient.
        protocol = ws.protocol
        self._shared = protocol.side is SERVER and not protocol.extensions
        #: trio: the stream's socket when it is plain TCP (writable without awaiting).
        self._socket: Any = None
        #: trio: what ``send_nowait`` took but the socket did not (``unsent`` bytes of it).
        self._rest = b""
        #: trio: a write was cut off (cancelled), so the peer may hold half a frame.
        self._torn = False
        if not self._asyncio:
            import trio

            stream = ws.stream
            if isinstance(stream, trio.SocketStream):
                self._socket = stream.socket

    def __repr__(self) -> str:
        return f"<WebsocketsTransport {self.ws.remote_address!r}>"

    # -- writes --------------------------------------------------------------------------

    def _ping_data(self) -> bytes:
        """Register a ping with websockets so its pong reaches us as ``touch(pong=True)``."""
        ws = self.ws
        data = random.getrandbits(32).to_bytes(4, "big")
        while data in ws.pending_pings:
            data = random.getrandbits(32).to_bytes(4, "big")
        waiter = ws.loop.create_future()
        waiter.add_done_callback(self._pong_received)
        ws.pending_pings[data] = (waiter, ws.loop.time())
        return data

    def _pong_received(self, waiter: Any) -> None:
        if not waiter.cancelled() and waiter.exception() is None and self.connection is not None:
            self.connection.touch(pong=True)

    def _frames(self, batch: Sequence[Outbound]) -> bytes:
        """Every frame of the batch, in order, as one buffer."""
        shared = self._shared
        if shared and len(batch) == 1:  # the usual fan-out of one message: no list, no join
            item = batch[0]
            if not isinstance(item, Ping):
                return _shared_frame(item)
        protocol = self.ws.protocol
        ping_data = self._ping_data if self._asyncio else self._trio_ping_data
        parts: list[bytes] = []
        for item in batch:
            if isinstance(item, Ping):
                protocol.send_ping(ping_data())
                parts.extend(protocol.data_to_send())
            elif shared:
                parts.append(_shared_frame(item))
            else:
                if isinstance(item, str):
                    protocol.send_text(item.encode())
                else:
                    protocol.send_binary(item)
                parts.extend(protocol.data_to_send())
        return b"".join(parts)

    def _check_open(self) -> None:
        ws = self.ws
        if ws.protocol.state is not State.OPEN:
            raise TransportClosed(ws.close_code or 1006, ws.close_reason or "")

    def send_nowait(self, batch: Sequence[Outbound]) -> bool:
        ws = self.ws
        if not self._asyncio:
            return self._trio_send_nowait(batch)
        self._check_open()
        if ws.paused or ws.send_in_progress is not None:
            return False  # flow control says wait, or a fragmented send is under way
        ws.transport.write(self._frames(batch))
        return True

    def _trio_send_nowait(self, batch: Sequence[Outbound]) -> bool:
        ws = self.ws
        sock = self._socket
        if sock is None or self.unsent or ws.send_lock.locked():
            return False  # TLS, something kept from last time, or websockets is writing
        self._check_open()
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
            self._rest = data[written:]
            self.unsent = len(self._rest)
        return True

    async def send(self, batch: Sequence[Outbound]) -> None:
        ws = self.ws
        try:
            if self._asyncio:
                for item in batch:
                    if isinstance(item, Ping):
                        waiter = await ws.ping()
                        waiter.add_done_callback(self._pong_received)
                    else:
                        await ws.send(item)
                return
            # trio: every frame of the batch in one send_all, under the connection's lock.
            self._check_open()
            data = self._frames(batch)
            async with ws.send_lock:
                if self.unsent:  # what send_nowait kept goes first
                    data = self._rest + data
                    self._rest = b""
                    self.unsent = 0
                self._torn = True  # until send_all returns, a frame may be half written
                await ws.stream.send_all(data)
                self._torn = False
        except ConnectionClosed as exc:
            raise _closed(exc) from exc
        except (OSError, RuntimeError) as exc:
            raise TransportError(f"write failed: {exc}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith("trio"):  # BrokenResourceError, ClosedResourceError
                raise TransportError(f"write failed: {type(exc).__name__}: {exc}") from exc
            raise

    def _trio_ping_data(self) -> bytes:
        import trio

        ws = self.ws
        data = random.getrandbits(32).to_bytes(4, "big")
        while data in ws.pending_pings:
            data = random.getrandbits(32).to_bytes(4, "big")
        # websockets calls ``.set()`` on what it holds here when the pong arrives; holding
        # our own object instead of a trio.Event saves a task per ping to wait on it.
        ws.pending_pings[data] = (PongSignal(self), trio.current_time(), False)
        return data

    # -- reads and close -----------------------------------------------------------------------

    async def receive(self) -> Message:
        try:
            message: Message = await self.ws.recv()
        except ConnectionClosed as exc:
            raise _closed(exc) from exc
        return message

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with a closing handshake; cut the TCP connection if that cannot finish.

        A peer that stopped reading leaves websockets' asyncio ``close()`` waiting for the
        write buffer to drain, before its own close timeout even starts. When the manager
        gives up on it (``close_timeout``), the connection is aborted rather than left open.
        On trio, a peer that was sent only part of a frame (the rest kept as ``unsent``, or a
        write cut off when the manager evicted it) would read a close frame as the rest of
        that frame: the connection is reset instead, and the peer sees 1006.
        """
        try:
            if self._asyncio:
                await self.ws.close(code, reason)
            else:
                if self.unsent or self._torn:
                    self._reset()
                await self.ws.aclose(code, reason)
        except (ConnectionClosed, OSError):
            pass
        except BaseException:
            if self._asyncio and self.ws.transport is not None:
                self.ws.transport.abort()
            raise

    def _reset(self) -> None:
        """Drop what is kept and reset the TCP connection (trio): no close frame can follow."""
        self._rest = b""
        self.unsent = 0
        sock = self._socket
        if sock is None:  # TLS: the TCP socket is under the TLS stream
            stream = self.ws.stream
            while not hasattr(stream, "socket") and hasattr(stream, "transport_stream"):
                stream = stream.transport_stream
            sock = getattr(stream, "socket", None)
        if sock is None:  # pragma: no cover - a stream wsfleet does not know
            return
        with suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


register_adapter(AsyncioConnection, WebsocketsTransport)
if _trio_connection is not None:
    register_adapter(_trio_connection, WebsocketsTransport)


@asynccontextmanager
async def open_client(url: str, **options: Any) -> AsyncIterator[WebsocketsTransport]:
    """Dial ``url`` with websockets' client on the running loop; the manager's dialer.

    wsfleet does the pinging (``HeartbeatPolicy``), so websockets' keepalive is off unless
    ``ping_interval`` is given. Handshake failures are translated: an HTTP 4xx answer is a
    ``FinalRefusal`` (retrying will not help), anything else a ``TransportError``.
    """
    options.setdefault("ping_interval", None)
    connect: Any
    if sniffio.current_async_library() == "trio":
        from websockets.trio.client import connect
    else:
        from websockets.asyncio.client import connect
    dial: AbstractAsyncContextManager[Any] = connect(url, **options)
    try:
        ws = await dial.__aenter__()
    except InvalidStatus as exc:
        status = exc.response.status_code
        if 400 <= status < 500:
            raise FinalRefusal(f"handshake refused with HTTP {status}") from exc
        raise TransportError(f"handshake refused with HTTP {status}") from exc
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise TransportError(f"cannot connect to {url}: {type(exc).__name__}: {exc}") from exc
    try:
        yield WebsocketsTransport(ws)
    except BaseException as exc:
        if not await dial.__aexit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        await dial.__aexit__(None, None, None)
