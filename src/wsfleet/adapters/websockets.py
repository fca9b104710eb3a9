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
whole fan-out, and so are the frames of a batch of several messages (a list of the shared
frames, never one buffer per connection). When the socket is paused (the peer reads
slowly), ``send_nowait`` declines and the manager's writer awaits ``send``, which goes
through websockets' public API and its flow control. On trio, ``send_nowait`` does the same
over a plain TCP stream: when nobody holds the connection's send lock (the lock websockets'
own writes take around every ``send_all``, so no write of its own is under way), the
batch's frames go to the non-blocking socket in one ``writev`` system call, and whatever
the kernel does not take is kept (``unsent``: views of the shared frames, not a copy) for
``send`` to finish, under that lock, before anything else; what websockets writes by
itself meanwhile (a pong, a close frame) waits for it too (see ``_Unsent``). trio has no
synchronous write of its own: without this, every batch to every connection would wait for
a writer task, and a fan-out would cost a task switch per connection (measured in
``benchmarks/results/fanout.md``). For the same reason the adapter lifts the 16 KiB bound
trio's streams put on what the kernel buffers unsent (``TCP_NOTSENT_LOWAT``): under it, a
burst of large messages was cut short on every connection. Over TLS, or while the lock is
held, ``send_nowait`` declines and ``send`` writes the batch with one ``send_all`` under
the lock.
"""

from __future__ import annotations

import os
import random
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any, Protocol, TypeAlias

import sniffio

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

__all__ = ["WebsocketsTransport", "authenticate", "open_client"]

#: Bounds of the cache of shared frames: this many frames, and this many bytes of them (or
#: one larger frame), kept after a fan-out until they make room for newer ones.
_FRAME_CACHE_SIZE = 1024
_FRAME_CACHE_BYTES = 4 * 1024 * 1024
_frame_cache: dict[Message, bytes] = {}
_frame_cache_bytes = 0

#: The last batch of several messages encoded for a server socket, and its frames (one
#: object, replaced whole: a loop in another thread never sees one without the other).
_last_batch: tuple[tuple[Outbound, ...], tuple[bytes, ...]] = ((), ())

#: The same for asyncio, whose transport is handed one buffer: the last such batch joined.
_last_joined: tuple[tuple[Outbound, ...], bytes] = ((), b"")

#: The most buffers one ``writev`` takes (Linux's IOV_MAX).
_IOV_MAX = 1024

Buffer: TypeAlias = bytes | memoryview


def _shared_frame(message: Message) -> bytes:
    """The unmasked, uncompressed frame of ``message``: identical for every server socket."""
    global _frame_cache_bytes
    frame = _frame_cache.get(message)
    if frame is None:
        if isinstance(message, str):
            frame = Frame(Opcode.TEXT, message.encode()).serialize(mask=False, extensions=[])
        else:
            frame = Frame(Opcode.BINARY, message).serialize(mask=False, extensions=[])
        if (
            len(_frame_cache) >= _FRAME_CACHE_SIZE
            or _frame_cache_bytes + len(frame) > _FRAME_CACHE_BYTES
        ):
            _frame_cache.clear()
            _frame_cache_bytes = 0
        _frame_cache[message] = frame  # even one larger than the bound: its fan-out shares it
        _frame_cache_bytes += len(frame)
    return frame


def _shared_frames(batch: Sequence[Outbound]) -> list[Buffer] | None:
    """The frames of a batch of several messages for a server socket, shared with every
    connection that is handed the same batch; ``None`` if it holds a ping (whose frame is
    the connection's own).

    A fan-out hands the same batch to every connection, one after the other. Looking each
    message up in the cache of frames would share them only while the cache holds the whole
    batch: a longer one (``manager.batch()``, or large messages) would evict, message by
    message, the frames the next connection needs, and each would encode its own. So the
    last batch is remembered whole (the messages, compared by identity first, and their
    frames), whatever its length; what it holds is one batch, which the overflow policy
    bounds. The list returned is the caller's own: a partial write trims it.
    """
    global _last_batch
    key = tuple(batch)
    last, last_frames = _last_batch
    if key != last:
        frames: list[bytes] = []
        for item in key:
            if isinstance(item, Ping):
                return None
            frames.append(_shared_frame(item))
        last_frames = tuple(frames)
        _last_batch = (key, last_frames)
    return list(last_frames)


def _shared_buffer(batch: Sequence[Outbound]) -> bytes | None:
    """The frames of a batch of several messages for a server socket as one buffer, shared
    with every connection handed the same batch; ``None`` if it holds a ping.

    asyncio's transports take one buffer: ``writelines`` joins its list (Python 3.11), and
    a frame list joined for each connection copied the whole batch once per recipient, a
    memory copy as large as the batch for every connection of a fan-out. Joined once
    here, every connection is handed the same bytes (a transport copies only what its
    socket does not take at once). Kept as ``_shared_frames`` keeps its frames: the last
    batch only, which the overflow policy bounds.
    """
    global _last_joined
    key = tuple(batch)
    last, joined = _last_joined
    if key != last:
        frames = _shared_frames(key)
        if frames is None:
            return None
        joined = b"".join(frames)
        _last_joined = (key, joined)
    return joined


def _lift_notsent_lowat(stream: Any) -> None:
    """Let the kernel buffer what the socket's send buffer holds, as it does on asyncio.

    trio's ``SocketStream`` sets ``TCP_NOTSENT_LOWAT`` to 16 KiB: the kernel then takes
    about 16 KiB beyond what it can put on the wire at once, and a non-blocking write of a
    bigger batch is cut short. A burst of 4 KiB messages (64 per batch: 256 KiB) was cut on
    nearly every connection, each of which then needed a writer task to finish it; with
    the system's default (no such bound, so up to the send buffer, as asyncio's sockets
    have it) the same burst goes out whole from ``send_nowait``. A queue that grows behind
    a slow reader is still bounded by the manager's overflow policy. 0 means "the system's
    default" to Linux, "none" to macOS.
    """
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if option is not None:
        with suppress(OSError):
            stream.setsockopt(socket.IPPROTO_TCP, option, 0)


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


class _Unsent:
    """What a trio TCP stream was handed and its socket has not taken yet, in order.

    Written to the non-blocking socket directly (``writev``, no copy: what the socket does
    not take stays as views of the frames), by ``send_nowait`` at once and by the writer
    when the socket has room again. One per stream, shared by every transport registered
    on the connection, so that what one transport left is finished before another writes.

    It is put in front of the stream's ``send_all``, which websockets' own writes go
    through (a pong, a close frame, its keepalive pings, under its send lock): between a
    partial write of ``send_nowait`` and the writer that finishes it, that lock is free
    and the peer may be halfway through a frame, which a frame of websockets' would land
    inside (the peer then fails with a protocol error). So what is kept goes first.
    """

    __slots__ = ("buffers", "nbytes", "socket", "stream", "torn")

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.socket = stream.socket
        #: frames in order; the first may be a view of the rest of a frame cut by a write
        self.buffers: list[Buffer] = []
        self.nbytes = 0
        #: the peer holds part of a frame: nothing else may be written before the rest
        self.torn = False

    @classmethod
    def of(cls, stream: Any) -> _Unsent:
        """The stream's, put in front of its ``send_all`` the first time."""
        installed = getattr(stream.send_all, "__self__", None)
        if isinstance(installed, _Unsent):
            return installed
        unsent = cls(stream)
        setattr(stream, "send_all", unsent.send_all)  # noqa: B010 (an instance attribute)
        return unsent

    def fileno(self) -> int:
        """The socket's descriptor, read again before every write: -1 once it is closed
        (and the number may then belong to another socket)."""
        fd: int = self.socket.fileno()
        if fd < 0:
            raise TransportError("write failed: the socket is closed")
        return fd

    def write_frame(self, frame: bytes) -> None:
        """One frame, nothing kept before it: written now, what the socket leaves kept."""
        try:
            written = os.write(self.fileno(), frame)
        except BlockingIOError:
            written = 0
        if written < len(frame):
            self.buffers = [memoryview(frame)[written:] if written else frame]
            self.nbytes = len(frame) - written
            self.torn = written > 0

    def write(self, buffers: list[Buffer]) -> bool:
        """``buffers`` after what is kept: as much as the socket takes now, the rest kept;
        ``True`` once nothing is kept. The list becomes this object's."""
        if self.buffers:
            self.buffers.extend(buffers)
        else:
            self.buffers = buffers
        return self.flush()

    def flush(self) -> bool:
        """Write as much of what is kept as the socket takes now; ``True`` once all is.

        One ``writev`` (up to ``_IOV_MAX`` buffers) per call to the kernel; a buffer it
        cuts is kept as a view of its rest.
        """
        kept = self.buffers
        if not kept:
            return True
        fd = self.fileno()
        done = 0  # buffers written whole
        cut = 0  # bytes of kept[done] written
        while done < len(kept):
            chunk = kept if done == 0 and len(kept) <= _IOV_MAX else kept[done : done + _IOV_MAX]
            try:
                written = os.writev(fd, chunk)
            except BlockingIOError:
                break
            for buffer in chunk:
                size = len(buffer)
                if written < size:
                    cut = written
                    break
                written -= size
                done += 1
            else:
                continue  # the socket took the whole chunk: on to the next
            break  # it took less than it was given: it is full
        if done == len(kept):
            self.drop()
            return True
        self.torn = cut > 0 or (done == 0 and self.torn)
        if cut:
            kept[done] = memoryview(kept[done])[cut:]
        del kept[:done]
        self.nbytes = sum(len(buffer) for buffer in kept)
        return False

    async def write_all(self) -> None:
        """Write what is kept, waiting for the socket whenever it is full (lock held)."""
        while not self.flush():
            await self.socket.wait_writable()

    async def send_all(self, data: Any) -> None:
        """The stream's ``send_all`` as websockets' own writes see it: after what is kept."""
        if self.buffers:
            await self.write_all()
        await type(self.stream).send_all(self.stream, data)

    def drop(self) -> None:
        self.buffers = []
        self.nbytes = 0
        self.torn = False


class WebsocketsTransport(Transport):
    """A websockets connection (asyncio or trio) as a wsfleet ``Transport``."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._asyncio = isinstance(ws, AsyncioConnection)
        # Registered after the handshake, so the extensions are settled: a server frame
        # without any is the same bytes for every recipient.
        protocol = ws.protocol
        self._shared = protocol.side is SERVER and not protocol.extensions
        #: trio, plain TCP: what the stream's socket was handed and has not taken yet.
        self._unsent: _Unsent | None = None
        #: trio over TLS: a ``send_all`` was cut off, the peer may hold half a frame.
        self._torn = False
        if not self._asyncio:
            import trio

            stream = ws.stream
            if isinstance(stream, trio.SocketStream):
                _lift_notsent_lowat(stream)
                self._unsent = _Unsent.of(stream)

    def __repr__(self) -> str:
        try:
            peer = self.ws.remote_address
        except Exception:  # a trio socket already closed has no address any more
            peer = "closed"
        return f"<WebsocketsTransport {peer!r}>"

    @property
    def unsent(self) -> int:
        """Bytes taken but not on the wire yet: the socket's, whichever transport took
        them (and websockets' own writes may finish them, see ``_Unsent``)."""
        unsent = self._unsent
        return unsent.nbytes if unsent is not None else 0

    @unsent.setter
    def unsent(self, value: int) -> None:
        raise AttributeError("unsent is counted by the socket's writes, not set")

    def limit_inbound(self, max_size: int) -> bool:
        """websockets reads its protocol's ``max_message_size`` for each frame it parses:
        a message over it is refused mid-read with 1009, as ``serve(max_size=...)`` does."""
        protocol = self.ws.protocol
        if not isinstance(getattr(protocol, "max_message_size", None), int | None):
            return False
        protocol.max_message_size = max_size
        return True

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

    def _frames(self, batch: Sequence[Outbound]) -> list[Buffer]:
        """Every frame of the batch, in order, each its own buffer.

        Not joined: on a server connection without extensions the frames are the shared
        ones, and a list of them costs a few references per connection, where one buffer
        per connection would copy the whole batch for each recipient.
        """
        shared = self._shared
        if shared and len(batch) > 1:
            frames = _shared_frames(batch)
            if frames is not None:
                return frames
        protocol = self.ws.protocol
        ping_data = self._ping_data if self._asyncio else self._trio_ping_data
        frames = []
        for item in batch:
            if isinstance(item, Ping):
                protocol.send_ping(ping_data())
                frames.extend(protocol.data_to_send())
            elif shared:
                frames.append(_shared_frame(item))
            else:
                if isinstance(item, str):
                    protocol.send_text(item.encode())
                else:
                    protocol.send_binary(item)
                frames.extend(protocol.data_to_send())
        return frames

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
        if self._shared:
            if len(batch) == 1:
                if not isinstance(batch[0], Ping):
                    ws.transport.write(_shared_frame(batch[0]))  # the usual fan-out: no list
                    return True
            else:
                shared = _shared_buffer(batch)  # a burst's fan-out: one buffer for all
                if shared is not None:
                    ws.transport.write(shared)
                    return True
        ws.transport.writelines(self._frames(batch))
        return True

    def _trio_send_nowait(self, batch: Sequence[Outbound]) -> bool:
        ws = self.ws
        unsent = self._unsent
        if unsent is None or unsent.buffers or ws.send_lock.locked():
            return False  # TLS, something kept from last time, or websockets is writing
        self._check_open()
        try:
            if self._shared and len(batch) == 1 and not isinstance(batch[0], Ping):
                unsent.write_frame(_shared_frame(batch[0]))  # the usual fan-out: one frame
            else:
                unsent.write(self._frames(batch))
        except TransportError:
            raise
        except OSError as exc:
            unsent.drop()
            raise TransportError(f"write failed: {exc}") from exc
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
            self._check_open()
            frames = self._frames(batch) if batch else []
            if self._unsent is None:
                await self._trio_send_all(frames)
            else:
                await self._trio_send(self._unsent, frames)
        except ConnectionClosed as exc:
            raise _closed(exc) from exc
        except TransportError:
            raise
        except (OSError, RuntimeError) as exc:
            raise TransportError(f"write failed: {exc}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith("trio"):  # BrokenResourceError, ClosedResourceError
                raise TransportError(f"write failed: {type(exc).__name__}: {exc}") from exc
            raise

    async def _trio_send(self, unsent: _Unsent, frames: list[Buffer]) -> None:
        """Plain TCP: what was kept, then the batch, written under websockets' send lock.

        Written by this task to the non-blocking socket, as ``send_nowait`` does, waiting
        for the socket only when it is full: a batch the socket takes costs no task switch
        (the lock, when free, is taken without a checkpoint, and ``send_all`` would add one
        per call), and each time the peer has read, one ``writev`` takes as much as the
        socket will, with no copy of what is left. What is not written yet stays kept, so
        a write cut off by a cancellation is known to the byte.
        """
        lock = self.ws.send_lock
        if lock.locked():
            await lock.acquire()  # websockets is writing: after it
        else:
            lock.acquire_nowait()
        try:
            if frames:
                unsent.write(frames)
            await unsent.write_all()
        finally:
            lock.release()

    async def _trio_send_all(self, frames: list[Buffer]) -> None:
        """Over TLS: the batch in one ``send_all`` under websockets' send lock."""
        async with self.ws.send_lock:
            self._torn = True  # until send_all returns, a frame may be half written
            await self.ws.stream.send_all(b"".join(frames))
            self._torn = False

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
                unsent = self._unsent
                if self._torn or (unsent is not None and unsent.buffers):
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
        sock: Any = None
        if self._unsent is not None:
            self._unsent.drop()
            sock = self._unsent.socket
        else:  # TLS: the TCP socket is under the TLS stream
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


register_dialer("websockets", open_client)


class _Authenticates(Protocol):
    async def authenticate(self, socket: object, /) -> str: ...


ProcessRequest: TypeAlias = Callable[[Any, Any], Awaitable[Any]]


def authenticate(manager: _Authenticates, *, status: int = 401) -> ProcessRequest:
    """A ``process_request`` for websockets' ``serve`` (asyncio or trio) that asks the
    manager's ``authenticate`` hook before the upgrade::

        async with serve(handler, host, port, process_request=authenticate(manager)):

    Refused (the hook returned ``None`` or raised ``Unauthenticated``), the client gets an
    HTTP ``status`` (401) with the reason as its body, and no WebSocket: the handler never
    runs, nothing is registered. Accepted, the identity is remembered for the connection,
    so the handler's ``manager.session(ws)`` opens under it without asking again. Another
    exception of the hook's is websockets' to handle: it logs it and answers 500. A plain
    HTTP request (a health check, a crawler: no ``Upgrade: websocket``) is left to
    websockets, which answers it 426, without asking the hook.
    """
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status < 500:
        raise InvalidArgument(f"status must be an HTTP 4xx code, got {status!r}")

    async def process_request(connection: Any, request: Any) -> Any:
        upgrade = request.headers.get("Upgrade", "")
        if "websocket" not in upgrade.lower():
            return None  # not a WebSocket handshake: websockets refuses it (426)
        try:
            await manager.authenticate(connection)
        except Unauthenticated as exc:
            return connection.respond(status, f"{exc.reason}\n")
        return None

    return process_request
