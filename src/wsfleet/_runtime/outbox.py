"""Outbound delivery: bounded per-connection queues, one flusher, writers only when needed.

* Fan-out only enqueues: it appends to each target's queue and puts the connection on a
  ready list; it never awaits a peer, and it changes no state: a target whose queue is full
  under the "disconnect" policy is put aside (``take_evictions``) for the caller to evict
  once the loop is over.
* One flusher task drains the ready list. A transport that can take a batch at once
  (``send_nowait``) gets it there and then, so the common case costs no task per
  connection; only a connection whose transport pushes back gets a writer task of its own,
  which lives until its queue is empty. A stalled peer therefore holds one writer, never
  the flusher, and never another connection.
* A full queue is handled by the ``OverflowPolicy``: drop-oldest, drop-newest, or evict with
  close code 1008 "slow consumer". Every message that is not delivered is counted by reason.
* A ping (``PING``) travels at the head of the queue, so control frames never wait behind a
  burst of messages; it never counts against the limits and is never the one dropped.

The outbox keeps its bookkeeping in each connection's ``_out`` (``Outgoing``, made when the
connection is first sent something: a connection never sent anything costs none) and reports
what it cannot decide alone (a socket failed; a ping went out) through ``OutboxReports``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Final, Protocol

import anyio
from anyio.lowlevel import checkpoint

from ..errors import TransportError
from ..fsm.states import ConnectionState
from ..policies.overflow import OverflowDecision, OverflowPolicy
from ..transport import PING, Message, Outbound, Transport, message_size
from .connection import Connection, Outgoing
from .context import Context
from .observer import FleetObserver

__all__ = ["COALESCE_CALLS", "WRITER_LINGER", "Outbox", "OutboxReports"]

logger = logging.getLogger("wsfleet")

C = ConnectionState.CONNECTED
I = ConnectionState.IDLE  # noqa: E741
E = ConnectionState.ERROR
R = ConnectionState.RECONNECTING
D = ConnectionState.DISCONNECTED

_FLUSH_SLICE = 2048  # connections written per flusher step before letting others run

#: The most fan-out calls the flusher lets queue up while a burst is under way (see ``run``).
COALESCE_CALLS: Final = 64

#: How long a writer task waits for more before it ends (see ``Outbox._writer``).
WRITER_LINGER: Final = 1.0

#: A writer hands a batch over this size to its transport in pieces of about this size,
#: each counted as progress when it is written (see ``Outbox._writer``).
WRITE_SLICE: Final = 64 * 1024


class OutboxReports(Protocol):
    """What the outbox tells its owner, which decides what follows."""

    def ping_written(self, conn: Connection) -> None:
        """A ping is being handed to the transport (its pong may come back at once)."""

    def ping_unwritten(self, conn: Connection) -> None:
        """The ping handed over just before was put back: the transport pushed back."""

    def send_failed(self, conn: Connection, error: Exception) -> None:
        """The socket failed under a write (an I/O error): the connection has failed."""


class Outbox:
    """The fleet's outbound side; its counters feed ``manager.stats()``."""

    def __init__(
        self,
        context: Context,
        overflow: OverflowPolicy,
        reports: OutboxReports,
        *,
        close_timeout: float = 2.0,
    ) -> None:
        self._context = context
        self._reports = reports
        self.overflow = overflow
        self.close_timeout = close_timeout
        self._ready: list[Connection] = []
        self._evicted: list[Connection] = []
        self._wake = anyio.Event()
        self._wake_requested = False
        #: Writers waiting for more, by when they started waiting (oldest first; see ``_reap``).
        self._idle: dict[Connection, float] = {}
        self._reaper_wake = anyio.Event()
        #: Fan-out calls and their bytes since the flusher was woken (see ``run``).
        self._burst_calls = 0
        self._burst_bytes = 0
        self.queued_messages = 0
        self.queued_bytes = 0
        #: Of those, what waits in the queues of connections in ERROR or RECONNECTING: kept
        #: for a retry or a resume, with no writer, so nothing a producer could wait for.
        self.held_messages = 0
        self.held_bytes = 0
        self.sent_messages = 0
        self.pings_sent = 0
        #: Batches handed to transports: what the writers got done (see ``Fleet.room``).
        self.progress = 0
        self.drops: Counter[str] = Counter()
        #: Told how long each flusher round took (``Fleet.add_observer``); ``None``: nobody.
        self.observer: FleetObserver | None = None
        #: When the first observed fan-out of the coming flusher round was queued.
        self._first_fanout: float | None = None

    def bind_loop(self) -> None:
        """Events belong to the running loop on asyncio: make them once it runs."""
        self._wake = anyio.Event()
        self._reaper_wake = anyio.Event()

    # -- enqueueing ------------------------------------------------------------------------

    def fan_out(self, targets: Iterable[Connection], message: Message, size: int) -> int:
        """Queue ``message`` for each target; returns how many targets it was for.

        Each live target counts once: it queued the message, or (its queue full) its
        overflow policy counted it dropped, so what fan-outs return adds up to what is sent,
        dropped and queued. A target the overflow policy evicts is kept for
        ``take_evictions``: the caller evicts it (counting the message with its queue) once
        this loop is over.
        """
        overflow = self.overflow
        max_messages = overflow.max_messages
        max_bytes = overflow.max_bytes
        ready = self._ready
        queued = 0
        held = 0
        overflowed = 0
        for conn in targets:
            state = conn.state
            if state is D:
                continue
            out = conn._out
            if out is None:  # its first message: the outbox's part is made now
                out = conn._out = Outgoing()
            queue = out.pending
            if queue is None:
                queue = out.pending = []
            elif len(queue) >= max_messages or out.pending_bytes + size > max_bytes:
                overflowed += self._overflowed(conn, message, size)
                continue
            queue.append(message)
            out.pending_bytes += size
            queued += 1
            # ``schedule()`` inlined: a call per target costs more than the rest of the loop.
            if state is C or state is I:  # (identity: an Enum's hash is a Python call)
                if out.writing:
                    wake = out.writer_wake
                    if wake is not None:
                        out.writer_wake = None
                        wake.set()
                elif not out.scheduled:
                    out.scheduled = True
                    ready.append(conn)
            else:  # ERROR or RECONNECTING: kept for later, not written now
                held += 1
        self.queued_messages += queued
        self.queued_bytes += queued * size
        if held:
            self.held_messages += held
            self.held_bytes += held * size
        self._burst_calls += 1
        self._burst_bytes += size
        if ready and not self._wake_requested:
            self._request_flush()
        return queued + overflowed

    def note_fanout(self) -> None:
        """An observed fan-out was queued: the flusher's next round is timed from the first.

        Called only with an observer attached. A fan-out that left nothing for the flusher
        (every target has a writer of its own, or none took it) starts no timing.
        """
        if self._first_fanout is None and self._ready:
            self._first_fanout = anyio.current_time()

    def _overflowed(self, conn: Connection, message: Message, size: int) -> int:
        """The queue is full: apply the overflow policy. Returns 1: the message is accounted
        for, queued (making room, or not) or counted as dropped, now or on eviction."""
        policy = self.overflow
        out = conn._out
        assert out is not None  # (``fan_out`` made it)
        queue = out.pending
        assert queue is not None
        while True:
            pinged = 1 if queue and queue[0] is PING else 0
            decision = policy.decide(len(queue) - pinged, out.pending_bytes, size)
            if decision is OverflowDecision.ACCEPT:
                queue.append(message)
                out.pending_bytes += size
                self.queued_messages += 1
                self.queued_bytes += size
                if not conn.writable:
                    self.held_messages += 1
                    self.held_bytes += size
                self.schedule(conn)
                return 1
            if decision is OverflowDecision.DROP_OLDEST and len(queue) > pinged:
                oldest = queue[pinged]
                del queue[pinged]
                dropped = message_size(oldest)
                out.pending_bytes -= dropped
                self.queued_messages -= 1
                self.queued_bytes -= dropped
                if not conn.writable:
                    self.held_messages -= 1
                    self.held_bytes -= dropped
                self.count_drop("overflow: drop-oldest")
                continue
            if decision is OverflowDecision.DISCONNECT and conn.writable:
                # The message that did not fit is counted with the queue, on eviction.
                if conn not in self._evicted:  # (a short list: the evictions of one call)
                    self._evicted.append(conn)
                return 1
            if decision is OverflowDecision.DISCONNECT:
                # Already down and buffering for a reconnect: there is nobody to cut off.
                self.count_drop("overflow while down")
                return 1
            self.count_drop("overflow: drop-newest")
            return 1

    def take_evictions(self) -> list[Connection]:
        """The connections the last fan-outs found over their bound, to be evicted now."""
        evicted, self._evicted = self._evicted, []
        return evicted

    @property
    def has_evictions(self) -> bool:
        return bool(self._evicted)

    def count_drop(self, reason: str, n: int = 1) -> None:
        if n:
            self.drops[reason] += n

    def park(self, conn: Connection, held: bool) -> None:
        """``conn`` went into ERROR/RECONNECTING (``held``) or out of them: what its queue
        holds moves into or out of ``held_messages``/``held_bytes`` (``Fleet.apply`` calls
        this on every such change, before anything else touches the queue)."""
        out = conn._out
        if out is None or not out.pending:
            return
        messages = sum(1 for item in out.pending if item is not PING)
        sign = 1 if held else -1
        self.held_messages += sign * messages
        self.held_bytes += sign * out.pending_bytes

    def discard(self, conn: Connection, reason: str, *, refused: int = 0) -> None:
        """Drop everything queued for ``conn``, and ``refused`` messages that never got in,
        counted (and logged, once) under ``reason``."""
        out = conn._out
        queue = None if out is None else out.pending
        messages = refused
        if queue is not None:
            assert out is not None
            messages += sum(1 for item in queue if item is not PING)
            self.queued_messages -= messages - refused
            self.queued_bytes -= out.pending_bytes
            if not conn.writable and conn.state is not D:  # kept for later until now
                self.held_messages -= messages - refused
                self.held_bytes -= out.pending_bytes
            out.pending = None
            out.pending_bytes = 0
        if messages:
            self.count_drop(reason, messages)
            logger.warning("%d message(s) for %r dropped: %s", messages, conn.identifier, reason)

    def queue_ping(self, conn: Connection) -> None:
        out = conn._out
        if out is None:
            out = conn._out = Outgoing()
        if out.pending is None:
            out.pending = []
        out.pending.insert(0, PING)  # control frames jump the queue (bounded: cheap)
        self.schedule(conn)

    def stop_writer(self, conn: Connection) -> None:
        """End ``conn``'s writer, if it has one: the connection is not writable any more."""
        out = conn._out
        if out is not None and out.writer_scope is not None:
            out.writer_scope.cancel()

    # -- flushing ----------------------------------------------------------------------------

    def _request_flush(self) -> None:
        self._wake_requested = True
        self._wake.set()

    def schedule(self, conn: Connection) -> None:
        """Get what is queued for ``conn`` written: by its lingering writer, or the flusher."""
        out = conn._out
        state = conn.state
        if out is None or not out.pending or not (state is C or state is I):
            return
        if out.writing:
            wake = out.writer_wake
            if wake is not None:
                out.writer_wake = None
                wake.set()
        elif not out.scheduled:
            out.scheduled = True
            self._ready.append(conn)
            if not self._wake_requested:
                self._request_flush()

    def busy(self, conns: Iterable[Connection]) -> bool:
        """Whether anything writable is still queued or being written for ``conns``."""
        return any(
            (out := c._out) is not None
            and (out.pending or (out.writing and out.writer_wake is None))
            for c in conns
            if c.writable
        )

    def flush_soon(self, conns: Iterable[Connection]) -> None:
        for conn in conns:
            self.schedule(conn)
        self._request_flush()

    async def run(self) -> None:
        """The flusher task.

        Once woken, it lets the event loop go round before writing for as long as new
        fan-outs keep coming in each round: an application sending a burst with one
        ``await broadcast()`` after another then has it written as one batch per connection
        (one system call where the library allows), as ``manager.batch()`` would, while a
        lone message waits only two rounds. The wait is bounded by ``COALESCE_CALLS`` calls
        and by a quarter of the queue bounds, so a burst can never overflow a queue because
        of it, and a producer that never stops still gets its messages written.
        """
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._reap, name="wsfleet writer reaper")
            await self._flusher()

    async def _flusher(self) -> None:
        overflow = self.overflow
        max_calls = max(1, min(COALESCE_CALLS, overflow.max_messages // 4))
        max_bytes = overflow.max_bytes // 4
        while True:
            await self._wake.wait()
            self._burst_calls = self._burst_bytes = 0
            quiet = 0
            while self._burst_calls < max_calls and self._burst_bytes < max_bytes:
                calls = self._burst_calls
                await checkpoint()
                # Two rounds without a new fan-out: the burst, if any, is over. (One is not
                # enough on trio, which may run the producer before the flusher in one round
                # and after it in the next.)
                quiet = quiet + 1 if self._burst_calls == calls else 0
                if quiet == 2:
                    break
            self._wake = anyio.Event()
            self._wake_requested = False
            ready, self._ready = self._ready, []
            first, self._first_fanout = self._first_fanout, None
            await self._flush(ready)
            del ready  # hold no connection while waiting: a closed one must be free to go
            if first is not None and self.observer is not None:
                self.observer.flushed(anyio.current_time() - first)

    async def _flush(self, ready: list[Connection]) -> None:
        write_now = self._write_now
        failed: list[tuple[Connection, Exception]] = []
        for i, conn in enumerate(ready):
            out = conn._out
            assert out is not None  # (made before it was scheduled)
            out.scheduled = False
            state = conn.state
            if out.pending and not out.writing and (state is C or state is I) and conn.registered:
                error = write_now(conn)
                if error is not None:
                    failed.append((conn, error))
            if i % _FLUSH_SLICE == _FLUSH_SLICE - 1:
                self._report_failures(failed)
                await checkpoint()
        self._report_failures(failed)

    def _report_failures(self, failed: list[tuple[Connection, Exception]]) -> None:
        """Decide, then act: the sockets that failed in a slice are reported after it."""
        for conn, error in failed:
            self._reports.send_failed(conn, error)
        failed.clear()

    def _take_batch(self, conn: Connection) -> tuple[list[Outbound], int, int]:
        """Hand the whole queue over as one batch; a ping in it counts as sent from now."""
        out = conn._out
        assert out is not None
        batch = out.pending
        assert batch is not None
        nbytes = out.pending_bytes
        messages = len(batch)
        if batch[0] is PING:
            messages -= 1
            # Reported before the write: a transport may report the pong while writing.
            self._reports.ping_written(conn)
            self.pings_sent += 1
        out.pending = None
        out.pending_bytes = 0
        self.queued_messages -= messages
        self.queued_bytes -= nbytes
        self.progress += 1
        return batch, nbytes, messages

    def _write_now(self, conn: Connection) -> Exception | None:
        """Hand ``conn``'s queue to its transport without waiting; the socket's failure, if
        it failed (the caller reports it), else ``None``."""
        batch, nbytes, messages = self._take_batch(conn)
        transport = conn.transport
        try:
            written = transport.send_nowait(batch)
        except Exception as exc:
            return exc if self._send_failed(conn, exc, messages) else None
        out = conn._out
        assert out is not None
        if written:
            self.sent_messages += messages
            if transport.unsent:  # taken, not all on the wire yet: a writer finishes it
                out.writing = True
                self._context.spawn(self._writer, conn, name=f"wsfleet writer {conn.identifier}")
            return None
        # The transport pushes back: put the batch back and give the connection a writer.
        out.pending = batch
        out.pending_bytes = nbytes
        self.queued_messages += messages
        self.queued_bytes += nbytes
        if batch[0] is PING:  # not sent after all; the writer will stamp it
            self._reports.ping_unwritten(conn)
            self.pings_sent -= 1
        out.writing = True
        self._context.spawn(self._writer, conn, name=f"wsfleet writer {conn.identifier}")
        return None

    def _send_failed(self, conn: Connection, error: Exception, messages: int) -> bool:
        """A write raised: the socket failed (``True``: the caller reports it), or only this
        batch did (``False``: dropped, counted and logged, the connection untouched).

        Only an I/O failure says something about the peer. Anything else (an adapter's or a
        library's bug, a frame it would not build) belongs to the batch: taking it out on the
        connection would disconnect a peer that did nothing wrong, and with a shared frame,
        every recipient of the message at once.
        """
        if isinstance(error, TransportError | OSError):
            self.count_drop("send failed", messages)
            return True
        self.count_drop("send error", messages)
        logger.error(
            "writing %d message(s) to %r raised; dropped, the connection is kept",
            messages,
            conn,
            exc_info=error,
        )
        return False

    async def _writer(self, conn: Connection) -> None:
        """Write ``conn``'s queue for as long as it has something, then linger a little.

        Under steady traffic the next batch comes soon, and starting a task per batch costs
        more than the batch (a task spawn is tens of microseconds on trio); an idle
        connection still ends up with no task at all once ``WRITER_LINGER`` has passed.
        The linger is not a timeout of the writer's own: a cancel scope with a deadline per
        wait doubled the cost of a delivery on trio-websocket and ASGI (most of it in the
        garbage collector, and growing with the fleet). A waiting writer is noted in
        ``_idle`` instead, and ``_reap`` wakes the ones that waited too long.
        """
        out = conn._out
        assert out is not None  # (a writer starts for what was queued)
        messages = 0
        try:
            with anyio.CancelScope() as scope:
                out.writer_scope = scope
                transport = conn.transport
                while conn.registered and conn.writable:
                    nbytes = 0
                    if out.pending:
                        batch: Sequence[Outbound]
                        batch, nbytes, messages = self._take_batch(conn)
                    elif transport.unsent:
                        batch = ()  # the rest of what send_nowait took
                    else:
                        wake = out.writer_wake = anyio.Event()
                        idle = self._idle
                        if not idle and not self._reaper_wake.is_set():
                            self._reaper_wake.set()
                        idle[conn] = anyio.current_time()  # new key: last, as the newest
                        try:
                            await wake.wait()
                        finally:
                            idle.pop(conn, None)
                        out.writer_wake = None
                        if not out.pending:
                            break  # woken by the reaper (or for nothing): linger over
                        continue
                    try:
                        if nbytes > WRITE_SLICE and len(batch) > 1:
                            # Written in pieces, each counted as progress: a peer that
                            # reads slowly but steadily is not taken for one that stopped
                            # (``Fleet.room``), however long its whole queue takes.
                            for piece, count in _pieces(batch):
                                await transport.send(piece)
                                self.sent_messages += count
                                messages -= count
                                self.progress += 1
                        else:
                            await transport.send(batch)
                    except Exception as exc:
                        failed, messages = messages, 0
                        if self._send_failed(conn, exc, failed):
                            self._reports.send_failed(conn, exc)
                            return
                        continue
                    self.sent_messages += messages
                    self.progress += 1
                    messages = 0
            if scope.cancelled_caught and messages:
                # A batch was in flight when the connection was evicted or unregistered.
                self.count_drop("connection lost", messages)
        finally:
            out.writing = False
            out.writer_scope = None
            out.writer_wake = None
            if conn.registered:
                self.schedule(conn)

    async def _reap(self) -> None:
        """End the writers that have waited ``WRITER_LINGER`` with nothing to write.

        ``_idle`` is in the order writers started waiting, so only its first entry is ever
        looked at: O(1) per writer, however many wait.
        """
        idle = self._idle
        while True:
            if not idle:
                self._reaper_wake = anyio.Event()
                await self._reaper_wake.wait()
                continue
            conn, since = next(iter(idle.items()))
            delay = since + WRITER_LINGER - anyio.current_time()
            if delay > 0:
                await anyio.sleep(delay)
                continue
            del idle[conn]
            out = conn._out
            if out is not None and out.writer_wake is not None:
                wake, out.writer_wake = out.writer_wake, None
                wake.set()

    # -- closing ----------------------------------------------------------------------------

    async def close(self, transport: Transport, code: int, reason: str) -> None:
        """Close a transport, bounded by ``close_timeout``; never raises."""
        with anyio.move_on_after(self.close_timeout, shield=True):
            try:
                await transport.close(code, reason)
            except Exception as exc:
                logger.debug("closing %r failed: %r", transport, exc)


def _pieces(batch: Sequence[Outbound]) -> Iterator[tuple[Sequence[Outbound], int]]:
    """``batch`` in runs of about ``WRITE_SLICE`` bytes (text measured in characters: the
    pieces need not be exact), each with how many messages it holds (a ping is none)."""
    start = size = count = 0
    for end, item in enumerate(batch, 1):
        if item is PING:
            continue
        size += len(item)  # type: ignore[arg-type]
        count += 1
        if size >= WRITE_SLICE:
            yield batch[start:end], count
            start, size, count = end, 0, 0
    if start < len(batch):
        yield batch[start:], count
