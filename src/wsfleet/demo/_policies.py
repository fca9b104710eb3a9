"""The policies the demo runs with: short, so that a visitor sees each one act.

The library's defaults (a ping every 20 s, idle after 60 s, a client 1 MiB behind cut off)
suit production and would make a visitor wait minutes for anything to happen. These keep the
same shape and make every state of the machine reachable within seconds.
"""

from __future__ import annotations

from typing import Final

from ..policies import HeartbeatPolicy, OverflowPolicy, RetryPolicy

__all__ = ["ADMINS", "HEARTBEAT", "NO_RETRY", "OVERFLOW", "RESERVED", "RETRY", "describe"]

#: The group whose members receive the dashboard's updates (as in the seed's example).
ADMINS: Final = "admins"
#: The identifier every dashboard registers under; chat users may not take it.
RESERVED: Final = frozenset(("dashboard",))

#: A vanished browser is noticed within 10 s; a quiet one turns IDLE after 20 s.
HEARTBEAT: Final = HeartbeatPolicy(ping_interval=5, ping_timeout=5, idle_after=20)

#: Server-side resumption: a connection that ends abnormally is held (ERROR, then
#: RECONNECTING) for as long as a client following this schedule keeps trying (about 24 s),
#: so a browser that comes back with its token gets its session, groups and missed messages.
RETRY: Final = RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=8.0, jitter=0.1)

#: Simulated clients have nobody to come back for them: evicted means gone.
NO_RETRY: Final = RetryPolicy(max_attempts=0)

#: A client 200 messages behind is evicted (1008 slow consumer) so one stalled reader never
#: costs the others memory. No message may pass 128 KiB: the chat's replies and the
#: dashboard's snapshots are built to fit it, whatever the visitors do (``_chat``, ``_board``).
OVERFLOW: Final = OverflowPolicy(
    max_messages=200, max_bytes=512 * 1024, action="disconnect", max_message_size=128 * 1024
)


def describe() -> dict[str, str]:
    """The policies in words, for the dashboard's header."""
    return {
        "heartbeat": (
            f"ping every {HEARTBEAT.ping_interval:g} s, dead after {HEARTBEAT.ping_timeout:g} s "
            f"without an answer, IDLE after {HEARTBEAT.idle_after:g} s without a message"
        ),
        "retry": (
            f"abnormal close: held for resumption, {RETRY.max_attempts} attempts from "
            f"{RETRY.base_delay:g} s to {RETRY.max_delay:g} s "
            f"(about {RETRY.max_total_delay():.0f} s in all)"
        ),
        "overflow": (
            f"more than {OVERFLOW.max_messages} messages or {OVERFLOW.max_bytes // 1024} KiB "
            f"queued: {OVERFLOW.action.value} (close 1008 slow consumer)"
        ),
    }
