"""State-change callbacks: after the change, in order, isolated from each other's failures."""

from __future__ import annotations

import logging

import anyio
import pytest
from anyio.lowlevel import checkpoint

from support import C, D, I, eventually
from wsfleet import ConnectionManager, ConnectionState, StateChange
from wsfleet.testing import MemoryTransport

pytestmark = pytest.mark.anyio


Seen = list[tuple[object, ConnectionState | None, ConnectionState]]


async def test_callbacks_run_after_the_change_not_inside_it() -> None:
    observed: list[ConnectionState | None] = []
    async with ConnectionManager() as manager:
        socket = MemoryTransport()

        @manager.on_state_change
        def look(sock: object, old: object, new: ConnectionState) -> None:
            # By the time a callback runs, the change is complete and visible to everyone.
            observed.append(manager.get_connection_state(sock))

        manager.register(socket, "alice")
        assert observed == []  # register returned before any callback ran
        await eventually(lambda: observed == [C])
        manager.set_connection_state(socket, I)
        assert observed == [C]
        await eventually(lambda: observed == [C, I])


async def test_a_callback_may_change_the_state_itself() -> None:
    seen: Seen = []
    async with ConnectionManager() as manager:

        @manager.on_state_change
        def wake_up(socket: object, old: object, new: ConnectionState) -> None:
            seen.append((socket, old, new))
            if new is I:
                manager.set_connection_state(socket, C, "woken by a callback")

        socket = MemoryTransport()
        manager.register(socket, "alice")
        manager.set_connection_state(socket, I)
        await eventually(lambda: len(seen) == 3)
        assert seen == [(socket, None, C), (socket, C, I), (socket, I, C)]
        assert manager.get_connection_state(socket) is C


async def test_each_connection_sees_its_changes_in_order() -> None:
    seen: Seen = []
    async with ConnectionManager() as manager:
        manager.on_state_change(lambda socket, old, new: seen.append((socket, old, new)))
        a, b = MemoryTransport("a"), MemoryTransport("b")
        manager.register(a, "a")
        manager.register(b, "b")
        for _ in range(20):
            manager.set_connection_state(a, I)
            manager.set_connection_state(b, I)
            manager.set_connection_state(a, C)
            manager.set_connection_state(b, C)
        manager.unregister(a)
        manager.unregister(b)
        await eventually(lambda: len(seen) == 2 * 42)
    for socket in (a, b):
        mine = [(old, new) for sock, old, new in seen if sock is socket]
        assert mine == [(None, C), *[(C, I), (I, C)] * 20, (C, D)]


async def test_a_slow_async_callback_delays_only_itself_and_sees_every_change_in_order() -> None:
    seen: list[tuple[str, ConnectionState]] = []
    async with ConnectionManager() as manager:

        @manager.on_state_change
        async def slow(socket: object, old: object, new: ConnectionState) -> None:
            await anyio.sleep(0.005)
            seen.append(("slow", new))

        @manager.on_state_change
        def fast(socket: object, old: object, new: ConnectionState) -> None:
            seen.append(("fast", new))

        socket = MemoryTransport()
        manager.register(socket, "alice")
        manager.set_connection_state(socket, I)
        await eventually(lambda: len(seen) == 2)
        assert seen == [("fast", C), ("fast", I)]  # not held back by the slow one
        await eventually(lambda: len(seen) == 4, steps=100_000)
        assert [new for who, new in seen if who == "slow"] == [C, I]


async def test_a_callback_far_behind_drops_its_oldest_changes_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stuck: list[ConnectionState] = []
    release = anyio.Event()
    backlog = 10_000
    async with ConnectionManager() as manager:

        @manager.on_state_change
        async def blocked(change: StateChange) -> None:
            stuck.append(change.new)
            if len(stuck) == 1:
                await release.wait()

        others: list[ConnectionState] = []
        manager.on_state_change(lambda change: others.append(change.new))
        socket = MemoryTransport()
        with caplog.at_level(logging.ERROR, logger="wsfleet"):
            manager.register(socket, "alice")
            await eventually(lambda: stuck == [C])
            changes = backlog + 6  # the lane holds `backlog`; 6 are dropped
            for i in range(changes):
                manager.set_connection_state(socket, I if i % 2 == 0 else C)
                if i % 100 == 99:
                    await checkpoint()  # the well-behaved lane keeps up
            assert manager.stats().drops == {"callback backlog": 6}
            release.set()
            await eventually(
                lambda: len(stuck) == 1 + backlog and len(others) == 1 + changes, steps=100_000
            )
        # The well-behaved callback missed nothing; the blocked one lost its 6 oldest.
        assert stuck[1:] == others[1 + 6 :]
        assert any("behind" in r.getMessage() for r in caplog.records if r.name == "wsfleet")


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_a_raising_callback_is_logged_counted_and_isolated(
    flavour: str, caplog: pytest.LogCaptureFixture
) -> None:
    seen: Seen = []
    async with ConnectionManager() as manager:
        if flavour == "sync":

            def broken(socket: object, old: object, new: ConnectionState) -> None:
                raise RuntimeError(f"broken on {new.name}")

            manager.on_state_change(broken)
        else:

            async def broken_async(socket: object, old: object, new: ConnectionState) -> None:
                await checkpoint()
                raise RuntimeError(f"broken on {new.name}")

            manager.on_state_change(broken_async)
        manager.on_state_change(lambda socket, old, new: seen.append((socket, old, new)))

        socket = MemoryTransport()
        with caplog.at_level(logging.ERROR, logger="wsfleet"):
            manager.register(socket, "alice")
            manager.set_connection_state(socket, I)
            await eventually(lambda: len(seen) == 2 and manager.stats().callback_errors == 2)
        # The callback after the broken one ran for both changes; the state is untouched.
        assert seen == [(socket, None, C), (socket, C, I)]
        assert manager.get_connection_state(socket) is I
        assert manager.stats().callback_errors == 2
        assert manager.stats().callback_timeouts == 0
        errors = [r for r in caplog.records if r.name == "wsfleet" and r.levelno == logging.ERROR]
        assert len(errors) == 2
        assert all(r.exc_info is not None for r in errors)
        assert [str(r.exc_info[1]) for r in errors if r.exc_info] == [
            "broken on CONNECTED",
            "broken on IDLE",
        ]
        # The dispatcher survived: later changes still reach the callbacks.
        manager.unregister(socket)
        await eventually(lambda: len(seen) == 3 and manager.stats().callback_errors == 3)


async def test_a_hanging_async_callback_is_abandoned_after_the_timeout_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[ConnectionState] = []
    hung: list[ConnectionState] = []
    async with ConnectionManager(callback_timeout=0.05) as manager:

        @manager.on_state_change
        async def hang(socket: object, old: object, new: ConnectionState) -> None:
            if new is I:
                hung.append(new)
                await anyio.sleep_forever()

        manager.on_state_change(lambda socket, old, new: seen.append(new))
        socket = MemoryTransport()
        with caplog.at_level(logging.ERROR, logger="wsfleet"):
            manager.register(socket, "alice")
            manager.set_connection_state(socket, I)
            manager.set_connection_state(socket, C)
            started = anyio.current_time()
            with anyio.fail_after(5):
                while len(seen) < 3:
                    await anyio.sleep(0.005)
            waited = anyio.current_time() - started
        assert hung == [I]
        assert seen == [C, I, C]
        assert waited < 0.05  # the others did not wait for it
        with anyio.fail_after(5):  # the hanging one is abandoned after the timeout
            while manager.stats().callback_timeouts < 1:
                await anyio.sleep(0.005)
        assert manager.stats().callback_timeouts == 1
        assert manager.stats().callback_errors == 0
        assert any("abandoned" in r.getMessage() for r in caplog.records if r.name == "wsfleet")
        assert manager.get_connection_state(socket) is C


async def test_callbacks_taking_the_record_or_three_arguments_can_be_mixed() -> None:
    records: list[StateChange] = []
    classic: Seen = []

    class Listener:
        def on_change(self, socket: object, old: object, new: ConnectionState) -> None:
            classic.append((socket, old, new))  # a bound method: self does not count

        async def on_record(self, change: StateChange) -> None:
            records.append(change)

    listener = Listener()
    async with ConnectionManager() as manager:
        manager.on_state_change(listener.on_change)
        manager.on_state_change(listener.on_record)
        socket = MemoryTransport()
        conn = manager.register(socket, "alice")
        await eventually(lambda: len(records) == 1 and len(classic) == 1)
    assert classic[0] == (socket, None, C)
    assert records[0].connection is conn
    assert records[0].new is C
    assert records[0].old is None


async def test_callbacks_added_later_see_only_later_changes() -> None:
    seen: Seen = []
    async with ConnectionManager() as manager:
        socket = MemoryTransport()
        manager.register(socket, "alice")
        await checkpoint()
        manager.on_state_change(lambda s, old, new: seen.append((s, old, new)))
        manager.set_connection_state(socket, I)
        await eventually(lambda: len(seen) == 1)
    assert seen[0] == (socket, C, I)


async def test_the_last_changes_callbacks_run_before_the_manager_exits() -> None:
    seen: Seen = []
    sockets = [MemoryTransport(f"s{i}") for i in range(3)]
    async with ConnectionManager() as manager:

        @manager.on_state_change
        async def record(socket: object, old: object, new: ConnectionState) -> None:
            await checkpoint()
            seen.append((socket, old, new))

        for i, socket in enumerate(sockets):
            manager.register(socket, f"user{i}")
    assert [(s, old, new) for s, old, new in seen if new is D] == [(s, C, D) for s in sockets]


async def test_removing_a_callback_inside_a_callback_stops_it_for_later_changes() -> None:
    seen: list[ConnectionState] = []
    async with ConnectionManager() as manager:

        def once(socket: object, old: object, new: ConnectionState) -> None:
            seen.append(new)
            handle.remove()

        handle = manager.on_state_change(once)
        socket = MemoryTransport()
        manager.register(socket, "alice")
        manager.set_connection_state(socket, I)
        manager.set_connection_state(socket, C)
        await eventually(lambda: len(seen) == 1)
        await anyio.sleep(0.01)
    assert seen == [C]
