"""What several test modules share: state aliases, bounds, pollers, ports, backplane counts.

Imported by name (``from support import C, wait_for``): the top conftest puts ``tests/`` on
``sys.path``. The mock-clock backend is a fixture: a module takes it with
``from support import mock_clock_backend  # noqa: F401``.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from anyio.lowlevel import checkpoint

from wsfleet import ConnectionManager, ConnectionState, RetryPolicy, StateChange
from wsfleet.testing import MemoryTransport

#: The repository's root (``src/``, ``docs/``, ``examples/`` are below it).
ROOT = Path(__file__).resolve().parent.parent

C = ConnectionState.CONNECTED
I = ConnectionState.IDLE  # noqa: E741
E = ConnectionState.ERROR
R = ConnectionState.RECONNECTING
D = ConnectionState.DISCONNECTED

#: How late a timer or a dial may be on a loaded machine in real time: generous, but bounded.
LATE = 0.5
#: Wall-clock datetimes have microsecond resolution; two of them may round apart by this.
MICROSECOND = 2e-6
#: A retry that never comes during a test: ERROR stays ERROR, RECONNECTING stays put.
NEVER = RetryPolicy(max_attempts=3, base_delay=3600, max_delay=3600, jitter=0)


def pairs(changes: list[StateChange]) -> list[tuple[ConnectionState | None, ConnectionState]]:
    """Each change as (old, new)."""
    return [(c.old, c.new) for c in changes]


# -- waiting -----------------------------------------------------------------------------------


async def eventually(predicate: Callable[[], bool], steps: int = 5000) -> None:
    """Let the manager's tasks run until ``predicate`` holds (bounded, never sleeps)."""
    for _ in range(steps):
        if predicate():
            return
        await checkpoint()
    raise AssertionError("the condition never became true")


async def wait_for(predicate: Callable[[], object], within: float = 10.0) -> None:
    """Sleep 2 ms at a time (virtual ones on a mock clock) until ``predicate`` holds;
    fail with ``TimeoutError`` after ``within`` seconds."""
    with anyio.fail_after(within):
        while not predicate():
            await anyio.sleep(0.002)


async def wait_until(
    predicate: Callable[[], object], what: str, timeout: float = 10.0, step: float = 0.005
) -> float:
    """Poll ``predicate`` every ``step`` seconds; fail with ``what`` after ``timeout``.

    Returns how long it took, in seconds.
    """
    started = anyio.current_time()
    with anyio.move_on_after(timeout):
        while not predicate():
            await anyio.sleep(step)
    assert predicate(), f"after {timeout} s, still not: {what}"
    return anyio.current_time() - started


# -- sockets -----------------------------------------------------------------------------------


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def stop(process: subprocess.Popen[str]) -> None:
    """Terminate a program a test started; kill it if it is not gone within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- the backplane -----------------------------------------------------------------------------


def connected(*managers: ConnectionManager) -> bool:
    """Every manager's backplane link is up."""
    return all(m.stats().backplane_state == "CONNECTED" for m in managers)


def backplane_drops(manager: ConnectionManager) -> dict[str, int]:
    """The manager's drops that the backplane counted, by reason."""
    return {k: v for k, v in manager.stats().drops.items() if k.startswith("backplane:")}


def backplane_stat(manager: ConnectionManager, key: str) -> int:
    """One of the backplane's own counts (0 when it has none yet)."""
    stats = manager.stats().backplane
    assert stats is not None
    return stats.get(key, 0)


#: What a sender counts when it refuses a fan-out for the other nodes (``published`` false).
REFUSED = ("backplane: link down", "backplane: publish queue full")


class Ledger:
    """What a sender accepted and refused, and the sum that must balance."""

    def __init__(self, sender: ConnectionManager, receiver: ConnectionManager) -> None:
        self.sender = sender
        self.receiver = receiver
        self.socket = MemoryTransport("bob")
        receiver.register(self.socket, "bob")
        self.accepted = 0
        self.refused = 0

    async def send(self, message: str | bytes | None = None) -> None:
        number = self.accepted + self.refused + 1
        delivery = await self.sender.broadcast(str(number) if message is None else message)
        if delivery.published:
            self.accepted += 1
        else:
            self.refused += 1

    def counted(self) -> tuple[int, int]:
        """(refusals the sender counted, losses of accepted messages counted anywhere)."""
        sender = backplane_drops(self.sender)
        refused = sum(sender.get(reason, 0) for reason in REFUSED)
        lost = sum(sender.values()) - refused + sum(backplane_drops(self.receiver).values())
        return refused, lost

    def balanced(self) -> bool:
        refused, lost = self.counted()
        return refused == self.refused and self.accepted == len(self.socket.received) + lost

    def explain(self) -> str:
        return (
            f"accepted {self.accepted}, refused {self.refused}, delivered "
            f"{len(self.socket.received)}; sender {backplane_drops(self.sender)}, "
            f"receiver {backplane_drops(self.receiver)}"
        )


# -- the event loop ----------------------------------------------------------------------------


@pytest.fixture(name="anyio_backend", params=["asyncio", "trio-mockclock"])
def mock_clock_backend(request: pytest.FixtureRequest) -> object:
    """asyncio in real time, and trio on a ``MockClock`` that jumps to the next deadline."""
    if request.param == "asyncio":
        return "asyncio"
    import trio.testing

    # A fresh clock per test: a MockClock remembers its time.
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
