"""Pure, frozen policies: retry delays, keepalive deadlines, queue overflow, backpressure,
group history.

They compute and decide; they never sleep, read a clock or touch a socket, so the manager and
every adapter share them and tests drive them with plain numbers.
"""

from .backpressure import BackpressurePolicy
from .heartbeat import HeartbeatPolicy
from .history import HistoryPolicy, Position
from .overflow import OverflowAction, OverflowDecision, OverflowPolicy
from .ratelimit import RateLimitAction, RateLimitPolicy, RateLimitScope
from .retry import DEFAULT_RETRY_POLICY, JitterMode, RetryPolicy

__all__ = [
    "DEFAULT_RETRY_POLICY",
    "BackpressurePolicy",
    "HeartbeatPolicy",
    "HistoryPolicy",
    "JitterMode",
    "OverflowAction",
    "OverflowDecision",
    "OverflowPolicy",
    "Position",
    "RateLimitAction",
    "RateLimitPolicy",
    "RateLimitScope",
    "RetryPolicy",
]
