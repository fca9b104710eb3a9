"""The five states a connection can be in.

Every in-between condition of a connection is one of these, never a flag kept beside it:
a server holding a session for a client to come back is RECONNECTING, a socket nobody has
heard from for a while is IDLE.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["HELD", "WRITABLE", "ConnectionState"]


class ConnectionState(enum.Enum):
    """Where a connection is in its life; the transition table says how it moves."""

    CONNECTED = "connected"
    IDLE = "idle"
    ERROR = "error"
    RECONNECTING = "reconnecting"
    DISCONNECTED = "disconnected"

    def __repr__(self) -> str:
        return f"ConnectionState.{self.name}"


#: The states in which messages are written to the socket (elsewhere they wait, or go).
WRITABLE: Final = frozenset((ConnectionState.CONNECTED, ConnectionState.IDLE))

#: The states of a connection kept for a retry or a resume: registered, in its groups,
#: buffering what is sent to it, but with no socket to write to.
HELD: Final = frozenset((ConnectionState.ERROR, ConnectionState.RECONNECTING))
