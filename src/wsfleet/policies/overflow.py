"""What to do when a connection's outbound queue is full.

A client that reads slower than the server writes makes its queue grow without bound, and one
such client can exhaust the memory that serves all the others. The queue is therefore bounded
in messages and in bytes; past either bound the policy decides between losing messages and
losing the client. The default disconnects a client 1 MiB behind, as Centrifugo does: a client
that far behind is better served by reconnecting and resynchronising than by a gap.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._validate import check_at_most, to_count, to_member

__all__ = ["OverflowAction", "OverflowDecision", "OverflowPolicy"]


class OverflowAction(enum.Enum):
    """The configured response to a full queue."""

    #: Lose the oldest queued messages: for state updates where only the latest matters.
    DROP_OLDEST = "drop-oldest"
    #: Lose the message being queued: for streams where order and history matter more.
    DROP_NEWEST = "drop-newest"
    #: Lose the client: for streams where a gap is worse than a reconnection.
    DISCONNECT = "disconnect"


class OverflowDecision(enum.Enum):
    """What the queue does with one incoming message."""

    ACCEPT = "accept"
    DROP_OLDEST = "drop-oldest"
    DROP_NEWEST = "drop-newest"
    DISCONNECT = "disconnect"


@dataclass(frozen=True, slots=True, kw_only=True)
class OverflowPolicy:
    """Bounds of one connection's outbound queue, and what happens beyond them.

    ``max_message_size`` refuses a single message before it is queued; it cannot exceed
    ``max_bytes``, or such a message could never be accepted even into an empty queue.
    ``action`` may be given by value (``"drop-oldest"``).
    """

    max_messages: int = 1024
    max_bytes: int = 1024 * 1024
    action: OverflowAction = OverflowAction.DISCONNECT
    max_message_size: int = 1024 * 1024

    if TYPE_CHECKING:
        # What the constructor accepts before normalisation; the fields hold the normal forms.
        def __init__(
            self,
            *,
            max_messages: int = 1024,
            max_bytes: int = 1024 * 1024,
            action: OverflowAction | str = OverflowAction.DISCONNECT,
            max_message_size: int = 1024 * 1024,
        ) -> None: ...

    def __post_init__(self) -> None:
        to_count("max_messages", self.max_messages, minimum=1)
        to_count("max_bytes", self.max_bytes, minimum=1)
        object.__setattr__(self, "action", to_member("action", self.action, OverflowAction))
        to_count("max_message_size", self.max_message_size, minimum=1)
        check_at_most("max_message_size", self.max_message_size, self.max_bytes, bound="max_bytes")

    def fits(self, size: int) -> bool:
        """Whether one message of ``size`` bytes may be sent at all."""
        return size <= self.max_message_size

    def decide(
        self, queued_messages: int, queued_bytes: int, incoming_size: int
    ) -> OverflowDecision:
        """What to do with a message of ``incoming_size`` bytes, given the queue's contents.

        ``DROP_OLDEST`` asks the caller to drop the oldest queued message and ask again, until
        the answer is ``ACCEPT``: one drop may not free enough bytes. A message larger than
        ``max_bytes`` would empty the queue and still not fit, so under ``DROP_OLDEST`` it is
        dropped itself (``DROP_NEWEST``) instead.
        """
        if queued_messages + 1 <= self.max_messages and (
            queued_bytes + incoming_size <= self.max_bytes
        ):
            return OverflowDecision.ACCEPT
        if self.action is OverflowAction.DROP_OLDEST and incoming_size > self.max_bytes:
            return OverflowDecision.DROP_NEWEST
        return OverflowDecision(self.action.value)
