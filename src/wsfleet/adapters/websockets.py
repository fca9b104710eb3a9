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
``send`` to finish, under that lock, before anything else. trio has no synchronous write of
its own: without this, every batch to every connection would wait for a writer task, and a
fan-out would cost a task switch per connection (measured in
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
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any, TypeAlias

import sniffio

from .._errors import TransportClosed, TransportError
from .._outbound import FinalRefusal
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

#: Bounds of the cache of shared frames: this many frames, and this many bytes of them (or
#: one larger frame), kept after a fan-out until they make room for newer ones.
_FRAME_CACHE_SIZE = 1024
_FRAME_CACHE_BYTES = 4 * 1024 * 1024
_frame_cache: dict[Message, bytes] = {}
_frame_cache_bytes = 0

#: The last batch of several messages encoded for a server socket, and its frames.
_last_batch: tuple[Outbound, ...] = ()
_last_frames: tuple[bytes, ...] = ()

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
    global _last_batch, _last_frames
    key = tuple(batch)
    if key != _last_batch:
        frames: list[bytes] = []
        for item in key:
            if isinstance(item, Ping):
                return None
            frames.append(_shared_frame(item))
        _last_batch, _last_frames = key, tuple(frames)
    return list(_last_frames)


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
        #: trio: frames taken but not written yet (``unsent`` bytes in all), in order; the
        #: first may be a view of the rest of a frame the socket took only part of.
        self._kept: list[Buffer] = []
        #: trio: the peer may hold part of a frame (a write cut it, or was cut off).
        self._torn = False
        #: trio, plain TCP: the stream's own ``send_all`` (see ``_send_all_after_kept``).
        self._stream_send_all: Any = None
        if not self._asyncio:
            import trio

            stream = ws.stream
            if isinstance(stream, trio.SocketStream):
                self._socket = stream.socket
                _lift_notsent_lowat(stream)
                # websockets writes by itself too (a pong, a close frame, its keepalive
                # pings), through this method, under its send lock: see _send_all_after_kept.
                self._stream_send_all = stream.send_all
                setattr(stream, "send_all", self._send_all_after_kept)  # noqa: B010

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
        if self._shared and len(batch) == 1 and not isinstance(batch[0], Ping):
            ws.transport.write(_shared_frame(batch[0]))  # the usual fan-out: no list
        else:
            ws.transport.writelines(self._frames(batch))
        return True

    def _trio_send_nowait(self, batch: Sequence[Outbound]) -> bool:
        ws = self.ws
        sock = self._socket
        if sock is None or self.unsent or ws.send_lock.locked():
            return False  # TLS, something kept from last time, or websockets is writing
        self._check_open()
        fd = sock.fileno()
        if fd < 0:
            raise TransportError("write failed: the socket is closed")
        if self._shared and len(batch) == 1 and not isinstance(batch[0], Ping):
            frame = _shared_frame(batch[0])  # the usual fan-out: one frame, one write
            try:
                written = os.write(fd, frame)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                raise TransportError(f"write failed: {exc}") from exc
            if written < len(frame):
                self._keep([memoryview(frame)[written:] if written else frame], written > 0)
            return True
        self._kept = self._frames(batch)
        try:
            self._write_kept(fd)
        except OSError as exc:
            self._kept = []
            raise TransportError(f"write failed: {exc}") from exc
        return True

    def _keep(self, buffers: list[Buffer], torn: bool) -> None:
        """Hold what the socket did not take (no copy: views of the frames) for ``send``."""
        self._kept = buffers
        self.unsent = sum(len(buffer) for buffer in buffers)
        self._torn = torn

    def _write_kept(self, fd: int) -> bool:
        """Write as much of ``_kept`` as the socket takes now; ``True`` once all is written.

        One ``writev`` (up to ``_IOV_MAX`` buffers) per call to the kernel; a buffer it cuts
        is kept as a view of its rest. ``OSError`` but ``BlockingIOError`` goes to the caller.
        """
        kept = self._kept
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
            self._kept = []
            self.unsent = 0
            self._torn = False
            return True
        if cut:
            kept[done] = memoryview(kept[done])[cut:]
        del kept[:done]
        self._keep(kept, cut > 0 or (done == 0 and self._torn))
        return False

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
            if self._socket is None:
                await self._trio_send_all(frames)
            else:
                await self._trio_send(frames)
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

    async def _trio_send(self, frames: list[Buffer]) -> None:
        """Plain TCP: what was kept, then the batch, written under websockets' send lock.

        Written by this task to the non-blocking socket, as ``send_nowait`` does, waiting
        for the socket only when it is full: a batch the socket takes costs no task switch
        (the lock, when free, is taken without a checkpoint, and ``send_all`` would add one
        per call), and each time the peer has read, one ``writev`` takes as much as the
        socket will, with no copy of what is left. What is not written yet stays in
        ``_kept`` (``unsent``), so a write cut off by a cancellation is known to the byte.
        """
        lock = self.ws.send_lock
        if lock.locked():
            await lock.acquire()  # websockets is writing: after it
        else:
            lock.acquire_nowait()
        try:
            if frames:
                if self._kept:
                    self._kept.extend(frames)
                    self.unsent += sum(len(frame) for frame in frames)
                else:
                    self._kept = frames
                    self.unsent = sum(len(frame) for frame in frames)
            await self._write_all_kept()
        finally:
            lock.release()

    async def _write_all_kept(self) -> None:
        """Write what is kept, waiting for the socket whenever it is full (lock held)."""
        sock = self._socket
        while self._kept:
            fd = sock.fileno()  # again after each wait: closed meanwhile, it is -1
            if fd < 0:
                raise TransportError("write failed: the socket is closed")
            if self._write_kept(fd):
                break
            await sock.wait_writable()

    async def _send_all_after_kept(self, data: Any) -> None:
        """The stream's ``send_all`` as websockets' own writes see it: after what is kept.

        Between a partial write of ``send_nowait`` and the writer that finishes it, the
        send lock is free, and the peer may be halfway through a frame. websockets answers
        a ping, or a close, by itself in that time (under the lock, with ``send_all``): its
        frame would land inside ours and the peer would fail with a protocol error. So the
        adapter puts itself in front of the stream's ``send_all``, and what it kept goes
        first. Its own writes do not go through here.
        """
        if self._kept:
            await self._write_all_kept()
        await self._stream_send_all(data)

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
        self._kept = []
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
