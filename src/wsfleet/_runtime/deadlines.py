"""One heap of deadlines for the whole fleet: heartbeats, idle checks and retries.

A task per connection per timer would cost a task's memory for every idle socket and a
wake-up per tick. Instead each connection has at most one live entry of each kind in this
heap, and entries are checked lazily: activity does not move an entry, the entry re-arms
itself from the connection's latest timestamps when it fires. An entry carries a token so
that its owner can tell a stale entry (a retry that was superseded) from the current one.
Pushing and popping are O(log n).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from typing import Literal, TypeAlias

from .connection import Connection

__all__ = ["Deadlines", "Kind"]

Kind: TypeAlias = Literal["heartbeat", "idle", "retry"]


class Deadlines:
    """The heap; entries of unregistered connections are dropped in bulk once they are many.

    Removing one entry from a heap is O(n), so an unregistered connection's entries stay
    until they fall due or until stale entries make up half the heap, when the heap is
    rebuilt without them: O(1) amortised per unregistration, memory bounded by the live
    fleet, and a closed connection is not kept alive for a whole ``idle_after``.
    """

    __slots__ = ("_heap", "_seq", "_stale")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Kind, Connection, int]] = []
        self._seq = itertools.count()  # ties fire in the order they were pushed
        self._stale = 0

    def forget(self, entries: int) -> None:
        """``entries`` of the heap now belong to an unregistered connection."""
        self._stale += entries
        if self._stale and self._stale * 2 >= len(self._heap):
            self._heap = [entry for entry in self._heap if entry[3].registered]
            heapq.heapify(self._heap)
            self._stale = 0

    def push(self, when: float, kind: Kind, conn: Connection, token: int = 0) -> bool:
        """Add a deadline; ``True`` when it became the earliest (the timer must wake)."""
        seq = next(self._seq)
        heapq.heappush(self._heap, (when, seq, kind, conn, token))
        return self._heap[0][1] == seq

    def pop_due(self, now: float) -> Iterator[tuple[Kind, Connection, int]]:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, kind, conn, token = heapq.heappop(heap)
            if not conn.registered and self._stale:
                self._stale -= 1
            yield kind, conn, token

    def next_at(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)
