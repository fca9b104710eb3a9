"""Each part of the runtime, built alone with what it needs: no ``ConnectionManager``.

A part gets a context (clock, tasks), a policy and a small object it reports to; these tests
give it a recorder for the last and check what it did and what it reported. That the parts
can be driven this way is the point of the layer (docs/explanation/architecture.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import anyio
import pytest
import trio.testing

from support import C, D, E
from wsfleet import ConnectionState, HeartbeatPolicy, OverflowPolicy, RetryPolicy
from wsfleet._runtime.connection import Connection
from wsfleet._runtime.context import Context
from wsfleet._runtime.fleet import Fleet
from wsfleet._runtime.outbox import Outbox
from wsfleet._runtime.registry import Registry
from wsfleet._runtime.resumption import Resumption
from wsfleet._runtime.routing import excluded, targets
from wsfleet._runtime.timers import Timers
from wsfleet.fsm import FleetMachine
from wsfleet.testing import MemoryTransport
from wsfleet.transport import PING

pytestmark = pytest.mark.anyio


class Recorder:
    """Stands for the fleet: what a connection and the parts report lands in ``calls``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any) -> None:
            self.calls.append(
                (name, args[1:] if args and isinstance(args[0], Connection) else args)
            )

        return record

    def timestamp(self, conn: Connection) -> datetime:  # pragma: no cover - not asked here
        raise AssertionError

    def named(self, name: str) -> list[Any]:
        return [args for called, args in self.calls if called == name]


def connection(owner: Any, name: str = "alice", **kwargs: Any) -> Connection:
    conn = Connection(
        owner, MemoryTransport(name, **kwargs), MemoryTransport(name, **kwargs), name, 0.0
    )
    conn.state = C
    return conn


@asynccontextmanager
async def bound() -> AsyncIterator[Context]:
    context = Context()
    async with anyio.create_task_group() as tg:
        context.bind(tg)
        yield context
        tg.cancel_scope.cancel()


# -- the outbox ------------------------------------------------------------------------------


async def test_the_outbox_queues_and_writes_but_changes_no_state() -> None:
    reports = Recorder()
    async with bound() as context:
        outbox = Outbox(context, OverflowPolicy(max_messages=2), reports)
        context.spawn(outbox.run, name="flusher")
        conns = [connection(reports, f"c{i}") for i in range(2)]
        conns.append(connection(reports, "stalled", stalled=True))
        assert outbox.fan_out(conns, "m1", 2) == 3
        assert outbox.fan_out(conns, "m2", 2) == 3
        with anyio.fail_after(5):
            while any(c.transport.received != ["m1", "m2"] for c in conns[:2]):  # type: ignore[attr-defined]
                await anyio.sleep(0.001)
        assert outbox.sent_messages == 4
        # A full queue under "disconnect": counted out and put aside; evicting is the caller's.
        stalled = conns[2]
        for m in ("m3", "m4", "m5", "m6"):
            outbox.fan_out([stalled], m, 2)
        assert outbox.take_evictions() == [stalled]
        assert outbox.take_evictions() == []
        assert all(c.state is C for c in conns)  # the outbox changed no state
        assert reports.calls == []


async def test_the_outbox_reports_a_ping_as_it_goes_and_a_failed_socket() -> None:
    reports = Recorder()
    async with bound() as context:
        outbox = Outbox(context, OverflowPolicy(), reports)
        context.spawn(outbox.run, name="flusher")
        conn = connection(reports)
        outbox.queue_ping(conn)
        with anyio.fail_after(5):
            while not reports.named("ping_written"):
                await anyio.sleep(0.001)
        assert conn.transport.pings == 1  # type: ignore[attr-defined]
        conn.transport.fail_with = ConnectionResetError("gone")  # type: ignore[attr-defined]
        outbox.fan_out([conn], "lost", 4)
        with anyio.fail_after(5):
            while not reports.named("send_failed"):
                await anyio.sleep(0.001)
        (failed,) = reports.named("send_failed")
        assert isinstance(failed[0], ConnectionResetError)
        assert outbox.drops == {"send failed": 1}


async def test_a_queued_ping_never_counts_against_the_bound_nor_is_dropped() -> None:
    async with bound() as context:
        outbox = Outbox(context, OverflowPolicy(max_messages=2, action="drop-oldest"), Recorder())
        conn = connection(Recorder())
        outbox.fan_out([conn], "a", 1)
        outbox.queue_ping(conn)
        for m in ("b", "c", "d"):
            outbox.fan_out([conn], m, 1)
        assert conn._out.pending == [PING, "c", "d"]
        assert outbox.drops == {"overflow: drop-oldest": 2}


# -- the timers --------------------------------------------------------------------------------


def mock_clock() -> Any:
    """Timers run on trio's mock clock: virtual seconds, exact and instant."""
    return pytest.mark.parametrize(
        "anyio_backend", [("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})]
    )


@mock_clock()
async def test_the_timers_say_when_a_ping_is_due_and_when_a_peer_failed_to_answer() -> None:
    reports = Recorder()
    policy = HeartbeatPolicy(ping_interval=10, ping_timeout=5, idle_after=None)
    async with bound() as context:
        timers = Timers(context, policy, reports)
        context.spawn(timers.run, name="timers")
        conn = connection(reports)
        timers.arm(conn, reconnected=False)
        await anyio.sleep(10.5)
        assert reports.named("ping_due") == [()]
        timers.ping_written(conn)  # the outbox handed it over; no pong comes
        await anyio.sleep(5.5)
        assert reports.named("heartbeat_failed") == [("heartbeat timeout",)]
        assert timers.heartbeat_timeouts == 1


@mock_clock()
async def test_an_answered_ping_and_a_message_keep_a_connection_out_of_trouble() -> None:
    reports = Recorder()
    policy = HeartbeatPolicy(ping_interval=10, ping_timeout=5, idle_after=30)
    async with bound() as context:
        timers = Timers(context, policy, reports)
        context.spawn(timers.run, name="timers")
        conn = connection(reports)
        timers.arm(conn, reconnected=False)
        for _ in range(5):  # every ping answered
            await anyio.sleep(10.5)
            timers.ping_written(conn)
            await anyio.sleep(0.5)
            timers.touched(conn, pong=True)
        assert reports.named("heartbeat_failed") == []
        assert reports.named("went_idle") == [("no activity for 30 s",)]  # pongs are not activity


@mock_clock()
async def test_a_retry_falls_due_once_and_a_newer_one_supersedes_an_older() -> None:
    reports = Recorder()
    async with bound() as context:
        timers = Timers(context, None, reports)
        context.spawn(timers.run, name="timers")
        conn = connection(reports)
        timers.retry_after(conn, 5.0)
        timers.retry_after(conn, 8.0)  # supersedes the first
        await anyio.sleep(6)
        assert reports.named("retry_due") == []
        await anyio.sleep(3)
        assert reports.named("retry_due") == [()]


# -- resumption ---------------------------------------------------------------------------------


async def test_a_token_names_one_held_session_of_its_identifier_once() -> None:
    context = Context()
    machine = FleetMachine(retry_policy=RetryPolicy(base_delay=1.0))
    resumption = Resumption(context, machine, resume_window=None)
    conn = connection(Recorder())
    resumption.registered(conn)
    token = conn.resume_token
    assert token is not None
    assert resumption.find("alice", token) is None  # CONNECTED: nothing is held yet
    conn.state = E
    assert resumption.find("bob", token) is None  # another identifier's
    assert resumption.find("alice", token) is conn
    resumption.resumed(conn)
    assert conn.resume_token not in (None, token)
    assert resumption.find("alice", token) is None  # spent
    assert resumption.window_of(conn) == RetryPolicy(base_delay=1.0).max_total_delay()


async def test_a_part_that_a_connection_does_not_need_yet_is_not_made() -> None:
    """An idle connection makes no outbox part until it is sent something, and no holding
    unless it can be held: fewer objects per registration, for memory and the collector."""
    context = Context()
    outbox = Outbox(context, OverflowPolicy(), Recorder())
    resumption = Resumption(context, FleetMachine(), resume_window=None)
    conn = connection(Recorder())
    resumption.registered(conn)  # no retry policy, no window: it cannot be held
    assert conn._out is None
    assert conn._hold is None
    assert (conn.queued, conn.queued_bytes, conn.resume_token, conn.held) == (0, 0, None, False)
    outbox.discard(conn, "nothing")
    outbox.stop_writer(conn)
    outbox.park(conn, held=True)
    outbox.schedule(conn)
    assert not outbox.busy([conn])
    resumption.forget(conn)
    assert conn._out is None
    assert conn._hold is None
    outbox.fan_out([conn], "hello", 5)
    assert conn._out is not None
    assert (conn.queued, conn.queued_bytes) == (1, 5)
    held = connection(Recorder(), "bob")
    Resumption(context, FleetMachine(), resume_window=5.0).registered(held)
    assert held._hold is not None
    assert held.resume_token is not None
    assert not held.held


def test_an_identifiers_sockets_keep_their_order_as_they_come_and_go() -> None:
    owner = Recorder()
    registry = Registry()
    first, second, third = (connection(owner, "alice") for _ in range(3))
    registry.add(first)
    registry.join("alice", "room")
    assert list(registry.connections_of("alice")) == [first]
    registry.add(second)
    registry.add(third)
    assert list(registry.connections_of("alice")) == [first, second, third]
    registry.remove(first)
    assert list(registry.connections_of("alice")) == [second, third]
    moved = MemoryTransport("alice")
    registry.rekey(second, moved)
    second.socket = moved
    assert list(registry.connections_of("alice")) == [third, second]  # the newest last
    assert registry.get(moved) is second
    registry.remove(third)
    assert list(registry.connections_of("alice")) == [second]
    assert registry.groups == {"room": {"alice"}}
    registry.remove(second)
    assert list(registry.connections_of("alice")) == []
    assert "alice" not in registry.by_identifier
    assert registry.groups == {}
    alone = connection(owner, "bob")
    registry.add(alone)
    replaced = MemoryTransport("bob")
    registry.rekey(alone, replaced)
    alone.socket = replaced
    assert list(registry.connections_of("bob")) == [alone]
    assert registry.get(replaced) is alone
    registry.remove(alone)
    assert len(registry) == 0
    assert registry.by_identifier == {}


# -- routing -----------------------------------------------------------------------------------


def test_one_routing_function_for_every_kind_of_fan_out() -> None:
    owner = Recorder()
    registry = Registry()
    conns = {name: connection(owner, name) for name in ("alice", "bob", "carol")}
    second = connection(owner, "alice")
    for conn in [*conns.values(), second]:
        registry.add(conn)
    registry.join("alice", "room")
    registry.join("bob", "room")
    sockets = {name: conn.socket for name, conn in conns.items()}

    def names(found: list[Connection]) -> list[str]:
        return sorted(c.identifier for c in found)

    assert names(targets(registry, "all")) == ["alice", "alice", "bob", "carol"]
    assert names(targets(registry, "one", "alice")) == ["alice", "alice"]
    assert names(targets(registry, "many", ["bob", "carol", "bob"])) == ["bob", "carol"]
    assert names(targets(registry, "group", "room")) == ["alice", "alice", "bob"]
    skip = excluded(registry, ["bob", sockets["alice"]])
    assert names(targets(registry, "group", "room", skip)) == ["alice"]
    assert names(targets(registry, "all", None, excluded(registry, conns["carol"]))) == [
        "alice",
        "alice",
        "bob",
    ]


# -- the fleet: the one place a change takes effect ----------------------------------------------


async def test_the_fleet_applies_a_changes_effects_in_one_place() -> None:
    fleet = Fleet(
        retry_policy=None,
        heartbeat=None,
        overflow=OverflowPolicy(),
        resume_window=None,
        callback_timeout=1.0,
        close_timeout=1.0,
    )
    seen: list[tuple[ConnectionState | None, ConnectionState]] = []
    fleet.callbacks.add(lambda _socket, old, new: seen.append((old, new)))
    async with anyio.create_task_group() as tg:
        fleet.bind(tg)
        socket = MemoryTransport("alice")
        conn = fleet.register(socket, "alice")
        fleet.registry.join("alice", "room")
        fleet.deliver([conn], "queued while up", 15)
        changes = fleet.request(conn, E, "failed")  # no retry policy: on to DISCONNECTED
        assert [(c.old, c.new) for c in changes] == [(C, E), (E, D)]
        # Every effect, from one call: the index, the queue, the registry, the groups.
        assert not conn.registered
        assert fleet.registry.get(socket) is None
        assert fleet.registry.groups == {}
        assert all(not states for states in fleet.registry.by_state.values())
        with anyio.fail_after(5):
            while seen != [(None, C), (C, E), (E, D)]:
                await anyio.sleep(0.001)
        tg.cancel_scope.cancel()
