"""wsfleet: manage fleets of WebSocket connections on trio and asyncio.

Importing this package never imports an optional integration (trio, trio-websocket,
websockets, starlette, coredis); the adapters that need them live in ``wsfleet.adapters``.
The names that need an event loop library (the manager and its helpers, which use anyio)
are loaded on first use, so that ``import wsfleet.fsm`` and ``import wsfleet.policies``,
which run this file first, stay free of any I/O library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    AlreadyRegistered,
    FinalRefusal,
    InvalidArgument,
    InvalidMeta,
    InvalidPolicy,
    InvalidTransition,
    JoinRefused,
    MalformedEnvelope,
    ManagerClosed,
    MessageTooLarge,
    RecoveryImpossible,
    ResumeExpired,
    RetriesExhausted,
    TransportClosed,
    TransportError,
    Unauthenticated,
    UnencodableMessage,
    UnknownIdentifier,
    UnknownSocket,
    WrongThread,
    WrongType,
    WsfleetError,
)
from .fsm import TABLE, ConnectionState, StateChange
from .policies import (
    BackpressurePolicy,
    HeartbeatPolicy,
    HistoryPolicy,
    JitterMode,
    OverflowAction,
    OverflowPolicy,
    Position,
    RateLimitAction,
    RateLimitPolicy,
    RateLimitScope,
    RetryPolicy,
)
from .presence import MAX_META_BYTES, PresenceEvent

if TYPE_CHECKING:
    from ._manager import ConnectionManager
    from ._runtime.callbacks import CallbackHandle
    from ._runtime.connection import Connection
    from ._runtime.session import Session
    from ._runtime.stats import Delivery, FleetStats
    from .backplane import Backplane, InMemoryHub
    from .transport import PING, Message, Transport, register_adapter

__version__ = "0.1.0.dev0"

_LAZY = {
    "Backplane": ".backplane",
    "CallbackHandle": "._runtime.callbacks",
    "Connection": "._runtime.connection",
    "ConnectionManager": "._manager",
    "Delivery": "._runtime.stats",
    "FleetStats": "._runtime.stats",
    "InMemoryHub": ".backplane",
    "Message": ".transport",
    "PING": ".transport",
    "Session": "._runtime.session",
    "Transport": ".transport",
    "register_adapter": ".transport",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wsfleet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names (and the subpackages already imported), not this file's helpers."""
    loaded = {
        name
        for name in ("adapters", "backplane", "fsm", "policies", "testing")
        if name in globals()
    }
    return sorted(set(__all__) | loaded)


__all__ = [
    "MAX_META_BYTES",
    "PING",
    "TABLE",
    "AlreadyRegistered",
    "Backplane",
    "BackpressurePolicy",
    "CallbackHandle",
    "Connection",
    "ConnectionManager",
    "ConnectionState",
    "Delivery",
    "FinalRefusal",
    "FleetStats",
    "HeartbeatPolicy",
    "HistoryPolicy",
    "InMemoryHub",
    "InvalidArgument",
    "InvalidMeta",
    "InvalidPolicy",
    "InvalidTransition",
    "JitterMode",
    "JoinRefused",
    "MalformedEnvelope",
    "ManagerClosed",
    "Message",
    "MessageTooLarge",
    "OverflowAction",
    "OverflowPolicy",
    "Position",
    "PresenceEvent",
    "RateLimitAction",
    "RateLimitPolicy",
    "RateLimitScope",
    "RecoveryImpossible",
    "ResumeExpired",
    "RetriesExhausted",
    "RetryPolicy",
    "Session",
    "StateChange",
    "Transport",
    "TransportClosed",
    "TransportError",
    "Unauthenticated",
    "UnencodableMessage",
    "UnknownIdentifier",
    "UnknownSocket",
    "WrongThread",
    "WrongType",
    "WsfleetError",
    "__version__",
    "register_adapter",
]
