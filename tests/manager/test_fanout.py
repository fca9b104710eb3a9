"""Fan-out never waits for a peer: order, slow and stalled peers, failures, coalescing, churn.

Every message offered to a connection is either delivered or counted in ``stats().drops``; the
tests below check that bookkeeping exactly, not just that "something" happened.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import anyio
import pytest
from anyio.lowlevel import checkpoint

from support import NEVER, C, D, E, eventually
from wsfleet import (
    ConnectionManager,
    ConnectionState,
    OverflowPolicy,
    StateChange,
    TransportError,
)
from wsfleet._runtime.outbox import WRITER_LINGER
from wsfleet.testing import MemoryTransport
from wsfleet.transport import Outbound

pytestmark = pytest.mark.anyio


async def one_in_flight(manager: ConnectionManager, message: str) -> int:
    """Broadcast ``message`` and wait until every writer has taken it (stalled peers hold it).

    A writer takes whatever has accumulated when it starts; pinning the first message in
    flight alone makes the queue contents, and so the drops, exact.
    """
    count = await manager.broadcast(message)
    await eventually(lambda: manager.stats().queued_messages == 0)
    return count


# -- order ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: MemoryTransport("sync"), id="written-at-once"),
        pytest.param(lambda: MemoryTransport("task", sync=False), id="writer-task"),
        pytest.param(lambda: MemoryTransport("slow", latency=0.001), id="slow-peer"),
    ],
)
async def test_each_connection_receives_its_messages_in_the_order_they_were_sent(
    make: Callable[[], MemoryTransport],
) -> None:
    async with ConnectionManager() as manager:
        alice, bob = make(), make()
        manager.register(alice, "alice")
        manager.register(bob, "bob")
        manager.add_to_group("alice", "room")
        expected: dict[str, list[str | bytes]] = {"alice": [], "bob": []}
        for i in range(200):
            match i % 5:
                case 0:
                    await manager.broadcast(f"all {i}")
                    expected["alice"].append(f"all {i}")
                    expected["bob"].append(f"all {i}")
                case 1:
                    await manager.send_to_one("alice", f"alice {i}".encode())
                    expected["alice"].append(f"alice {i}".encode())
                case 2:
                    await manager.send_to_group("room", f"room {i}")
                    expected["alice"].append(f"room {i}")
                case 3:
                    await manager.connection(bob).send(f"bob {i}")
                    expected["bob"].append(f"bob {i}")
                case _:
                    await manager.send_to_many(["bob", "alice", "bob"], f"many {i}")
                    expected["alice"].append(f"many {i}")
                    expected["bob"].append(f"many {i}")
        await eventually(lambda: manager.stats().queued_messages == 0)
        await eventually(lambda: len(bob.received) == len(expected["bob"]))
        await eventually(lambda: len(alice.received) == len(expected["alice"]))
    assert alice.received == expected["alice"]
    assert bob.received == expected["bob"]


async def test_fan_out_only_queues_and_never_waits_for_a_peer() -> None:
    async with ConnectionManager() as manager:
        stalled = [MemoryTransport(f"s{i}", stalled=True) for i in range(20)]
        for i, socket in enumerate(stalled):
            manager.register(socket, f"user{i}")
        with anyio.fail_after(5):  # would hang forever if a send awaited a peer
            for i in range(100):
                assert await manager.broadcast(f"m{i}") == 20
        # Each writer holds what it took before the peer blocked it; the rest waits.
        assert 0 < manager.stats().queued_messages <= 20 * 100
        assert all(s.received == [] for s in stalled)
        for socket in stalled:
            socket.resume()
        await eventually(lambda: all(len(s.received) == 100 for s in stalled))
        assert all(s.received == [f"m{i}" for i in range(100)] for s in stalled)


# -- slow and stalled peers ---------------------------------------------------------------


async def test_a_stalled_peer_does_not_delay_the_others_and_catches_up_in_order() -> None:
    async with ConnectionManager() as manager:
        healthy = [MemoryTransport(f"h{i}") for i in range(10)]
        for i, socket in enumerate(healthy):
            manager.register(socket, f"user{i}")
        stalled = MemoryTransport("stalled", stalled=True)
        manager.register(stalled, "stalled")
        await one_in_flight(manager, "m0")
        for i in range(1, 100):
            assert await manager.broadcast(f"m{i}") == 11
        await eventually(lambda: all(len(s.received) == 100 for s in healthy))
        assert stalled.received == []
        assert stalled.stalled
        stats = manager.stats()
        assert stats.queued_messages == 99  # the first message is in the writer's hands
        assert stats.drops == {}
        assert stats.states["CONNECTED"] == 11
        stalled.resume()
        await eventually(lambda: len(stalled.received) == 100)
        assert stalled.received == [f"m{i}" for i in range(100)]
        assert stalled.writes == 2  # the one in flight, then everything that waited at once
        assert manager.stats().queued_messages == 0
        assert manager.stats().sent_messages == 11 * 100


N = 50
LIMIT = 5
IN_FLIGHT = ["m0"]  # taken by the writer before the peer stalled it


@pytest.mark.parametrize(
    ("action", "delivered", "drops"),
    [
        pytest.param(
            "drop-oldest",
            IN_FLIGHT + [f"m{i}" for i in range(N - LIMIT, N)],
            {"overflow: drop-oldest": N - 1 - LIMIT},
            id="drop-oldest",
        ),
        pytest.param(
            "drop-newest",
            IN_FLIGHT + [f"m{i}" for i in range(1, 1 + LIMIT)],
            {"overflow: drop-newest": N - 1 - LIMIT},
            id="drop-newest",
        ),
    ],
)
async def test_a_full_queue_drops_messages_per_policy_and_counts_every_drop(
    action: str, delivered: list[str], drops: dict[str, int]
) -> None:
    overflow = OverflowPolicy(max_messages=LIMIT, action=action)
    async with ConnectionManager(overflow=overflow) as manager:
        healthy = MemoryTransport("healthy")
        stalled = MemoryTransport("stalled", stalled=True)
        manager.register(healthy, "healthy")
        manager.register(stalled, "stalled")
        await one_in_flight(manager, "m0")
        for i in range(1, N):
            await manager.broadcast(f"m{i}")
        await eventually(lambda: len(healthy.received) == N)
        assert manager.stats().drops == drops
        assert manager.get_connection_state(stalled) is C  # dropping messages keeps the client
        assert manager.stats().queued_messages == LIMIT
        stalled.resume()
        await eventually(lambda: len(stalled.received) == len(delivered))
        await anyio.sleep(0.01)
        assert stalled.received == delivered
        assert len(stalled.received) + manager.stats().dropped == N  # nothing lost uncounted
        assert healthy.received == [f"m{i}" for i in range(N)]
        assert stalled.close_code is None


async def test_a_full_queue_drops_the_oldest_by_bytes_too() -> None:
    overflow = OverflowPolicy(
        max_messages=100, max_bytes=10, max_message_size=10, action="drop-oldest"
    )
    async with ConnectionManager(overflow=overflow) as manager:
        stalled = MemoryTransport("stalled", stalled=True)
        manager.register(stalled, "stalled")
        await one_in_flight(manager, "first")
        for message in ("aaaa", "bbbb", "cccc", "dddddddd"):
            await manager.broadcast(message)
        stats = manager.stats()
        assert stats.queued_bytes <= 10
        assert stats.drops == {"overflow: drop-oldest": 3}
        stalled.resume()
        await eventually(lambda: len(stalled.received) == 2)
        assert stalled.received == ["first", "dddddddd"]


async def test_a_slow_consumer_is_disconnected_with_1008_and_goes_to_error() -> None:
    changes: list[StateChange] = []
    overflow = OverflowPolicy(max_messages=LIMIT, action="disconnect")
    async with ConnectionManager(overflow=overflow) as manager:
        manager.on_state_change(changes.append)
        healthy = MemoryTransport("healthy")
        stalled = MemoryTransport("stalled", stalled=True)
        manager.register(healthy, "healthy")
        manager.register(stalled, "stalled")
        counts = [await one_in_flight(manager, "m0")]
        counts += [await manager.broadcast(f"m{i}") for i in range(1, N)]
        await eventually(lambda: len(healthy.received) == N)
        await eventually(lambda: stalled.close_code is not None)
        assert (stalled.close_code, stalled.close_reason) == (1008, "slow consumer")
        # No retry policy: ERROR, then on to DISCONNECTED (and out of the registry).
        assert manager.get_connection_state(stalled) is None
        assert manager.count() == 1
        await eventually(lambda: len(changes) == 4)
        lost = [(c.old, c.new, c.reason) for c in changes if c.connection.socket is stalled]  # type: ignore[attr-defined]
        assert lost[0] == (None, C, "registered")
        assert lost[1] == (C, E, "slow consumer")
        assert lost[2][:2] == (E, D)
        # m0 was in flight, m1..m5 queued, m6 did not fit: all seven are counted as dropped,
        # and a DISCONNECTED connection is not counted as a target afterwards.
        await eventually(lambda: manager.stats().dropped == 1 + LIMIT + 1)
        assert manager.stats().drops == {"slow consumer": LIMIT + 1, "connection lost": 1}
        # m6 counts for the stalled one too (dropped with its queue): what the calls
        # returned adds up to what was sent and dropped.
        assert counts[: LIMIT + 2] == [2] * (LIMIT + 2)
        assert counts[LIMIT + 2 :] == [1] * (N - LIMIT - 2)
        stats = manager.stats()
        assert sum(counts) == stats.sent_messages + stats.dropped + stats.queued_messages
        assert stalled.received == []
        assert manager.stats().queued_messages == 0


async def test_a_slow_consumer_with_a_retry_policy_stays_in_error_awaiting_its_retry() -> None:
    overflow = OverflowPolicy(max_messages=LIMIT, action="disconnect")
    async with ConnectionManager(overflow=overflow, retry_policy=NEVER) as manager:
        stalled = MemoryTransport("stalled", stalled=True)
        manager.register(stalled, "stalled")
        await one_in_flight(manager, "m0")
        for i in range(1, LIMIT + 2):
            await manager.broadcast(f"m{i}")
        await eventually(lambda: stalled.close_code == 1008)
        assert manager.get_connection_state(stalled) is E
        assert manager.connection(stalled).reason == "slow consumer"


# -- failing peers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error_text"),
    [
        pytest.param(
            lambda: MemoryTransport("fails", fail_with=TransportError("peer reset")),
            "peer reset",
            id="TransportError-in-writer",
        ),
        pytest.param(
            lambda: MemoryTransport("reset", fail_with=ConnectionResetError("peer reset")),
            "peer reset",
            id="OSError-in-writer",
        ),
    ],
)
async def test_a_send_that_fails_moves_that_connection_to_error_and_never_raises(
    make: Callable[[], MemoryTransport], error_text: str
) -> None:
    async with ConnectionManager(retry_policy=NEVER) as manager:
        healthy = MemoryTransport("healthy")
        failing = make()
        manager.register(healthy, "healthy")
        conn = manager.register(failing, "failing")
        assert await manager.broadcast("one") == 2  # queued for both: no error here
        await eventually(lambda: conn.state is E)
        assert error_text in (conn.reason or "")
        assert await manager.broadcast("two") == 2  # kept for when it reconnects
        await eventually(lambda: healthy.received == ["one", "two"])
        stats = manager.stats()
        assert stats.drops == {"send failed": 1}
        assert stats.queued_messages == 1
        assert failing.received == []


class OneBadMessage(MemoryTransport):
    """A transport whose library cannot write one particular message (not an I/O failure)."""

    def send_nowait(self, batch: Sequence[Outbound]) -> bool:
        if "bad" in batch:
            raise RuntimeError("the library cannot build this frame")
        return super().send_nowait(batch)

    async def send(self, batch: Sequence[Outbound]) -> None:
        if "bad" in batch:
            raise RuntimeError("the library cannot build this frame")
        await super().send(batch)


@pytest.mark.parametrize("sync", [True, False], ids=["flusher", "writer"])
async def test_a_write_that_fails_for_its_message_keeps_every_connection(sync: bool) -> None:
    """A failure that belongs to a message is not the peer's: the batch is dropped and
    counted, nobody changes state, and later messages go out as usual."""
    async with ConnectionManager() as manager:
        sockets = [OneBadMessage(f"s{i}", sync=sync) for i in range(3)]
        for i, socket in enumerate(sockets):
            manager.register(socket, f"user{i}")
        changes: list[StateChange] = []
        manager.on_state_change(changes.append)
        assert await manager.broadcast("bad") == 3
        await eventually(lambda: manager.stats().drops.get("send error") == 3)
        assert await manager.broadcast("good") == 3
        await eventually(lambda: all(s.received == ["good"] for s in sockets))
        assert changes == []
        assert manager.connections_in_state(C) == sockets
        stats = manager.stats()
        assert stats.drops == {"send error": 3}
        assert stats.sent_messages == 3
        assert stats.queued_messages == 0


async def test_a_socket_closed_under_us_fails_on_the_synchronous_path_too() -> None:
    changes: list[StateChange] = []
    async with ConnectionManager() as manager:
        manager.on_state_change(changes.append)
        healthy = MemoryTransport("healthy")
        gone = MemoryTransport("gone")
        manager.register(healthy, "healthy")
        manager.register(gone, "gone")
        await gone.close(1006)  # the socket died without the manager hearing of it
        assert await manager.broadcast("hello") == 2
        await eventually(lambda: manager.get_connection_state(gone) is None)
        await eventually(lambda: len(changes) == 4)
        reasons = [c.reason for c in changes if c.new is E]
        assert len(reasons) == 1
        assert "TransportError" in (reasons[0] or "")
        assert healthy.received == ["hello"]
        assert manager.stats().drops == {"send failed": 1}


async def test_a_peer_reporting_its_close_ends_the_connection_by_code() -> None:
    async with ConnectionManager(retry_policy=NEVER) as manager:
        clean, abnormal = MemoryTransport("clean"), MemoryTransport("abnormal")
        a = manager.register(clean, "clean")
        b = manager.register(abnormal, "abnormal")
        a.closed(1000, "bye")
        b.closed(1006)
        assert a.state is D
        assert b.state is E
        assert b.reason == "abnormal close (1006)"


async def test_a_peer_reporting_a_failure_goes_to_error_with_the_reason_kept() -> None:
    async with ConnectionManager(retry_policy=NEVER) as manager:
        conn = manager.register(MemoryTransport(), "alice")
        conn.failed(OSError("connection reset by peer"))
        assert conn.state is E
        assert conn.reason == "I/O failure: OSError: connection reset by peer"


async def test_close_closes_the_socket_with_its_code_then_unregisters_it() -> None:
    changes: list[StateChange] = []
    async with ConnectionManager() as manager:
        manager.on_state_change(changes.append)
        socket = MemoryTransport()
        manager.register(socket, "alice")
        await manager.close(socket, 4000, "kicked")
        assert (socket.close_code, socket.close_reason) == (4000, "kicked")
        assert manager.get_connection_state(socket) is None
        await eventually(lambda: len(changes) == 2)
    assert (changes[1].old, changes[1].new) == (C, D)
    assert changes[1].reason == "closed by the application (4000)"


# -- coalescing -------------------------------------------------------------------------


async def test_messages_waiting_together_reach_the_transport_in_fewer_writes() -> None:
    async with ConnectionManager() as manager:
        socket = MemoryTransport("batched", sync=False, stalled=True)
        manager.register(socket, "alice")
        for i in range(20):
            await manager.send_to_one("alice", f"m{i}")
        socket.resume()
        await eventually(lambda: len(socket.received) == 20)
        assert socket.received == [f"m{i}" for i in range(20)]
        assert socket.writes <= 2 < 20


async def test_a_burst_of_awaited_broadcasts_goes_out_in_one_write_per_connection() -> None:
    async with ConnectionManager() as manager:
        sockets = [MemoryTransport(f"s{i}") for i in range(3)]  # take batches at once
        for i, socket in enumerate(sockets):
            manager.register(socket, f"user{i}")
        for i in range(30):  # the application awaits each call: the flusher may run between
            await manager.broadcast(f"m{i}")
        await eventually(lambda: all(len(s.received) == 30 for s in sockets))
        for socket in sockets:
            assert socket.received == [f"m{i}" for i in range(30)]
            assert socket.writes <= 2  # the burst is coalesced, not written call by call


async def test_waiting_for_a_burst_to_end_never_overflows_a_queue() -> None:
    """The flusher waits for at most a quarter of the queue bounds before it writes."""
    tight = OverflowPolicy(
        max_messages=8, max_bytes=1024, max_message_size=64, action="drop-oldest"
    )
    async with ConnectionManager(overflow=tight) as manager:
        socket = MemoryTransport()
        manager.register(socket, "alice")
        for i in range(200):
            await manager.broadcast(f"{i:03d}" + "x" * 29)  # 32 bytes: 1 KiB is 32 of them
        await eventually(lambda: len(socket.received) == 200)
        assert manager.stats().drops == {}
        assert socket.received == [f"{i:03d}" + "x" * 29 for i in range(200)]
        assert 200 / 2 >= socket.writes >= 200 / 8  # coalesced in twos (8 // 4), no more


async def test_a_lone_message_is_written_after_a_few_rounds_of_the_event_loop() -> None:
    async with ConnectionManager() as manager:
        socket = MemoryTransport()
        manager.register(socket, "alice")
        await manager.broadcast("hello")
        for _ in range(5):
            if socket.received:
                break
            await checkpoint()
        assert socket.received == ["hello"]


async def test_an_idle_writer_ends_after_its_linger_while_a_busy_one_goes_on() -> None:
    async with ConnectionManager() as manager:
        quiet, busy = MemoryTransport("quiet", sync=False), MemoryTransport("busy", sync=False)
        quiet_conn = manager.register(quiet, "quiet")
        busy_conn = manager.register(busy, "busy")
        await manager.broadcast("first")
        await eventually(lambda: quiet.received == busy.received == ["first"])
        assert quiet_conn._out.writing  # both wait for more, for a while
        assert busy_conn._out.writing
        started = anyio.current_time()
        sent = 0
        while anyio.current_time() - started < 1.5 * WRITER_LINGER:
            await manager.send_to_one("busy", f"more{sent}")
            sent += 1
            await anyio.sleep(WRITER_LINGER / 10)
        assert not quiet_conn._out.writing  # its writer ended: no task for an idle connection
        assert busy_conn._out.writing  # never idle for a whole linger
        assert busy.received == ["first", *(f"more{i}" for i in range(sent))]
        with anyio.fail_after(3 * WRITER_LINGER):
            while busy_conn._out.writing:
                await anyio.sleep(0.05)
        await manager.broadcast("again")  # a new writer when there is something again
        await eventually(lambda: quiet.received == ["first", "again"])
        assert quiet_conn._out.writing


async def test_a_slow_writer_batches_what_arrives_while_it_writes() -> None:
    async with ConnectionManager() as manager:
        socket = MemoryTransport("slow", sync=False, latency=0.01)
        manager.register(socket, "alice")
        for i in range(50):
            await manager.send_to_one("alice", f"m{i}")
        await eventually(lambda: len(socket.received) == 50, steps=100_000)
        assert socket.received == [f"m{i}" for i in range(50)]
        assert socket.writes < 50


# -- churn ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_churn_of_connections_during_broadcasts_loses_and_duplicates_nothing() -> None:
    """2,000 connects and 2,000 disconnects interleaved with 1,000 broadcasts."""
    rng = random.Random(20240611)
    broadcasts = 1000
    first: dict[int, int] = {}  # id(socket) -> broadcasts fanned out before it registered
    end: dict[int, int] = {}  # id(socket) -> broadcasts fanned out before it left
    sockets: list[MemoryTransport] = []
    live: list[MemoryTransport] = []
    fanned_out = 0

    async with ConnectionManager() as manager:

        def connect() -> None:
            n = len(sockets)
            socket = MemoryTransport(f"s{n}", sync=n % 3 != 0)  # some take the writer path
            identifier = f"user{n % 250}"  # identifiers come and go with several tabs
            manager.register(socket, identifier)
            manager.add_to_group(identifier, f"group{n % 7}")
            first[id(socket)] = fanned_out
            sockets.append(socket)
            live.append(socket)

        def disconnect() -> None:
            socket = live.pop(rng.randrange(len(live)))
            assert manager.unregister(socket) is True
            end[id(socket)] = fanned_out

        async def churn() -> None:
            for _ in range(200):
                connect()
            for step in range(1800):
                connect()
                disconnect()
                if step % 2:
                    await checkpoint()

        async def broadcast() -> None:
            nonlocal fanned_out
            for k in range(broadcasts):
                targets = len(manager)
                fanned_out += 1
                assert await manager.broadcast(str(k)) == targets
                await checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(churn)
            tg.start_soon(broadcast)
        await eventually(lambda: manager.stats().queued_messages == 0)
        # Writers may linger for more, but none has a batch in flight.
        await eventually(
            lambda: all(
                not c._out.writing or c._out.writer_wake is not None
                for c in (manager.connection(s) for s in live)
            )
        )
        assert manager.stats().drops.keys() <= {"unregistered", "connection lost"}
        dropped_on_leaving = manager.stats().dropped
        assert dropped_on_leaving > 0  # some sockets did leave with messages still queued

        while live:
            disconnect()

        assert len(sockets) == 2000
        assert len(end) == 2000
        missed = 0
        for socket in sockets:
            expected = [str(k) for k in range(first[id(socket)], end[id(socket)])]
            got = socket.received
            # In order, never twice; a socket that left may have left with a queued tail.
            assert got == expected[: len(got)], socket
            missed += len(expected) - len(got)
        assert missed == dropped_on_leaving  # and that tail was counted, to the message
        assert fanned_out == broadcasts
        assert manager.stats().sent_messages == sum(len(s.received) for s in sockets)

        # Nothing is left behind.
        stats = manager.stats()
        assert (len(manager), stats.connections, stats.identifiers, stats.groups) == (0, 0, 0, 0)
        assert (stats.queued_messages, stats.queued_bytes) == (0, 0)
        assert set(stats.states.values()) == {0}
        assert stats.dropped == dropped_on_leaving  # leaving after the flush dropped nothing
        registry = manager._registry
        assert registry.by_socket == {}
        assert registry.by_identifier == {}
        assert registry.groups == {}
        assert registry.memberships == {}
        assert all(not conns for conns in registry.by_state.values())


# -- shutdown ---------------------------------------------------------------------------


async def test_leaving_async_with_flushes_what_is_queued_and_closes_every_socket_with_1001() -> (
    None
):
    sockets = [MemoryTransport(f"s{i}", sync=False, latency=0.002) for i in range(5)]
    async with ConnectionManager() as manager:
        for i, socket in enumerate(sockets):
            manager.register(socket, f"user{i}")
        for i in range(30):
            await manager.broadcast(f"m{i}")
        assert manager.stats().queued_messages > 0  # still on the way when the block ends
    for socket in sockets:
        assert socket.received == [f"m{i}" for i in range(30)]
        assert (socket.close_code, socket.close_reason) == (1001, "going away")
    assert len(manager) == 0
    assert manager.stats().queued_messages == 0
    assert manager.stats().dropped == 0


async def test_leaving_async_with_closes_a_stalled_socket_too_within_the_timeout() -> None:
    ended: list[ConnectionState] = []
    stalled = MemoryTransport("stalled", stalled=True)
    healthy = MemoryTransport("healthy")
    with anyio.fail_after(5):
        async with ConnectionManager(shutdown_timeout=0.05) as manager:
            manager.on_state_change(lambda _s, _o, new: ended.append(new))
            manager.register(stalled, "stalled")
            manager.register(healthy, "healthy")
            for i in range(3):
                await manager.broadcast(f"m{i}")
    assert stalled.close_code == healthy.close_code == 1001
    assert healthy.received == ["m0", "m1", "m2"]
    assert stalled.received == []
    assert manager.stats().dropped == 3  # nothing lost uncounted, even on the way out
    assert ended.count(D) == 2  # the callbacks of the last changes ran before the exit
