"""``reconnect_storm``: what a fleet of clients following a ``RetryPolicy`` does when their
server goes away, replayed on a virtual clock, so a policy can be checked for herds before
it meets a real outage.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from ..fsm.clock import ManualClock
from ..fsm.machine import FleetMachine, Lifecycle, StateChange
from ..fsm.states import ConnectionState
from ..policies.retry import RetryPolicy

__all__ = ["Storm", "reconnect_storm"]


@dataclass(frozen=True, slots=True)
class Storm:
    """What ``reconnect_storm`` saw: every attempt's time, and how the clients ended."""

    #: Virtual time (seconds after the server went away) of every reconnection attempt.
    attempts: list[float]
    reconnected: int
    gave_up: int
    #: The width of the buckets ``buckets()`` and ``peak`` count attempts in, in seconds.
    bucket: float = 0.1

    def buckets(self) -> Counter[int]:
        """Attempts per bucket; bucket ``k`` covers ``[k * bucket, (k + 1) * bucket)``."""
        width = self.bucket
        return Counter(math.floor(t / width) for t in self.attempts)

    @property
    def peak(self) -> int:
        """The most attempts in any one bucket: what the server must absorb at worst."""
        return max(self.buckets().values(), default=0)

    def uniform_rate(self, base_delay: float) -> float:
        """Attempts per bucket if every client spread its first one over ``base_delay``."""
        clients = self.reconnected + self.gave_up
        return clients / (base_delay / self.bucket) if base_delay > 0 else math.inf


def reconnect_storm(
    policies: Iterable[RetryPolicy], *, outage: float, bucket: float = 0.1
) -> Storm:
    """Every client (one per policy) loses its server at t = 0; the server is back at ``outage``.

    No sockets and no event loop: the clients go through the shared state machine the
    manager uses, on a ``ManualClock``, with a heap of due retries as the manager's timers
    keep them. On ERROR a client asks for a retry after ``policy.delay(...)``; when it is
    due the client moves to RECONNECTING (one attempt); an attempt before ``outage`` fails
    (ERROR again), one after it succeeds (CONNECTED). Give each client a policy with its
    own seeded ``random.Random`` for a reproducible storm in which no two clients share a
    stream of draws.
    """
    C = ConnectionState.CONNECTED
    E = ConnectionState.ERROR
    clock = ManualClock()
    due: list[tuple[float, int, Lifecycle]] = []
    serial = 0

    def schedule(changes: tuple[StateChange, ...]) -> tuple[StateChange, ...]:
        """Do what the manager's timers do with a change that asks for a retry."""
        nonlocal serial
        for change in changes:
            if change.retry_in is not None:
                serial += 1
                heapq.heappush(due, (clock.now() + change.retry_in, serial, change.connection))
        return changes

    machine = FleetMachine(clock=clock)
    for policy in policies:
        client = Lifecycle(policy)
        machine.start(client, C)
        schedule(machine.request(client, E, "server lost"))
    attempts: list[float] = []
    reconnected = gave_up = 0
    while due:
        when, _, client = heapq.heappop(due)
        clock.advance(when - clock.now())
        changes = machine.retry_due(client)
        if not changes or changes[-1].new is not ConnectionState.RECONNECTING:
            gave_up += 1
            continue
        attempts.append(when)
        if when < outage:
            after = schedule(machine.request(client, E, "connection refused"))
            gave_up += after[-1].new is ConnectionState.DISCONNECTED
        else:
            machine.request(client, C, "reconnected")
            reconnected += 1
    return Storm(attempts, reconnected, gave_up, bucket)
