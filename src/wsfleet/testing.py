"""Tools for testing applications built on wsfleet.

``MemoryTransport`` records what the manager writes and can be told to behave like a real
peer gone wrong: slow (each write takes time), stalled (writes wait until ``resume()``),
failing (writes raise), or closed. It answers pings by itself unless told not to, as a
healthy browser would.

``reconnect_storm`` replays what a fleet of clients following some ``RetryPolicy`` does when
their server goes away, on a virtual clock, so a policy can be checked for herds before it
meets a real outage.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import anyio

from .errors import TransportError
from .fsm.clock import ManualClock
from .fsm.machine import FleetMachine, Lifecycle
from .fsm.states import ConnectionState
from .policies.retry import RetryPolicy
from .transport import Message, Outbound, Ping, Transport

__all__ = ["MemoryTransport", "Storm", "reconnect_storm"]


class MemoryTransport(Transport):
    """A socket with no network behind it.

    ``sync=True`` (the default) lets the manager hand it batches without a task, as a real
    socket with room in its buffer does; ``sync=False`` forces the writer-task path.
    """

    def __init__(
        self,
        name: str = "memory",
        *,
        latency: float = 0.0,
        stalled: bool = False,
        fail_with: BaseException | None = None,
        auto_pong: bool = True,
        sync: bool = True,
    ) -> None:
        self.name = name
        self.latency = latency
        self.fail_with = fail_with
        self.auto_pong = auto_pong
        self.sync = sync
        #: Every message written, in order.
        self.received: list[Message] = []
        #: How many writes (batches) the manager made: fewer than messages means coalescing.
        self.writes = 0
        self.pings = 0
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._resumed: anyio.Event | None = None
        self._stalled = stalled

    def __repr__(self) -> str:
        return f"<MemoryTransport {self.name}>"

    @property
    def closed(self) -> bool:
        return self.close_code is not None

    @property
    def stalled(self) -> bool:
        return self._stalled

    def stall(self) -> None:
        """From now on writes wait (a peer that stopped reading) until ``resume()``."""
        self._stalled = True

    def resume(self) -> None:
        self._stalled = False
        if self._resumed is not None:
            self._resumed.set()
            self._resumed = None

    def send_nowait(self, batch: Sequence[Outbound]) -> bool:
        if not self.sync or self._stalled or self.latency or self.fail_with is not None:
            return False
        self._check_open()
        self._deliver(batch)
        return True

    async def send(self, batch: Sequence[Outbound]) -> None:
        self._check_open()
        while self._stalled:
            if self._resumed is None:
                self._resumed = anyio.Event()
            await self._resumed.wait()
            self._check_open()
        if self.fail_with is not None:
            raise self.fail_with
        if self.latency:
            await anyio.sleep(self.latency)
        self._check_open()
        self._deliver(batch)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
        self.resume()  # a stalled write must not outlive the socket
        await anyio.lowlevel.checkpoint()

    def _check_open(self) -> None:
        if self.close_code is not None:
            raise TransportError(f"{self!r} is closed ({self.close_code})")

    def _deliver(self, batch: Sequence[Outbound]) -> None:
        self.writes += 1
        for item in batch:
            if isinstance(item, Ping):
                self.pings += 1
                if self.auto_pong and self.connection is not None:
                    self.connection.touch(pong=True)
            else:
                self.received.append(item)


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

    def retry_after(model: Lifecycle, delay: float) -> None:
        nonlocal serial
        serial += 1
        heapq.heappush(due, (clock.now() + delay, serial, model))

    machine = FleetMachine(clock=clock, on_retry=retry_after)
    for policy in policies:
        client = Lifecycle(policy)
        machine.start(client, C)
        machine.request(client, E, "server lost")
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
            after = machine.request(client, E, "connection refused")
            gave_up += after[-1].new is ConnectionState.DISCONNECTED
        else:
            machine.request(client, C, "reconnected")
            reconnected += 1
    return Storm(attempts, reconnected, gave_up, bucket)
