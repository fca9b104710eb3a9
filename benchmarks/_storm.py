"""A reconnect storm on a virtual clock: the computation behind run_all.py's histogram.

The same simulation as ``tests/reliability/test_07_reconnect_storm.py`` (which keeps its own
copy, as a check must): every client loses the server at t = 0 and the server answers again
at ``OUTAGE``. No sockets and no event loop: the shared ``FleetMachine`` with one
``Lifecycle`` per client, a ``ManualClock`` and a heap of due retries, as the manager's timers
drive them. Each client has its own seeded ``random.Random``, so a run is reproducible.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from wsfleet import ConnectionState, RetryPolicy
from wsfleet.fsm.clock import ManualClock
from wsfleet.fsm.machine import FleetMachine, Lifecycle

OUTAGE = 10.0
BUCKET = 0.1


@dataclass(frozen=True)
class Storm:
    attempts: list[float]  # virtual time of every reconnection attempt
    reconnected: int
    gave_up: int

    def buckets(self) -> Counter[int]:
        """Attempts per ``BUCKET`` (index = floor(t / BUCKET))."""
        return Counter(math.floor(t / BUCKET) for t in self.attempts)

    @property
    def peak(self) -> int:
        return max(self.buckets().values(), default=0)


def seeded(**settings: object) -> Callable[[int], RetryPolicy]:
    """A policy per client, each with its own seeded random stream."""

    def make(i: int) -> RetryPolicy:
        return RetryPolicy(rng=random.Random(7_000 + i), **settings)  # type: ignore[arg-type]

    return make


def uniform_rate(policy: RetryPolicy, clients: int) -> float:
    """Attempts per bucket if every client spread its first one over ``base_delay``."""
    return clients / (policy.base_delay / BUCKET)


def storm(make_policy: Callable[[int], RetryPolicy], clients: int) -> Storm:
    clock = ManualClock()
    due: list[tuple[float, int, Lifecycle]] = []
    serial = 0

    def retry_after(model: Lifecycle, delay: float) -> None:
        nonlocal serial
        serial += 1
        heapq.heappush(due, (clock.now() + delay, serial, model))

    machine = FleetMachine(clock=clock, on_retry=retry_after)
    for i in range(clients):
        client = Lifecycle(make_policy(i))
        machine.start(client, ConnectionState.CONNECTED)
        machine.request(client, ConnectionState.ERROR, "server lost")
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
        if when < OUTAGE:
            after = machine.request(client, ConnectionState.ERROR, "connection refused")
            gave_up += after[-1].new is ConnectionState.DISCONNECTED
        else:
            machine.request(client, ConnectionState.CONNECTED, "reconnected")
            reconnected += 1
    return Storm(attempts, reconnected, gave_up)
