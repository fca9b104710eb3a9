"""The embedded history: a bounded ring of messages per group, in this node's memory.

Each group's ring is born with a random epoch; a ring that outlives its ``ttl`` with nothing
written is forgotten, epoch and all, so the next message starts a new one, as a node that
restarted would. Appending and reading never wait: the runtime appends and delivers a
message in one step, with no other task in between.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from secrets import token_hex

from ..policies.history import HistoryPolicy
from ..transport import Message

__all__ = ["Ring", "Rings"]


class Ring:
    """One group's kept messages: ``(offset, message, written_at)``, oldest first."""

    __slots__ = ("entries", "epoch", "newest", "policy", "written_at")

    def __init__(self, policy: HistoryPolicy, now: float) -> None:
        self.epoch = token_hex(8)
        self.newest = 0
        self.policy = policy
        self.written_at = now
        self.entries: deque[tuple[int, Message, float]] = deque(maxlen=policy.size)

    def expire(self, now: float) -> None:
        """Drop the messages older than the policy's ``ttl`` (they are at the front)."""
        entries, policy = self.entries, self.policy
        while entries and policy.expired(entries[0][2], now):
            entries.popleft()

    def after(self, offset: int) -> list[tuple[int, Message]]:
        """The kept messages after ``offset``, in order."""
        return [(at, message) for at, message, _ in self.entries if at > offset]


class Rings:
    """Every group's ring on this node, least recently written first (to forget idle ones)."""

    def __init__(self) -> None:
        self.rings: OrderedDict[str, Ring] = OrderedDict()

    def append(self, group: str, message: Message, policy: HistoryPolicy, now: float) -> Ring:
        """Keep ``message`` as the group's next offset; the ring it went to tells which."""
        self.forget_idle(now)
        ring = self.rings.get(group)
        if ring is None or ring.policy != policy:
            if ring is None:
                ring = self.rings[group] = Ring(policy, now)
            else:  # a new bound for the group: keep what fits, under the same epoch
                kept = list(ring.entries)[-policy.size :]
                ring.policy = policy
                ring.entries = deque(kept, maxlen=policy.size)
        ring.expire(now)
        ring.newest += 1
        ring.written_at = now
        ring.entries.append((ring.newest, message, now))
        self.rings.move_to_end(group)
        return ring

    def read(self, group: str, now: float) -> Ring | None:
        """The group's ring with its expired messages dropped; ``None`` if it has none."""
        self.forget_idle(now)
        ring = self.rings.get(group)
        if ring is not None:
            ring.expire(now)
        return ring

    def forget_idle(self, now: float) -> None:
        """Forget the rings nothing was written to for their ``ttl`` (oldest first: O(1)
        per call when there is nothing to forget)."""
        rings = self.rings
        while rings:
            group, ring = next(iter(rings.items()))
            if not ring.policy.expired(ring.written_at, now):
                return
            del rings[group]
