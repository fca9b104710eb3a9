"""One registered socket, and the bookkeeping each runtime part keeps for it.

A ``Connection`` is what users hold: its identifier, socket, state (it *is* the state
machine's ``Lifecycle``), when the state last changed, its queue depth. The parts of the
runtime each keep their own bookkeeping in an object of their own on it, which only that
part reads or writes:

* ``_out`` (``Outgoing``): the outbox's queue and writer, made by the outbox when the
  connection is first sent something (``None`` until then);
* ``_beat`` (``Liveness``): the timers' heartbeat, idleness and retry bookkeeping;
* ``_hold`` (``Holding``): resumption's token and hold, made only for a connection that
  can be held (``None`` otherwise: most never are).

So a part can be read and tested alone, and nothing it keeps shows on the public surface.
An idle connection still costs a few hundred bytes: no task, no event and no queue until
it has something to send. The parts made on first use matter beyond their bytes: every
object of its own that a registration makes is one more for the garbage collector to
count and to go through, which showed in what a register + unregister costs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from ..fsm.machine import Lifecycle
from ..fsm.states import ConnectionState
from ..policies.ratelimit import Bucket
from ..transport import Message, Outbound, Transport

if TYPE_CHECKING:
    import anyio

__all__ = ["Connection", "Holding", "Liveness", "Outgoing", "Owner", "Reconnector"]

Reconnector = Callable[["Connection"], Awaitable[Transport]]
"""What a retry attempt does: returns a fresh transport, or raises to fail the attempt."""


class Owner(Protocol):
    """What a connection reports to, and asks: the runtime that holds it."""

    def touched(self, conn: Connection, pong: bool) -> None: ...

    def closed(self, conn: Connection, code: int | None, reason: str) -> None: ...

    def failed(self, conn: Connection, error: BaseException | str) -> None: ...

    def timestamp(self, conn: Connection) -> datetime: ...

    def send_to(self, conn: Connection, message: Message) -> int: ...


class Outgoing:
    """The outbox's part: the queue waiting for the socket, and who writes it."""

    __slots__ = ("pending", "pending_bytes", "scheduled", "writer_scope", "writer_wake", "writing")

    def __init__(self) -> None:
        #: Messages waiting to be written; ``None`` while there are none (saves a list).
        self.pending: list[Outbound] | None = None
        self.pending_bytes = 0
        #: In the outbox's ready list, waiting for the flusher.
        self.scheduled = False
        #: A writer task owns the queue (the transport could not take a batch at once).
        self.writing = False
        self.writer_scope: anyio.CancelScope | None = None
        #: Set while a writer task lingers with nothing to write: setting it wakes the task.
        self.writer_wake: anyio.Event | None = None


class Liveness:
    """The timers' part: when the peer was last heard from, pings, retries."""

    __slots__ = (
        "hb_armed",
        "idle_armed",
        "last_message",
        "last_ping",
        "last_seen",
        "ping_queued_at",
        "ping_sent_at",
        "reconnector",
        "retry_serial",
    )

    def __init__(self, now: float) -> None:
        self.last_seen = now
        self.last_message = now
        self.last_ping = now
        self.ping_queued_at: float | None = None
        self.ping_sent_at: float | None = None
        self.hb_armed = False
        self.idle_armed = False
        #: What a retry attempt runs (an outbound dial, a held session's wait).
        self.reconnector: Reconnector | None = None
        #: Which retry request is current; a timer of an older one is ignored.
        self.retry_serial = 0


class Holding:
    """Resumption's part: the token handed to the client, and whether it is held."""

    __slots__ = ("held", "token")

    def __init__(self) -> None:
        #: Handed to the client; brings a held session back (server-side resumption).
        self.token: str | None = None
        #: The application's handler has ended; the session waits for its client.
        self.held = False


class Connection(Lifecycle):
    """A socket registered with a manager, under an identifier.

    Adapters call ``touch``, ``closed`` and ``failed`` to report what the socket did; the
    application reads ``identifier``, ``socket``, ``state``, ``state_since``, ``queued``.
    """

    __slots__ = (
        "_beat",
        "_bucket",
        "_hold",
        "_out",
        "_owner",
        "_sized",
        "cut_off",
        "dialled",
        "identifier",
        "leaving",
        "registered",
        "socket",
        "transport",
    )

    def __init__(
        self, owner: Owner, socket: object, transport: Transport, identifier: str, now: float
    ) -> None:
        super().__init__()
        self._owner = owner
        self.socket = socket
        self.transport = transport
        self.identifier = identifier
        self.registered = True
        #: The manager dialled it (``manager.connect``): nobody else closes its socket.
        self.dialled = False
        #: The application is closing it (``manager.close``): what the socket reports while
        #: that close runs (the close itself, coming back) is not news.
        self.leaving = False
        self._out: Outgoing | None = None
        self._beat = Liveness(now)
        self._hold: Holding | None = None
        #: The inbound gate's part: this sender's rate-limit bucket, once it sent something.
        self._bucket: Bucket | None = None
        #: The transport refuses oversize messages itself (``Transport.limit_inbound``).
        self._sized = False
        #: The close code and reason the manager cut this connection off with, if it did.
        self.cut_off: tuple[int, str] | None = None

    def __repr__(self) -> str:
        return f"<Connection {self.identifier!r} {self.state.name}>"

    @property
    def state_since(self) -> datetime:
        """When the connection entered its current state (aware, UTC)."""
        return self._owner.timestamp(self)

    @property
    def queued(self) -> int:
        """Messages waiting to be written to this connection."""
        out = self._out
        if out is None:
            return 0
        pending = out.pending
        return 0 if pending is None else len(pending)

    @property
    def queued_bytes(self) -> int:
        """Bytes of the messages waiting to be written to this connection."""
        out = self._out
        return 0 if out is None else out.pending_bytes

    @property
    def resume_token(self) -> str | None:
        """The token a client hands back to take this session over (see resumption)."""
        hold = self._hold
        return None if hold is None else hold.token

    @property
    def held(self) -> bool:
        """Kept for its client to come back: the handler ended, the session did not."""
        hold = self._hold
        return hold is not None and hold.held

    @property
    def writable(self) -> bool:
        """CONNECTED or IDLE: messages are written to it, not only queued."""
        state = self.state
        return state is ConnectionState.CONNECTED or state is ConnectionState.IDLE

    def touch(self, *, pong: bool = False) -> None:
        """Report inbound activity: a message, or (``pong=True``) a pong.

        Both prove the peer alive for the heartbeat; only messages count as activity for
        idleness, or keepalive pings alone would keep every connection CONNECTED.
        """
        self._owner.touched(self, pong)

    def closed(self, code: int | None = 1000, reason: str = "") -> None:
        """Report that the socket closed: cleanly (1000, 1001, 1005) or abnormally."""
        self._owner.closed(self, code, reason)

    def failed(self, error: BaseException | str) -> None:
        """Report an I/O failure of the socket; the connection goes to ERROR."""
        self._owner.failed(self, error)

    async def send(self, message: Message) -> int:
        """Queue ``message`` for this connection alone; returns 1 if queued."""
        return self._owner.send_to(self, message)

    def __getstate__(self) -> Any:
        raise TypeError("a Connection holds a live socket and cannot be pickled")
