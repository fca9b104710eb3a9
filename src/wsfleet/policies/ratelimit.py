"""How much a client may send: token buckets for messages and bytes.

One client that floods a server with tiny messages costs every other client their latency:
each message is read, parsed and handed to its handler. A token bucket bounds what one
sender can take while leaving room for bursts: it holds up to ``burst`` tokens, refills at
``per_second``, and a message takes one token (and its size in byte tokens).

What protects the others is that the flooder's socket is *read* less often, not only that
its messages are thrown away: a server that reads a flood at full speed to drop it spends
its CPU on the flood all the same. So over the limit, the session stops reading from that
sender until its bucket has refilled, whatever the action: its kernel buffers fill and TCP
slows the sender down at no cost to the server. The action says what becomes of the message
that went over: it waits and is delivered (``WAIT``, the default: nothing is lost, the
sender is only slowed), it is dropped and counted (``DROP``), or its sender is cut off with
1008 "rate limit" (``CLOSE``).

The policy is pure: it computes a bucket's new level from its old one, the time elapsed and
the message's size; the runtime keeps the levels (a few floats per connection, or per
identifier when all of one user's sockets share a budget) and reads the clock. No task and
no timer per message or per connection: a bucket is refilled when the next message comes.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from ..errors import InvalidPolicy
from ._validate import check_above, check_at_least, to_member, to_number

__all__ = ["Bucket", "RateLimitAction", "RateLimitPolicy", "RateLimitScope"]


class RateLimitAction(enum.Enum):
    """What happens to a message over the limit; its sender is not read until it is back
    within the limit in every case.

    - ``WAIT``: delivered once the sender is within its limit (``stats().inbound_waits``).
    - ``DROP``: dropped and counted (``stats().inbound_drops["rate limit"]``).
    - ``CLOSE``: dropped and counted, and the sender closed with 1008 "rate limit".
    """

    #: Deliver it once the sender is back within its limit; until then its socket is not
    #: read (``stats().inbound_waits`` counts these messages).
    WAIT = "wait"
    #: Drop it, count it (``stats().inbound_drops["rate limit"]``) and read the sender's
    #: next message once its bucket holds a token again.
    DROP = "drop"
    #: Close the sender's socket with 1008 "rate limit".
    CLOSE = "close"


class RateLimitScope(enum.Enum):
    """Whose budget a message is taken from.

    - ``CONNECTION``: each socket its own.
    - ``IDENTIFIER``: one budget for all of an identifier's sockets on this node, kept
      after its last socket goes until it would have refilled (reconnecting buys nothing).
    """

    #: Each socket its own: a user with several tabs has a budget per tab.
    CONNECTION = "connection"
    #: One budget for all of an identifier's sockets on this node: opening tabs buys nothing.
    IDENTIFIER = "identifier"


class Bucket(NamedTuple):
    """A bucket's state: its message and byte tokens, and when they were counted."""

    messages: float
    bytes: float
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitPolicy:
    """Inbound limits for one sender: messages and bytes per second, with bursts.

    ``messages_per_second`` and ``bytes_per_second`` are the sustained rates (``None``
    leaves that dimension unlimited); ``burst_messages`` and ``burst_bytes`` how much a quiet
    sender may spend at once (by default one second's worth, and at least one message). A
    message larger than ``burst_bytes`` is dropped or closes its sender under ``DROP`` and
    ``CLOSE`` (it could never pass), and waits ``size / bytes_per_second`` under ``WAIT``:
    make the burst at least the largest message the server accepts. Bytes are those of the
    message on the wire (UTF-8 for text).

    A sender held back is not read at all, pongs included: keep the longest wait (one
    message's worth, ``1 / messages_per_second``, or the largest message over
    ``bytes_per_second``) well under the heartbeat's ``ping_timeout``.
    """

    messages_per_second: float | None = 100.0
    burst_messages: float | None = None
    bytes_per_second: float | None = None
    burst_bytes: float | None = None
    action: RateLimitAction = RateLimitAction.WAIT
    scope: RateLimitScope = RateLimitScope.CONNECTION

    if TYPE_CHECKING:
        # What the constructor accepts before normalisation; the fields hold the normal forms.
        def __init__(
            self,
            *,
            messages_per_second: float | None = 100.0,
            burst_messages: float | None = None,
            bytes_per_second: float | None = None,
            burst_bytes: float | None = None,
            action: RateLimitAction | str = RateLimitAction.WAIT,
            scope: RateLimitScope | str = RateLimitScope.CONNECTION,
        ) -> None: ...

    def __post_init__(self) -> None:
        for rate, burst in (
            ("messages_per_second", "burst_messages"),
            ("bytes_per_second", "burst_bytes"),
        ):
            per_second = getattr(self, rate)
            size = getattr(self, burst)
            if per_second is not None:
                per_second = to_number(rate, per_second)
                check_above(rate, per_second, 0.0)
                object.__setattr__(self, rate, per_second)
            if size is not None:
                size = to_number(burst, size)
                check_above(burst, size, 0.0)
                object.__setattr__(self, burst, size)
        if self.burst_messages is not None:  # less than one message would let none through
            check_at_least("burst_messages", self.burst_messages, 1.0)
        if self.messages_per_second is None and self.bytes_per_second is None:
            raise InvalidPolicy(
                "messages_per_second",
                "a rate limit limits messages_per_second, bytes_per_second or both: give one "
                "(or no rate_limit at all)",
            )
        if self.burst_messages is None and self.messages_per_second is not None:
            object.__setattr__(self, "burst_messages", max(1.0, self.messages_per_second))
        if self.burst_bytes is None and self.bytes_per_second is not None:
            object.__setattr__(self, "burst_bytes", self.bytes_per_second)
        object.__setattr__(self, "action", to_member("action", self.action, RateLimitAction))
        object.__setattr__(self, "scope", to_member("scope", self.scope, RateLimitScope))

    @property
    def refill_time(self) -> float:
        """Seconds an empty bucket takes to fill up again: the slower of its two buckets."""
        times = [0.0]
        if self.messages_per_second is not None and self.burst_messages is not None:
            times.append(self.burst_messages / self.messages_per_second)
        if self.bytes_per_second is not None and self.burst_bytes is not None:
            times.append(self.burst_bytes / self.bytes_per_second)
        return max(times)

    def full(self, now: float) -> Bucket:
        """A new sender's bucket: full, so it may start with a burst."""
        return Bucket(
            math.inf if self.burst_messages is None else self.burst_messages,
            math.inf if self.burst_bytes is None else self.burst_bytes,
            now,
        )

    def take(self, bucket: Bucket, now: float, size: int) -> tuple[bool, Bucket]:
        """Whether a message of ``size`` bytes is within the limit, and the bucket after it.

        The bucket is refilled for the time since it was last counted (never past its
        burst); a message within the limit takes one message token and ``size`` byte
        tokens; one over it takes nothing, so a sender that keeps flooding keeps being
        refused while one that slows down is let through again.
        """
        elapsed = max(0.0, now - bucket.at)
        messages, nbytes = bucket.messages, bucket.bytes
        if self.messages_per_second is not None and self.burst_messages is not None:
            messages = min(self.burst_messages, messages + elapsed * self.messages_per_second)
        if self.bytes_per_second is not None and self.burst_bytes is not None:
            nbytes = min(self.burst_bytes, nbytes + elapsed * self.bytes_per_second)
        if messages < 1.0 or nbytes < size:
            return False, Bucket(messages, nbytes, now)
        return True, Bucket(messages - 1.0, nbytes - size, now)

    def borrow(self, bucket: Bucket, now: float, size: int) -> tuple[float, Bucket]:
        """Take a message whatever the bucket holds; the seconds until the debt is repaid.

        Under ``WAIT`` a message over the limit is delivered late rather than lost: it takes
        its tokens on credit (the bucket goes below zero) and the sender is not read again
        until the bucket is back at zero. The returned delay is 0 within the limit.
        """
        admitted, after = self.take(bucket, now, size)
        if admitted:
            return 0.0, after
        messages, nbytes = after.messages - 1.0, after.bytes - size
        return self._until(messages, nbytes), Bucket(messages, nbytes, now)

    def refill_in(self, bucket: Bucket, size: int = 0) -> float:
        """Seconds until ``bucket`` (as counted at ``bucket.at``) could take one message of
        ``size`` bytes: how long a sender is not read after a message was dropped.
        ``math.inf`` when it never could (the message is larger than ``burst_bytes``)."""
        if self.burst_bytes is not None and size > self.burst_bytes:
            return math.inf
        return self._until(bucket.messages - 1.0, bucket.bytes - size)

    def _until(self, messages: float, nbytes: float) -> float:
        """Seconds until both levels are back at zero (they are below it by a debt)."""
        delay = 0.0
        if messages < 0.0 and self.messages_per_second is not None:
            delay = -messages / self.messages_per_second
        if nbytes < 0.0 and self.bytes_per_second is not None:
            delay = max(delay, -nbytes / self.bytes_per_second)
        return delay
