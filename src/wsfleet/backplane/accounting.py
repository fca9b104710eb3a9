"""Every cross-node send is delivered or counted, once: numbering on one side, gaps on the other.

The sender cannot know what became of a publish: Redis may take a message and die before
a subscriber reads it, a publish that timed out may have been carried out after all, and
``PUBLISH``'s count of receivers says only which subscriptions Redis meant to write to. So
the sender does not count outcomes. It numbers the sends it hands to the store, 1, 2, 3 ...
in each run (``SendNumbers``), and every envelope it publishes carries its latest number.
Each receiver follows each origin's numbers (``Receipts``) and counts what a jump skipped:
the sends it never got, counted where they were lost, once, however the loss came about.

What the sender still counts is what it knows: a send accepted and then never handed to the
store (still queued when the manager closed, or refused when its envelope was built).

A lost *last* send leaves no jump behind it until the origin publishes again, so the origin
announces its count: in its ``hello`` when its link comes back, in a ``tally`` at its next
heartbeat after it sent something, in a ``tally`` when another node says ``hello`` (that
node may have been away), and before it leaves.

Both sides count what they drop in one place (``Drops``), by reason, into the backplane's
statistics. No I/O here.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from .wire import Header

__all__ = ["NOTICE_PERIOD", "Drops", "Notices", "Receipts", "SendNumbers"]

logger = logging.getLogger("wsfleet.backplane")

#: The shortest time between two log lines of ``Notices`` for one reason, in seconds.
NOTICE_PERIOD = 10.0


class Drops:
    """Counts cross-node sends that will never be delivered, by reason, into ``stats``
    (``"dropped: <reason>"`` and their sum, ``"dropped"``), and logs them: at the 1st, 10th,
    100th, then every 1000th, so that a flood of drops is not a flood of log lines."""

    __slots__ = ("owner", "stats")

    def __init__(self, stats: Counter[str], owner: object) -> None:
        self.stats = stats
        #: Named in the log lines (the link, whose repr says which node and its state).
        self.owner = owner

    def __call__(self, reason: str, count: int = 1) -> None:
        stats = self.stats
        before = stats["dropped"]
        stats[f"dropped: {reason}"] += count
        stats["dropped"] += count
        after = stats["dropped"]
        if any(before < t <= after for t in (1, 10, 100)) or before // 1000 < after // 1000:
            logger.warning(
                "%r: cross-node message(s) dropped (%s: %d); %d so far",
                self.owner,
                reason,
                count,
                after,
            )


class Notices:
    """Logs what another node's messages were refused for: once per reason per period, with
    how many since the last line, so that a flood of forged messages is a few log lines."""

    __slots__ = ("_last", "_since", "owner", "period")

    def __init__(self, owner: object, period: float = NOTICE_PERIOD) -> None:
        self.owner = owner
        self.period = period
        self._last: dict[str, float] = {}
        self._since: Counter[str] = Counter()

    def __call__(self, reason: str, now: float, detail: object = "") -> None:
        """One message refused for ``reason`` at ``now`` (a clock in seconds)."""
        self._since[reason] += 1
        last = self._last.get(reason)
        if last is None or now - last >= self.period:
            self._last[reason] = now
            logger.warning(
                "%r: refused another node's message(s) (%s): %d since the last notice; %s",
                self.owner,
                reason,
                self._since.pop(reason),
                detail,
            )


class SendNumbers:
    """One run of this node: how many sends it handed to the store, and what the others
    were told of them."""

    __slots__ = ("announced", "confirmed", "run", "sent")

    def __init__(self, run: str) -> None:
        self.run = run
        #: Sends handed to the store in this run: the number of the latest.
        self.sent = 0
        #: The latest send whose publish the store answered.
        self.confirmed = 0
        #: Every send up to this number was announced by a later envelope the store took:
        #: a receiver that missed one of them will see the gap.
        self.announced = 0

    def seq(self, send: bool) -> int:
        """The ``seq`` of the next envelope: a send's own number, or the count so far."""
        return self.sent + 1 if send else self.sent

    def published(self, header: Header) -> None:
        """The store answered the publish of an envelope with this header."""
        if header.kind == "send":
            self.confirmed = max(self.confirmed, header.seq)
            self.announced = max(self.announced, header.seq - 1)
        else:
            self.announced = max(self.announced, header.seq)

    def unannounced(self) -> int:
        """Sends that no later envelope has told the others about (yet)."""
        return self.sent - self.announced

    def unknown(self) -> int:
        """Sends neither announced nor answered by the store: their publish was cut short
        and no receiver may ever hear of them (see ``Link.close``)."""
        return self.sent - max(self.announced, self.confirmed)


#: The furthest one envelope may move an origin's count at once. Anyone who can publish on
#: an unsigned bus can name an origin and its run; without a bound, one forged number far
#: ahead would make every genuine send after it "already counted", silencing that origin
#: for the rest of its run. A real jump this large (that many sends missed) is believed when
#: a second envelope follows it (see ``Receipts.arrived``).
MAX_JUMP = 100_000

#: What ``Receipts.arrived`` says of an envelope that moved its origin's count too far.
IMPLAUSIBLE = -1


@dataclass(slots=True)
class _Origin:
    run: str
    #: Every send of this run up to this number was received or counted as missed.
    seq: int
    #: When this node last heard from the origin (for ``Receipts.forget``).
    heard: float
    #: The number of the last envelope refused as too far ahead (``MAX_JUMP``), if any.
    ahead: int | None = None


class Receipts:
    """What this node heard from each other node's current run: of ``limit`` origins at
    most, the one heard from least recently forgotten first (anyone who can publish can
    name an origin)."""

    __slots__ = ("_origins", "limit")

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self._origins: dict[str, _Origin] = {}

    def arrived(self, header: Header, now: float) -> tuple[bool, int]:
        """An envelope with ``header`` arrived: whether it is new (a send numbered at or
        below what was already received or counted is not), and how many sends of its
        origin were skipped before it (``IMPLAUSIBLE`` for an envelope refused because it
        moved the count more than ``MAX_JUMP`` at once, and no envelope just before it led
        there).

        The first word from a run sets where counting starts: sends made before this node
        heard of that run are not its to count (it may not have existed yet).
        """
        origins = self._origins
        origin = origins.get(header.node)
        send = header.kind == "send"
        if origin is None or origin.run != header.run:
            if origin is None and len(origins) >= self.limit:
                del origins[next(iter(origins))]  # the least recently heard
            start = header.seq - 1 if send else header.seq
            origin = origins[header.node] = _Origin(header.run, start, now)
        elif origin.heard != now:  # once per heartbeat: to the end of the order
            del origins[header.node]
            origins[header.node] = origin
        origin.heard = now
        if send and header.seq <= origin.seq:
            return False, 0
        if header.seq - origin.seq > MAX_JUMP:
            ahead, origin.ahead = origin.ahead, header.seq
            if ahead is None or not ahead < header.seq <= ahead + MAX_JUMP:
                return False, IMPLAUSIBLE  # refused; believed if the next one follows it
        origin.ahead = None
        skipped = max(0, header.seq - origin.seq - (1 if send else 0))
        origin.seq = max(origin.seq, header.seq)
        return True, skipped

    def forget(self, before: float) -> None:
        """Drop the origins not heard from since ``before`` (nodes long gone)."""
        for node in [n for n, o in self._origins.items() if o.heard < before]:
            del self._origins[node]

    def __len__(self) -> int:
        return len(self._origins)
