"""One registered socket: its lifecycle, its outbound queue and its timers' bookkeeping.

Everything a connection needs is in this one slotted object (the state machine part is
inherited from ``Lifecycle``), so an idle connection costs a few hundred bytes: no task, no
event and no queue are kept for it until it has something to send.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .fsm.machine import Lifecycle
from .transport import Message, Outbound, Transport

if TYPE_CHECKING:
    import anyio

    from ._manager import ConnectionManager

__all__ = ["Connection", "Reconnector"]

Reconnector = Callable[["Connection"], Awaitable[Transport]]
"""What an attempt does: returns a fresh transport, or raises to fail the attempt."""


class Connection(Lifecycle):
    """A socket registered with a manager, under an identifier.

    Adapters call ``touch``, ``closed`` and ``failed`` to report what the socket did; the
    application reads ``state``, ``state_since``, ``identifier`` and ``socket``.
    """

    __slots__ = (
        "hb_armed",
        "held",
        "identifier",
        "idle_armed",
        "last_message",
        "last_ping",
        "last_seen",
        "manager",
        "pending",
        "pending_bytes",
        "ping_queued_at",
        "ping_sent_at",
        "reconnector",
        "registered",
        "resume_token",
        "retry_serial",
        "scheduled",
        "socket",
        "transport",
        "writer_scope",
        "writer_wake",
        "writing",
    )

    def __init__(
        self,
        manager: ConnectionManager,
        socket: object,
        transport: Transport,
        identifier: str,
        now: float,
    ) -> None:
        super().__init__()
        self.manager = manager
        self.socket = socket
        self.transport = transport
        self.identifier = identifier
        #: Messages waiting to be written; ``None`` while there are none (saves a list).
        self.pending: list[Outbound] | None = None
        self.pending_bytes = 0
        #: In the manager's ready list, waiting for the flusher.
        self.scheduled = False
        #: A writer task owns the queue (the transport could not take a batch at once).
        self.writing = False
        self.writer_scope: anyio.CancelScope | None = None
        #: Set while a writer task lingers with nothing to write: setting it wakes the task.
        self.writer_wake: anyio.Event | None = None
        self.last_seen = now
        self.last_message = now
        self.last_ping = now
        self.ping_queued_at: float | None = None
        self.ping_sent_at: float | None = None
        self.hb_armed = False
        self.idle_armed = False
        self.registered = True
        self.reconnector: Reconnector | None = None
        #: Which retry request is current; a timer of an older one is ignored.
        self.retry_serial = 0
        #: Handed to the client; brings a held session back (server-side resumption).
        self.resume_token: str | None = None
        #: The application's handler has ended; the manager holds the session for a resume.
        self.held = False

    def __repr__(self) -> str:
        return f"<Connection {self.identifier!r} {self.state.name}>"

    @property
    def state_since(self) -> datetime:
        """When the connection entered its current state (aware, UTC)."""
        return self.manager._machine.timestamp(self)

    @property
    def queued(self) -> int:
        """Messages waiting to be written to this connection."""
        return 0 if self.pending is None else len(self.pending)

    def touch(self, *, pong: bool = False) -> None:
        """Report inbound activity: a message, or (``pong=True``) a pong.

        Both prove the peer alive for the heartbeat; only messages count as activity for
        idleness, or keepalive pings alone would keep every connection CONNECTED.
        """
        self.manager._touch(self, pong)

    def closed(self, code: int | None = 1000, reason: str = "") -> None:
        """Report that the socket closed: cleanly (1000, 1001) or abnormally (anything else)."""
        self.manager._transport_closed(self, code, reason)

    def failed(self, error: BaseException | str) -> None:
        """Report an I/O failure of the socket; the connection goes to ERROR."""
        self.manager._transport_failed(self, error)

    async def send(self, message: Message) -> int:
        """Queue ``message`` for this connection alone; returns 1 if queued."""
        return self.manager._send_to_connections((self,), message)

    def __getstate__(self) -> Any:
        raise TypeError("a Connection holds a live socket and cannot be pickled")
