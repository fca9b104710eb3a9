"""What comes in: counted, and held to the ``RateLimitPolicy`` before the application sees it.

Every message a session receives passes ``admit`` first. Without a policy it is only
counted. With one, its sender's token bucket (the connection's, or its identifier's when all
of a user's sockets share one budget) decides: within the limit, the message goes on to the
application; over it, it is dropped and counted, or the sender is cut off with 1008
"rate limit", as the policy says. A bucket is a few floats refilled when the next message
comes: no task and no timer per message or per sender, so a flooding client costs one check
per message and nothing else.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Protocol

from ..policies.ratelimit import Bucket, RateLimitAction, RateLimitPolicy, RateLimitScope
from ..transport import Message, message_size
from .connection import Connection
from .context import Context

__all__ = ["Inbound", "InboundReports"]

logger = logging.getLogger("wsfleet")


class InboundReports(Protocol):
    """What the inbound gate tells its owner."""

    def rate_limited(self, conn: Connection) -> None:
        """``conn``'s sender went over its limit under the "close" action: cut it off."""


class Inbound:
    """The gate every inbound message passes; its counters feed ``manager.stats()``."""

    def __init__(
        self, context: Context, policy: RateLimitPolicy | None, reports: InboundReports
    ) -> None:
        self._context = context
        self._reports = reports
        self.policy = policy
        #: Identifier -> the budget all its sockets here share (``RateLimitScope.IDENTIFIER``).
        self._shared: dict[str, Bucket] = {}
        self.received_messages = 0
        self.drops: Counter[str] = Counter()

    def admit(self, conn: Connection, message: Message) -> bool:
        """Whether ``message`` from ``conn`` goes on to the application."""
        self.received_messages += 1
        policy = self.policy
        if policy is None:
            return True
        now = self._context.now()
        size = 0 if policy.bytes_per_second is None else message_size(message)
        if policy.scope is RateLimitScope.CONNECTION:
            bucket = conn._bucket
            admitted, conn._bucket = policy.take(
                policy.full(now) if bucket is None else bucket, now, size
            )
        else:
            shared = self._shared
            bucket = shared.get(conn.identifier)
            admitted, shared[conn.identifier] = policy.take(
                policy.full(now) if bucket is None else bucket, now, size
            )
        if admitted:
            return True
        self.drops["rate limit"] += 1
        dropped = self.drops["rate limit"]
        if dropped == 1 or dropped % 1000 == 0:
            logger.warning(
                "%r is over its rate limit: message dropped (%d so far, "
                "stats().inbound_drops['rate limit'])",
                conn,
                dropped,
            )
        if policy.action is RateLimitAction.CLOSE:
            self._reports.rate_limited(conn)
        return False

    def forget(self, identifier: str) -> None:
        """``identifier`` has no socket here any more: its shared budget goes with it."""
        self._shared.pop(identifier, None)
