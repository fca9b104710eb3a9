"""Design problems the refactor fixed, each pinned so that it stays fixed.

(a) A replaced transport is detached: its late reports reach nobody, and it is closed.
(b) A connection that is already down is not "evicted" again when its buffer overflows.
(c) Only the newest retry request of a connection is effective.
(d) ``set_reconnector`` refuses what cannot be called, changing nothing.
(e) A resumed session is known by its new socket only.
"""

from __future__ import annotations

import anyio
import pytest

from support import LATE, MICROSECOND, C, D, E, R, pairs, wait_for
from wsfleet import (
    Connection,
    ConnectionManager,
    ConnectionState,
    OverflowPolicy,
    RetryPolicy,
    Session,
    StateChange,
    Transport,
    TransportClosed,
    UnknownSocket,
    WrongType,
)
from wsfleet.testing import MemoryTransport

pytestmark = pytest.mark.anyio


def policy(**kwargs: float) -> RetryPolicy:
    settings: dict[str, float] = {"max_attempts": 5, "base_delay": 0.02, "jitter": 0.0}
    settings.update(kwargs)
    return RetryPolicy(**settings)  # type: ignore[arg-type]


class Reporting(MemoryTransport):
    """Reports what its socket does the way adapters do: through ``self.connection``."""

    closes = 0

    def lost(self, error: str) -> None:
        if self.connection is not None:
            self.connection.failed(error)

    def closed_by_peer(self, code: int) -> None:
        if self.connection is not None:
            self.connection.closed(code, "late")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closes += 1
        await super().close(code, reason)


# (a) ---------------------------------------------------------------------------------------


async def test_a_replaced_transport_is_detached_and_closed() -> None:
    changes: list[StateChange] = []
    old, new = Reporting("old"), Reporting("new")

    async def reconnect(conn: Connection) -> Transport:
        return new

    async with ConnectionManager(retry_policy=policy()) as manager:
        manager.on_state_change(changes.append)
        conn = manager.register(old, "alice")
        manager.set_reconnector(old, reconnect)
        old.lost("connection reset")
        await wait_for(lambda: conn.state is C and conn.transport is new)
        assert old.connection is None
        assert new.connection is conn
        await wait_for(lambda: old.closes == 1)
        assert (old.close_code, old.close_reason) == (1000, "replaced")

        # The old socket's late reports go nowhere.
        old.lost("late failure")
        old.closed_by_peer(1006)
        old.closed_by_peer(1000)
        await anyio.sleep(0.1)
        assert conn.state is C
        assert conn.transport is new
        await manager.send_to_one("alice", "still fine")
        await wait_for(lambda: new.received == ["still fine"])
        assert new.close_code is None
        assert old.closes == 1
        await wait_for(lambda: len(changes) == 4)
    assert pairs(changes) == [(None, C), (C, E), (E, R), (R, C), (C, D)]


# (b) ---------------------------------------------------------------------------------------


async def test_a_full_buffer_of_a_connection_that_is_down_does_not_evict_it_again() -> None:
    changes: list[StateChange] = []
    overflow = OverflowPolicy(max_messages=2, action="disconnect")
    # A long first delay: the connection stays in ERROR, buffering, for the whole test.
    async with ConnectionManager(
        retry_policy=policy(base_delay=60.0, max_delay=60.0), overflow=overflow
    ) as m:
        m.on_state_change(changes.append)
        socket = Reporting("slow", stalled=True)
        conn = m.register(socket, "alice")
        assert await m.send_to_one("alice", "m0") == 1
        await wait_for(lambda: conn._out.writing and conn.queued == 0)  # stuck in a stalled write
        assert [await m.send_to_one("alice", f"m{i}") for i in (1, 2)] == [1, 1]
        # Two wait behind the stalled write: the next one does not fit (it is counted for
        # alice all the same: dropped with her queue).
        assert await m.send_to_one("alice", "too many") == 1
        assert conn.state is E  # evicted: a slow consumer
        await wait_for(lambda: socket.closes == 1)
        assert socket.close_code == 1008

        # Down, waiting for its retry: the buffer fills again, and overflows.
        assert [await m.send_to_one("alice", f"down {i}") for i in range(2)] == [1, 1]
        # Over the bound: each counted, as a drop.
        assert [await m.send_to_one("alice", f"extra {i}") for i in range(3)] == [1, 1, 1]
        await anyio.sleep(0.05)
        assert conn.state is E
        assert conn.queued == 2
        assert socket.closes == 1  # not closed twice
        drops = m.stats().drops
        assert drops["overflow while down"] == 3
        assert drops["slow consumer"] == 1 + 2  # the one that did not fit, and the queue
        await wait_for(lambda: len(changes) == 2)
        assert pairs(changes) == [(None, C), (C, E)]  # one eviction, no second ERROR


# (c) ---------------------------------------------------------------------------------------


async def test_only_the_newest_retry_request_is_effective() -> None:
    changes: list[StateChange] = []
    retry = policy(base_delay=0.2, max_delay=5.0)  # 0.2 s, then 0.4 s ...
    async with ConnectionManager(retry_policy=retry) as manager:
        manager.on_state_change(changes.append)
        socket = MemoryTransport()
        conn = manager.register(socket, "alice")
        manager.set_connection_state(socket, E, "first")  # a retry in 0.2 s
        manager.set_connection_state(socket, R, "by hand")  # attempt 1
        manager.set_connection_state(socket, E, "second")  # a retry in 0.4 s replaces it
        assert conn.attempts == 1
        await anyio.sleep(0.3)  # past the first request's time
        assert conn.state is E
        assert conn.attempts == 1  # the superseded request used up nothing
        await wait_for(lambda: conn.attempts == 2)
        await wait_for(lambda: len(changes) >= 6)

    assert pairs(changes)[:6] == [(None, C), (C, E), (E, R), (R, E), (E, R), (R, E)]
    second_error, retry_change = changes[3], changes[4]
    assert retry_change.reason == "retrying"
    waited = (retry_change.at - second_error.at).total_seconds() + MICROSECOND
    assert 0.4 <= waited <= 0.4 + LATE


# (d) ---------------------------------------------------------------------------------------


async def test_set_reconnector_refuses_what_cannot_be_called_and_changes_nothing() -> None:
    async def reconnect(conn: Connection) -> Transport:  # pragma: no cover - never called
        return MemoryTransport()

    async with ConnectionManager(retry_policy=policy()) as manager:
        socket = MemoryTransport()
        conn = manager.register(socket, "alice")
        manager.set_reconnector(socket, reconnect)
        with pytest.raises(WrongType) as refused:
            manager.set_reconnector(socket, 42)  # type: ignore[arg-type]
        assert isinstance(refused.value, TypeError)
        assert conn._beat.reconnector is reconnect
        assert conn.state is C
        with pytest.raises(UnknownSocket):
            manager.set_reconnector(MemoryTransport("stranger"), reconnect)
        manager.set_reconnector(socket, None)
        assert conn._beat.reconnector is None


# (e) ---------------------------------------------------------------------------------------


class Peer(MemoryTransport):
    """A ``MemoryTransport`` a session can iterate; ``vanish()`` loses it (1006)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._gone = anyio.Event()

    def vanish(self) -> None:
        self._gone.set()

    async def receive(self) -> str:
        await self._gone.wait()
        raise TransportClosed(1006, "connection lost")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self._gone.set()
        await super().close(code, reason)


async def test_state_queries_follow_a_resumed_session_to_its_new_socket() -> None:
    async with ConnectionManager(retry_policy=policy(base_delay=5.0)) as manager:
        old, new = Peer("old"), Peer("new")
        session: Session
        async with manager.session(old, "alice") as session:
            old.vanish()
            async for _ in session:
                raise AssertionError("the peer sends nothing")  # pragma: no cover
        assert manager.get_connection_state(old) is R  # held for the client to resume
        assert manager.connections_in_state(R) == [old]

        async with manager.session(new, "alice", resume=session.resume_token) as resumed:
            assert resumed.resumed
            assert manager.get_connection_state(new) is C
            assert manager.get_connection_state(old) is None
            assert manager.connections_in_state(C) == [new]
            for state in ConnectionState:
                assert old not in manager.connections_in_state(state)
            assert manager.connection(new) is session.connection
            with pytest.raises(UnknownSocket):
                manager.connection(old)
            assert manager.sockets_of("alice") == [new]
            assert manager.identifier_of(old) is None
            assert manager.get_state_timestamp(old) is None
            assert manager.get_state_timestamp(new) == session.connection.state_since
            assert not manager.unregister(old)
            assert manager.count() == 1
        assert manager.count() == 0
        assert manager.connections_in_state(D) == []
