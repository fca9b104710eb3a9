"""When to ping a connection, when to give up on it, and when to call it idle.

A TCP connection can die without either end hearing about it (a NAT forgets it, a laptop
sleeps); only traffic proves it is alive. The policy turns timestamps into deadlines for the
manager's timer wheel and never reads a clock itself: every method takes the times it needs,
in the monotonic seconds the manager uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from wsfleet.errors import InvalidPolicy

from ._validate import check_above, to_seconds

__all__ = ["HeartbeatPolicy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatPolicy:
    """Keepalive pings and idleness for one connection.

    The defaults follow websockets: a ping every 20 s keeps traffic flowing well inside the
    60 s idle timeout of common proxies and load balancers, and a pong overdue by 20 s marks
    the peer dead, so a vanished peer is noticed within about 40 s. ``idle_after`` (60 s)
    moves a connection with no inbound message from CONNECTED to IDLE so the application can
    tell quiet clients from busy ones; pongs should not count as activity, or keepalive alone
    would keep every connection busy. ``None`` switches a feature off; a timeout without pings
    would never fire, so ``ping_timeout`` must then be ``None`` too. Durations are seconds
    (``float``) or ``timedelta`` and are stored as float seconds.
    """

    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    idle_after: float | None = 60.0

    if TYPE_CHECKING:
        # What the constructor accepts before normalisation; the fields hold the normal forms.
        def __init__(
            self,
            *,
            ping_interval: float | timedelta | None = 20.0,
            ping_timeout: float | timedelta | None = 20.0,
            idle_after: float | timedelta | None = 60.0,
        ) -> None: ...

    def __post_init__(self) -> None:
        for name in ("ping_interval", "ping_timeout", "idle_after"):
            value = getattr(self, name)
            if value is not None:
                value = to_seconds(name, value)
                check_above(name, value, 0.0)
                object.__setattr__(self, name, value)
        if self.ping_interval is None and self.ping_timeout is not None:
            raise InvalidPolicy(
                "ping_timeout",
                f"must be None when ping_interval is None, got {self.ping_timeout}",
            )

    def next_ping_at(self, last_ping_sent: float | None, now: float) -> float | None:
        """When to send the next ping, or ``None`` if pings are off.

        With no ping sent yet, the first is due one interval from ``now`` (call it when the
        connection opens). A deadline at or before ``now`` means a ping is overdue.
        """
        if self.ping_interval is None:
            return None
        start = now if last_ping_sent is None else last_ping_sent
        return start + self.ping_interval

    def pong_deadline(self, ping_sent_at: float) -> float | None:
        """When a ping sent at ``ping_sent_at`` goes unanswered for too long, or ``None``."""
        if self.ping_timeout is None:
            return None
        return ping_sent_at + self.ping_timeout

    def idle_deadline(self, last_activity: float) -> float | None:
        """When a connection last heard from at ``last_activity`` becomes IDLE, or ``None``."""
        if self.idle_after is None:
            return None
        return last_activity + self.idle_after

    def is_dead(self, ping_sent_at: float | None, last_pong: float | None, now: float) -> bool:
        """Whether a ping is outstanding (no pong since it was sent) and has timed out."""
        if self.ping_timeout is None or ping_sent_at is None:
            return False
        if last_pong is not None and last_pong >= ping_sent_at:
            return False
        return now >= ping_sent_at + self.ping_timeout
