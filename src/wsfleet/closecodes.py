"""The WebSocket close codes wsfleet gives a meaning to (RFC 6455, section 7.4).

A close is *clean* when it says goodbye: the connection ends DISCONNECTED. Any other code,
or none at all (1006: the TCP connection went away without a closing frame), is abnormal:
ERROR, and a retry or a resume may follow. Some codes also tell a client not to come back.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CLEAN",
    "GOING_AWAY",
    "INTERNAL_ERROR",
    "MAX_REASON_BYTES",
    "MESSAGE_TOO_BIG",
    "POLICY_VIOLATION",
    "UNAUTHENTICATED",
    "is_clean",
    "is_final",
    "sendable",
]

#: 1000 normal, 1001 going away, and 1005: a closing frame that carried no code, which is
#: what a browser's plain ``ws.close()`` sends.
CLEAN: Final = frozenset((1000, 1001, 1005))

#: What the manager closes sockets with: leaving its block; an eviction (a slow consumer,
#: a refused identifier); a heartbeat timeout.
GOING_AWAY: Final = 1001
POLICY_VIOLATION: Final = 1008
#: An inbound message over the size limit (``ConnectionManager(max_message_size=...)``).
MESSAGE_TOO_BIG: Final = 1009
INTERNAL_ERROR: Final = 1011

#: What a socket the authentication hook refused after its handshake is closed with: 4401,
#: in the application's range, read as HTTP's 401. A final code (``is_final``): a client
#: should not come back with the same credentials.
UNAUTHENTICATED: Final = 4401


#: The longest close reason a close frame can carry (125 bytes of payload, 2 for the code).
MAX_REASON_BYTES: Final = 123

#: Codes the protocol reserves for reporting, never to be sent in a close frame.
_NEVER_SENT: Final = frozenset((1004, 1005, 1006, 1015))


def sendable(code: object, reason: object) -> str | None:
    """Why ``code`` and ``reason`` cannot go in a close frame, or ``None`` if they can.

    RFC 6455 allows 1000-1003 and 1007-1014 of the protocol's range (1004, 1005, 1006 and
    1015 are reserved for reporting) and 3000-4999 (libraries, then applications); a reason
    is text of at most 123 bytes in UTF-8. A library sent anything else either drops the
    connection or puts an invalid frame on the wire.
    """
    if isinstance(code, bool) or not isinstance(code, int):
        return f"a close code is an int, got {type(code).__name__}"
    if not (1000 <= code <= 1014 or 3000 <= code <= 4999) or code in _NEVER_SENT:
        return f"close code {code} cannot be sent (1000-1003, 1007-1014 or 3000-4999)"
    if not isinstance(reason, str):
        return f"a close reason is a str, got {type(reason).__name__}"
    try:
        size = len(reason.encode("utf-8"))
    except UnicodeEncodeError:
        return "a close reason must be valid Unicode text"
    if size > MAX_REASON_BYTES:
        return f"a close reason is at most {MAX_REASON_BYTES} bytes in UTF-8, got {size}"
    return None


def is_clean(code: int | None) -> bool:
    """Whether ``code`` is a goodbye (DISCONNECTED) rather than a failure (ERROR)."""
    return code in CLEAN


def is_final(code: int) -> bool:
    """Close codes after which a client should not come back: a policy violation (1008)
    and the application's own range (4000-4999)."""
    return code == POLICY_VIOLATION or 4000 <= code <= 4999
