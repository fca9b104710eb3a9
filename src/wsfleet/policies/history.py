"""How much of a group's past is kept, where a message stands in it, and whether a client
that missed some of it can be given exactly what it missed.

A group that keeps history numbers its messages: each gets a ``Position``, an *offset* that
grows by one per message, within an *epoch* that names the history itself. When the history
is lost (its store flushed, the node that kept it in memory restarted, or nothing written for
longer than ``ttl``), numbering starts afresh under a new epoch, so an old position can never
be mistaken for a new one. This is Centrifugo's model (offsets and epochs per channel).

``plan_recovery`` decides, from a few numbers, which offsets a recovering socket must be sent,
or why it cannot be given them; the runtime reads the history and acts. Nothing here reads a
clock or touches a socket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from wsfleet.errors import InvalidArgument, RecoveryImpossible

from ._validate import check_above, to_count, to_seconds

__all__ = ["HistoryPolicy", "Position", "plan_recovery"]

#: The longest epoch a position may carry: a random token is 16 hex digits.
MAX_EPOCH = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryPolicy:
    """Keep a group's last ``size`` messages, each for at most ``ttl`` seconds.

    Both bounds hold together: a message leaves the history when ``size`` newer ones
    follow it or when it is ``ttl`` old, whichever comes first (a store that trims
    approximately, such as Redis' ``MAXLEN ~``, may keep a few more, never fewer). A
    group nobody writes to for ``ttl`` loses its history whole, and its next message
    starts a new epoch. ``ttl`` may be a ``timedelta``.
    """

    size: int = 100
    ttl: float = 300.0

    if TYPE_CHECKING:

        def __init__(self, *, size: int = 100, ttl: float | object = 300.0) -> None: ...

    def __post_init__(self) -> None:
        to_count("size", self.size, minimum=1)
        ttl = to_seconds("ttl", self.ttl)
        check_above("ttl", ttl, 0.0)
        object.__setattr__(self, "ttl", ttl)

    def expired(self, written_at: float, now: float) -> bool:
        """Whether a message written at ``written_at`` has outlived the history's ``ttl``."""
        return now - written_at >= self.ttl


@dataclass(frozen=True, slots=True, order=False)
class Position:
    """Where a message stands in its group's history: ``offset`` within ``epoch``.

    Offsets start at 1; ``Position(epoch, 0)`` stands before the first message. ``str()``
    gives ``"<epoch>:<offset>"``, which ``Position.parse`` reads back: a form a client can
    keep and send on its next connection.
    """

    epoch: str
    offset: int

    def __post_init__(self) -> None:
        epoch, offset = self.epoch, self.offset
        if not isinstance(epoch, str) or not 0 < len(epoch) <= MAX_EPOCH:
            raise InvalidArgument(f"epoch must be a str of 1 to {MAX_EPOCH} characters")
        if ":" in epoch or not epoch.isprintable() or any(c.isspace() for c in epoch):
            raise InvalidArgument(f"epoch must be printable, without ':' or spaces: {epoch!r}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidArgument(f"offset must be an int >= 0, got {offset!r}")

    @classmethod
    def parse(cls, text: object) -> Position:
        """A position from its ``str()`` form (what a client sends back); ``InvalidArgument``
        for anything else."""
        if not isinstance(text, str) or len(text) > MAX_EPOCH + 21:
            raise InvalidArgument(f"a position is '<epoch>:<offset>', got {text!r:.100}")
        epoch, sep, digits = text.rpartition(":")
        if not sep or not digits.isascii() or not digits.isdigit():
            raise InvalidArgument(f"a position is '<epoch>:<offset>', got {text!r}")
        return cls(epoch, int(digits))

    def __str__(self) -> str:
        return f"{self.epoch}:{self.offset}"


def plan_recovery(
    since: Position,
    *,
    epoch: str | None,
    oldest: int | None,
    newest: int,
    live_from: int | None,
) -> range:
    """The offsets to replay to a socket that last saw ``since``, or ``RecoveryImpossible``.

    ``epoch`` is the group's current one (``None``: it has no history at all); ``oldest``
    the first offset after ``since`` that the history still holds (``None``: none);
    ``newest`` the last offset delivered live here; ``live_from`` the first offset this
    socket was already sent live, if any. What it was sent live it must not get twice, and
    what it missed must come before anything newer, so a socket already sent messages past
    a gap cannot be recovered in order.
    """
    after = since.offset
    if epoch is None or since.epoch != epoch:
        raise RecoveryImpossible(
            f"the group's history was lost (epoch {since.epoch!r} is not the current one)"
        )
    if after > newest:
        raise RecoveryImpossible(f"offset {after} is ahead of the group's history ({newest})")
    if live_from is not None:
        if live_from > after + 1:
            raise RecoveryImpossible(
                f"the socket was already sent offset {live_from} live, after a gap from "
                f"{after}: recover a socket before it receives the group's messages"
            )
        return range(after + 1, after + 1)  # it was sent everything after ``since`` live
    if after < newest and (oldest is None or oldest > after + 1):
        raise RecoveryImpossible(f"offset {after} fell out of the group's history")
    return range(after + 1, newest + 1)
