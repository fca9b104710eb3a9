"""Groups that keep history in memory: positions, and recovery with no gap and no duplicate.

Each socket here is sent ``"<position>|<message>"`` (the ``frame`` hook), as a client that
keeps its last position would read it.
"""

from __future__ import annotations

import anyio
import pytest

from support import eventually
from wsfleet import (
    ConnectionManager,
    HistoryPolicy,
    InvalidArgument,
    Position,
    RecoveryImpossible,
    WrongType,
)
from wsfleet.testing import MemoryTransport
from wsfleet.transport import Message

pytestmark = pytest.mark.anyio


def tag(message: Message, position: Position) -> str:
    return f"{position}|{message!s}"


def texts(socket: MemoryTransport) -> list[str]:
    return [str(m).split("|", 1)[1] for m in socket.received]


def last(socket: MemoryTransport) -> Position:
    return Position.parse(str(socket.received[-1]).split("|", 1)[0])


def manager(**options: object) -> ConnectionManager:
    return ConnectionManager(heartbeat=None, frame=tag, **options)  # type: ignore[arg-type]


async def test_each_message_of_a_kept_group_gets_the_next_offset_of_one_epoch() -> None:
    async with manager() as m:
        m.keep_history("room", HistoryPolicy(size=10))
        alice = MemoryTransport("alice")
        m.register(alice, "alice")
        m.add_to_group("alice", "room")
        deliveries = [await m.send_to_group("room", f"m{n}") for n in range(3)]
        assert [d.position.offset for d in deliveries if d.position] == [1, 2, 3]
        assert len({d.position.epoch for d in deliveries if d.position}) == 1
        assert [int(d) for d in deliveries] == [1, 1, 1]
        assert "position=" in repr(deliveries[0])
        plain = await m.send_to_group("lobby", "hi")
        assert plain.position is None
        assert repr(plain) == "Delivery(local=0, published=False)"
        await eventually(lambda: len(alice.received) == 3)
        assert alice.received[0] == f"{deliveries[0].position}|m0"


async def test_the_managers_default_policy_covers_every_group_unless_one_opts_out() -> None:
    async with manager(history=HistoryPolicy(size=5)) as m:
        assert (await m.send_to_group("any", "x")).position is not None
        m.keep_history("quiet", None)
        assert (await m.send_to_group("quiet", "x")).position is None


async def test_a_client_that_dropped_recovers_what_it_missed_then_the_live_ones() -> None:
    async with manager() as m:
        m.keep_history("room", HistoryPolicy(size=100))
        first = MemoryTransport("first")
        m.register(first, "alice")
        m.add_to_group("alice", "room")
        for n in range(3):
            await m.send_to_group("room", f"m{n}")
        await eventually(lambda: len(first.received) == 3)
        seen = last(first)
        m.unregister(first)  # the connection drops; the room goes on
        for n in range(3, 6):
            await m.send_to_group("room", f"m{n}")
        second = MemoryTransport("second")
        m.register(second, "alice")  # back, and in the room again
        m.add_to_group("alice", "room")
        assert await m.recover(second, "room", since=seen) == 3
        await m.send_to_group("room", "m6")
        await eventually(lambda: len(second.received) == 4)
        assert texts(second) == ["m3", "m4", "m5", "m6"]
        assert m.stats().history["replayed"] == 3


async def test_a_client_that_missed_nothing_is_replayed_nothing() -> None:
    async with manager() as m:
        m.keep_history("room", HistoryPolicy())
        first = MemoryTransport()
        m.register(first, "alice")
        m.add_to_group("alice", "room")
        await m.send_to_group("room", "m0")
        await eventually(lambda: len(first.received) == 1)
        second = MemoryTransport()
        m.register(second, "bob")
        m.add_to_group("bob", "room")
        assert await m.recover(second, "room", since=str(last(first))) == 0
        assert second.received == []


async def test_recovery_after_live_messages_already_sent_is_refused_and_sends_nothing() -> None:
    async with manager() as m:
        m.keep_history("room", HistoryPolicy())
        alice = MemoryTransport()
        m.register(alice, "alice")
        m.add_to_group("alice", "room")
        seen = (await m.send_to_group("room", "m0")).position
        assert seen is not None
        m.unregister(alice)
        await m.send_to_group("room", "m1")
        back = MemoryTransport()
        m.register(back, "alice")
        m.add_to_group("alice", "room")
        await m.send_to_group("room", "m2")  # sent live before the client asked to recover
        with pytest.raises(RecoveryImpossible, match="already sent"):
            await m.recover(back, "room", since=seen)
        await eventually(lambda: len(back.received) == 1)
        assert texts(back) == ["m2"]
        assert m.stats().history["refused"] == 1


async def test_a_position_that_fell_out_or_of_another_epoch_cannot_be_recovered() -> None:
    async with manager() as m:
        m.keep_history("room", HistoryPolicy(size=2))
        first = (await m.send_to_group("room", "m0")).position
        for n in range(1, 4):
            await m.send_to_group("room", f"m{n}")
        socket = MemoryTransport()
        m.register(socket, "alice")
        m.add_to_group("alice", "room")
        assert first is not None
        with pytest.raises(RecoveryImpossible, match="fell out"):
            await m.recover(socket, "room", since=first)
        with pytest.raises(RecoveryImpossible, match="was lost"):
            await m.recover(socket, "room", since=Position("another", 3))
        with pytest.raises(RecoveryImpossible, match="ahead"):
            await m.recover(socket, "room", since=Position(first.epoch, 9))
        assert await m.recover(socket, "room", since=Position(first.epoch, 2)) == 2
        await eventually(lambda: len(socket.received) == 2)
        assert texts(socket) == ["m2", "m3"]


async def test_a_restarted_node_has_a_new_epoch() -> None:
    async with manager(history=HistoryPolicy()) as m:
        before = (await m.send_to_group("room", "x")).position
    async with manager(history=HistoryPolicy()) as m:
        after = (await m.send_to_group("room", "x")).position
        socket = MemoryTransport()
        m.register(socket, "alice")
        assert before is not None
        assert after is not None
        assert (before.offset, after.offset) == (1, 1)
        assert before.epoch != after.epoch
        with pytest.raises(RecoveryImpossible):
            await m.recover(socket, "room", since=before)


async def test_bad_recovery_requests_are_refused_changing_nothing() -> None:
    async with manager() as m:
        socket = MemoryTransport()
        m.register(socket, "alice")
        with pytest.raises(InvalidArgument, match="keeps no history"):
            await m.recover(socket, "room", since="e:1")
        m.keep_history("room", HistoryPolicy())
        # What a client sends back is its own mistake: refused as a recovery, which the
        # handler the docs show catches, never an error that could end a trio server.
        for text in ("not a position", "abc:-1", "e:3 ", "e:+3", ":3", "a:b:3", "", "x" * 999):
            with pytest.raises(RecoveryImpossible, match="not a position"):
                await m.recover(socket, "room", since=text)
        with pytest.raises(WrongType):
            m.keep_history("room", {"size": 3})  # type: ignore[arg-type]
        with pytest.raises(WrongType):
            ConnectionManager(frame="json")  # type: ignore[arg-type]
        with pytest.raises(WrongType):
            ConnectionManager(history=3)  # type: ignore[arg-type]
        assert socket.received == []


async def test_history_expires_after_its_ttl() -> None:
    async with manager() as m:
        m.keep_history("room", HistoryPolicy(ttl=0.05))
        first = (await m.send_to_group("room", "m0")).position
        await m.send_to_group("room", "m1")
        await anyio.sleep(0.06)
        socket = MemoryTransport()
        m.register(socket, "alice")
        m.add_to_group("alice", "room")
        assert first is not None
        with pytest.raises(RecoveryImpossible, match="lost"):
            await m.recover(socket, "room", since=first)
        again = (await m.send_to_group("room", "m2")).position
        assert again is not None
        assert again.epoch != first.epoch
        assert again.offset == 1


async def test_a_socket_recovers_only_a_group_it_is_in() -> None:
    """The client names the group it recovers: a socket outside it reads nothing of it,
    and the refusal names no epoch (a client could use it to forge a position)."""
    async with manager(history=HistoryPolicy()) as m:
        sent = (await m.send_to_group("secret", "m0")).position
        assert sent is not None
        socket = MemoryTransport()
        m.register(socket, "mallory")
        with pytest.raises(RecoveryImpossible, match="not in 'secret'") as refused:
            await m.recover(socket, "secret", since=Position(sent.epoch, 0))
        assert sent.epoch not in refused.value.reason
        m.add_to_group("mallory", "secret")
        with pytest.raises(RecoveryImpossible) as other:
            await m.recover(socket, "secret", since="guess:0")
        assert sent.epoch not in other.value.reason
        assert socket.received == []
