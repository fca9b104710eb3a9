"""wsfleet: manage fleets of WebSocket connections on trio and asyncio.

Importing this package never imports an optional integration (trio, trio-websocket,
websockets, starlette, coredis); the adapters that need them live in ``wsfleet.adapters``.
"""

from ._errors import (
    AlreadyRegistered,
    InvalidArgument,
    InvalidPolicy,
    InvalidTransition,
    ManagerClosed,
    MessageTooLarge,
    RetriesExhausted,
    UnknownIdentifier,
    UnknownSocket,
    WrongType,
    WsfleetError,
)
from .fsm import TABLE, ConnectionState, StateChange
from .policies import (
    HeartbeatPolicy,
    JitterMode,
    OverflowAction,
    OverflowPolicy,
    RetryPolicy,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "TABLE",
    "AlreadyRegistered",
    "ConnectionState",
    "HeartbeatPolicy",
    "InvalidArgument",
    "InvalidPolicy",
    "InvalidTransition",
    "JitterMode",
    "ManagerClosed",
    "MessageTooLarge",
    "OverflowAction",
    "OverflowPolicy",
    "RetriesExhausted",
    "RetryPolicy",
    "StateChange",
    "UnknownIdentifier",
    "UnknownSocket",
    "WrongType",
    "WsfleetError",
    "__version__",
]
