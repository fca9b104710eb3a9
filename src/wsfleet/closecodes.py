"""The WebSocket close codes wsfleet gives a meaning to (RFC 6455, section 7.4).

A close is *clean* when it says goodbye: the connection ends DISCONNECTED. Any other code,
or none at all (1006: the TCP connection went away without a closing frame), is abnormal:
ERROR, and a retry or a resume may follow. Some codes also tell a client not to come back.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CLEAN", "GOING_AWAY", "INTERNAL_ERROR", "POLICY_VIOLATION", "is_clean", "is_final"]

#: 1000 normal, 1001 going away, and 1005: a closing frame that carried no code, which is
#: what a browser's plain ``ws.close()`` sends.
CLEAN: Final = frozenset((1000, 1001, 1005))

#: What the manager closes sockets with: leaving its block; an eviction (a slow consumer,
#: a refused identifier); a heartbeat timeout.
GOING_AWAY: Final = 1001
POLICY_VIOLATION: Final = 1008
INTERNAL_ERROR: Final = 1011


def is_clean(code: int | None) -> bool:
    """Whether ``code`` is a goodbye (DISCONNECTED) rather than a failure (ERROR)."""
    return code in CLEAN


def is_final(code: int) -> bool:
    """Close codes after which a client should not come back: a policy violation (1008)
    and the application's own range (4000-4999)."""
    return code == POLICY_VIOLATION or 4000 <= code <= 4999
