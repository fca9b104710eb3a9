"""The five states a connection can be in.

Every in-between condition of a connection is one of these, never a flag kept beside it:
a server holding a session for a client to come back is RECONNECTING, a socket nobody has
heard from for a while is IDLE.
"""

from __future__ import annotations

import enum

__all__ = ["ConnectionState"]


class ConnectionState(enum.Enum):
    """Where a connection is in its life; the transition table says how it moves."""

    CONNECTED = "connected"
    IDLE = "idle"
    ERROR = "error"
    RECONNECTING = "reconnecting"
    DISCONNECTED = "disconnected"

    def __repr__(self) -> str:
        return f"ConnectionState.{self.name}"
