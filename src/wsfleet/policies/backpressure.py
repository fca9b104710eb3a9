"""When a producer must wait: the server is behind, not one of its clients.

A per-connection bound (``OverflowPolicy``) is for one peer that stopped reading: its queue
fills while the others drain, and evicting it protects everyone else. When the server as a
whole cannot keep up (its writers write one message at a time, the CPU is saturated), every
queue grows at once; the same bound would then evict every healthy client together. What
helps then is to slow the producer down: fan-out calls wait until the writers have caught up.

Two signs say the fleet, not a peer, is behind: the bytes queued across all connections pass
``max_queued_bytes`` (memory, whatever the cause), or the queues together are fuller than
``max_fill`` of what their bounds allow (one full queue among many barely moves that share;
every queue half full does). The second matters only where a full queue evicts its client
(the overflow policy's "disconnect"); under "drop-oldest" or "drop-newest" a full queue
loses messages by the application's choice, and the producer is not held for it.

A wait is bounded (``max_wait``), and it ends as soon as the writers stop making progress for
``stall_after``: peers that stopped reading will not drain, waiting for them would block the
producer on them, and their own bound evicts them instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from ._validate import check_above, check_at_most, to_count, to_number, to_seconds

__all__ = ["BackpressurePolicy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BackpressurePolicy:
    """How far the fleet's queues may grow before fan-out calls wait for the writers.

    ``max_queued_bytes`` is across every connection (64 MiB by default); ``max_fill`` is the
    share of the queues' combined bounds (messages or bytes) in use (one half by default).
    Durations are seconds (``float``) or ``timedelta`` and are stored as float seconds.
    """

    max_queued_bytes: int = 64 * 1024 * 1024
    max_fill: float = 0.5
    max_wait: float = 10.0
    stall_after: float = 0.5

    if TYPE_CHECKING:
        # What the constructor accepts before normalisation; the fields hold the normal forms.
        def __init__(
            self,
            *,
            max_queued_bytes: int = 64 * 1024 * 1024,
            max_fill: float = 0.5,
            max_wait: float | timedelta = 10.0,
            stall_after: float | timedelta = 0.5,
        ) -> None: ...

    def __post_init__(self) -> None:
        to_count("max_queued_bytes", self.max_queued_bytes, minimum=1)
        fill = to_number("max_fill", self.max_fill)
        check_above("max_fill", fill, 0.0)
        check_at_most("max_fill", fill, 1.0)
        object.__setattr__(self, "max_fill", fill)
        for name in ("max_wait", "stall_after"):
            seconds = to_seconds(name, getattr(self, name))
            check_above(name, seconds, 0.0)
            object.__setattr__(self, name, seconds)

    def behind(
        self,
        *,
        queued_messages: int,
        queued_bytes: int,
        connections: int,
        queue_messages: int,
        queue_bytes: int,
        evicting: bool = True,
    ) -> bool:
        """Whether the fleet is behind: producers should wait for the writers.

        ``queue_messages`` and ``queue_bytes`` are one connection's bounds (the overflow
        policy's); ``connections`` how many queues there are; ``evicting`` whether a full
        queue evicts its client.
        """
        if queued_bytes > self.max_queued_bytes:
            return True
        if not evicting:
            return False
        share = self.max_fill * connections
        return queued_messages > share * queue_messages or queued_bytes > share * queue_bytes
