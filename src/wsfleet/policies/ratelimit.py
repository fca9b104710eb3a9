"""How much a client may send: token buckets for messages and bytes.

One client that floods a server with tiny messages costs every other client their latency:
each message wakes its handler, is parsed, maybe relayed. A token bucket bounds what one
sender can take while leaving room for bursts: it holds up to ``burst`` tokens, refills at
``per_second``, and a message takes one token (and its size in byte tokens). A message that
finds the bucket empty is over the limit: it is dropped and counted, or its sender is cut
off with 1008 "rate limit", as the policy says.

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

from ._validate import check_above, to_member, to_number

__all__ = ["Bucket", "RateLimitAction", "RateLimitPolicy", "RateLimitScope"]


class RateLimitAction(enum.Enum):
    """What happens to a message over the limit."""

    #: Drop it, count it (``stats().inbound_drops["rate limit"]``) and go on reading.
    DROP = "drop"
    #: Close the sender's socket with 1008 "rate limit".
    CLOSE = "close"


class RateLimitScope(enum.Enum):
    """Whose budget a message is taken from."""

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
    message larger than ``burst_bytes`` can never pass: make it at least the largest
    message the server accepts. Bytes are those of the message on the wire (UTF-8 for text).
    """

    messages_per_second: float | None = 100.0
    burst_messages: float | None = None
    bytes_per_second: float | None = None
    burst_bytes: float | None = None
    action: RateLimitAction = RateLimitAction.DROP
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
            action: RateLimitAction | str = RateLimitAction.DROP,
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
        if self.burst_messages is None and self.messages_per_second is not None:
            object.__setattr__(self, "burst_messages", max(1.0, self.messages_per_second))
        if self.burst_bytes is None and self.bytes_per_second is not None:
            object.__setattr__(self, "burst_bytes", self.bytes_per_second)
        object.__setattr__(self, "action", to_member("action", self.action, RateLimitAction))
        object.__setattr__(self, "scope", to_member("scope", self.scope, RateLimitScope))

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
