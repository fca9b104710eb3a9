"""What comes in: counted, and held to the ``RateLimitPolicy`` before the application sees it.

Every message a session receives passes ``admit`` first. Without a policy it is only
counted. With one, its sender's token bucket (the connection's, or its identifier's when all
of a user's sockets share one budget) decides, and ``admit`` answers two things: whether the
message goes on to the application, and for how long the session must not read that sender
again. Over the limit the sender is always paused, whatever becomes of the message (it waits,
it is dropped, or its sender is cut off with 1008 "rate limit"): a flood that is still read
at full speed costs the server as much as one that is delivered. A bucket is a few floats
refilled when the next message comes: no task and no timer per message or per sender.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Final, Protocol

from ..policies.ratelimit import Bucket, RateLimitAction, RateLimitPolicy, RateLimitScope
from ..transport import Message, message_size
from .connection import Connection
from .context import Context

__all__ = ["Inbound", "InboundReports"]

logger = logging.getLogger("wsfleet")

#: ``admit``'s answer for a message within the limit: deliver it, read on at once.
PASS: Final = (True, 0.0)
#: ``admit``'s answer for a message refused outright: not delivered, nothing to wait for.
REFUSED: Final = (False, 0.0)
#: How often, at most, the gate logs that senders are over their limits.
LOG_EVERY = 10.0


class InboundReports(Protocol):
    """What the inbound gate tells its owner."""

    def rate_limited(self, conn: Connection) -> None:
        """``conn``'s sender went over its limit under the "close" action: cut it off."""

    def too_big(self, conn: Connection) -> None:
        """``conn``'s sender sent a message over the size limit: cut it off with 1009."""


class Inbound:
    """The gate every inbound message passes; its counters feed ``manager.stats()``."""

    def __init__(
        self,
        context: Context,
        policy: RateLimitPolicy | None,
        reports: InboundReports,
        max_size: int | None = None,
    ) -> None:
        self._context = context
        self._reports = reports
        self.policy = policy
        #: The largest message a client may send (bytes on the wire); ``None``: the library's.
        self.max_size = max_size
        #: Identifier -> the budget all its sockets here share (``RateLimitScope.IDENTIFIER``).
        self._shared: dict[str, Bucket] = {}
        #: Identifier -> (until when, bucket): the budget of an identifier whose last socket
        #: went, kept until it would have refilled, so that reconnecting buys nothing. In
        #: the order they went (all are kept equally long), so the oldest come first.
        self._resting: dict[str, tuple[float, Bucket]] = {}
        self.received_messages = 0
        #: Messages delivered late because their sender was over its limit (``WAIT``).
        self.waits = 0
        self.drops: Counter[str] = Counter()
        self._logged_at = -LOG_EVERY

    def limit(self, conn: Connection) -> None:
        """Hand the size limit to ``conn``'s transport, which may enforce it while reading."""
        if self.max_size is not None:
            conn._sized = conn.transport.limit_inbound(self.max_size)

    def admit(self, conn: Connection, message: Message) -> tuple[bool, float]:
        """Whether ``message`` from ``conn`` goes on to the application, and how many seconds
        the session must wait before it delivers it or reads ``conn``'s next message."""
        self.received_messages += 1
        if self.max_size is not None and _over(message, self.max_size):
            self.drops["too big"] += 1
            logger.warning("%r sent a message over %d bytes: closed with 1009", conn, self.max_size)
            self._reports.too_big(conn)
            return REFUSED
        policy = self.policy
        if policy is None:
            return PASS
        now = self._context.now()
        size = 0 if policy.bytes_per_second is None else message_size(message)
        shared = policy.scope is RateLimitScope.IDENTIFIER
        bucket = self._shared.get(conn.identifier) if shared else conn._bucket
        if bucket is None:  # this sender's first message: a full bucket, unless it just left
            rest = self._resting.pop(conn.identifier, None)
            bucket = rest[1] if rest is not None and rest[0] > now else policy.full(now)
        if policy.action is RateLimitAction.WAIT:
            delay, bucket = policy.borrow(bucket, now, size)
            admitted = True
            if delay:
                self.waits += 1
        else:
            admitted, bucket = policy.take(bucket, now, size)
            delay = 0.0
        if shared:
            self._shared[conn.identifier] = bucket
        else:
            conn._bucket = bucket
        if admitted and not delay:
            return PASS
        if not admitted:
            self.drops["rate limit"] += 1
            if policy.action is RateLimitAction.CLOSE:
                self._reports.rate_limited(conn)
            else:
                pause = policy.refill_in(bucket, size)
                delay = 0.0 if pause == float("inf") else pause
        if now - self._logged_at >= LOG_EVERY:
            self._logged_at = now
            logger.warning(
                "%r is over its rate limit (%s); so far held back: %d, dropped: %d "
                "(stats().inbound_waits, inbound_drops['rate limit'])",
                conn,
                policy.action.value,
                self.waits,
                self.drops["rate limit"],
            )
        return admitted, delay

    def lost(self, admitted: bool) -> None:
        """A received message the application will not see: its connection was let go as it
        arrived, or while it was held back (``admitted``: already counted as received).
        Counted, so that received = delivered + dropped holds."""
        if not admitted:
            self.received_messages += 1
        self.drops["disconnected"] += 1

    def forget(self, conn: Connection, last: bool) -> None:
        """``conn`` is gone (``last``: its identifier has no other socket here). Its budget,
        or its identifier's, is kept until it would have refilled: a sender that closes and
        reconnects starts where it left off, not with a fresh burst. (Sockets open at the
        same time each have their own under ``CONNECTION``: see ``RateLimitScope``.)"""
        policy = self.policy
        if policy is None:
            return
        identifier = conn.identifier
        if policy.scope is RateLimitScope.IDENTIFIER:
            if not last:
                return
            bucket = self._shared.pop(identifier, None)
        else:
            bucket = conn._bucket
        now = self._context.now()
        resting = self._resting
        while resting:  # the oldest first: drop those that have refilled by now
            oldest = next(iter(resting))
            if resting[oldest][0] > now:
                break
            del resting[oldest]
        if bucket is None:  # it sent nothing: nothing to remember
            return
        resting.pop(identifier, None)  # to the end: it went last
        resting[identifier] = (now + policy.refill_time, bucket)


def _over(message: Message, max_size: int) -> bool:
    """Whether ``message`` takes more than ``max_size`` bytes on the wire. Text is encoded
    only when its length cannot settle it (UTF-8 takes 1 to 4 bytes a character)."""
    if isinstance(message, bytes | bytearray | memoryview):
        return len(message) > max_size
    if len(message) * 4 <= max_size:
        return False
    return len(message) > max_size or message_size(message) > max_size
