"""Groups' history in a real ``redis-server``, shared by two nodes: a client that lost node a
recovers on node b, and a flushed Redis (a new epoch) makes recovery impossible.

Each node is a manager with its own ``RedisHistory`` (and no backplane: the history's own
channel carries a kept group's messages to every node); sockets are ``MemoryTransport``s
sent ``"<position>|<message>"``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import coredis
import pytest
from coredis.tokens import PureToken

from redis_server import UNCLOSED, RedisServer
from support import wait_until
from wsfleet import ConnectionManager, HistoryPolicy, Position, RecoveryImpossible
from wsfleet.adapters.redis_history import RedisHistory
from wsfleet.testing import MemoryTransport
from wsfleet.transport import Message

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings(f"ignore:{UNCLOSED}:ResourceWarning")]


def tag(message: Message, position: Position) -> str:
    return f"{position}|{message!s}"


def texts(socket: MemoryTransport) -> list[str]:
    return [str(m).split("|", 1)[1] for m in socket.received]


@asynccontextmanager
async def fleet(
    redis: RedisServer, size: int = 100, delays: tuple[float, float] = (0.5, 0.5)
) -> AsyncIterator[list[ConnectionManager]]:
    """Two nodes; ``delays``: how long each waits before listening again after losing its
    subscription."""
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                ConnectionManager(
                    heartbeat=None,
                    frame=tag,
                    history=HistoryPolicy(size=size),
                    history_store=RedisHistory(redis.url, reconnect_delay=delay),
                )
            )
            for delay in delays
        ]


async def test_a_client_that_lost_node_a_recovers_on_node_b(redis: RedisServer) -> None:
    async with fleet(redis) as (a, b):
        on_a, watcher = MemoryTransport("on a"), MemoryTransport("watcher on b")
        a.register(on_a, "alice")
        a.add_to_group("alice", "room")
        b.register(watcher, "bob")
        b.add_to_group("bob", "room")
        sent = [await a.send_to_group("room", "m0"), await b.send_to_group("room", b"m1")]
        assert [d.position.offset for d in sent if d.position] == [1, 2]
        assert sent[0].published
        assert int(sent[0]) == 1
        await wait_until(lambda: len(on_a.received) == 2, "alice has m0 and m1")
        seen = str(on_a.received[-1]).split("|", 1)[0]
        a.unregister(on_a)  # node a is lost to alice
        for n in range(2, 6):
            await (a if n % 2 else b).send_to_group("room", f"m{n}")
        on_b = MemoryTransport("on b")
        b.register(on_b, "alice")
        b.add_to_group("alice", "room")
        assert await b.recover(on_b, "room", since=seen) == 4
        await a.send_to_group("room", "m6")
        await wait_until(lambda: len(on_b.received) == 5, "alice has everything on b")
        assert texts(on_b) == ["m2", "m3", "m4", "m5", "m6"]
        await wait_until(lambda: len(watcher.received) == 7, "bob has everything once")
        assert texts(watcher) == ["m0", "b'm1'", "m2", "m3", "m4", "m5", "m6"]


async def test_a_flushed_redis_starts_a_new_epoch_and_old_positions_cannot_recover(
    redis: RedisServer,
) -> None:
    async with fleet(redis) as (a, b):
        before = (await a.send_to_group("room", "m0")).position
        async with coredis.Redis.from_url(redis.url) as client:
            await client.flushall()
        after = (await a.send_to_group("room", "m1")).position
        assert before is not None
        assert after is not None
        assert before.epoch != after.epoch
        assert after.offset == 1
        socket = MemoryTransport()
        b.register(socket, "alice")
        b.add_to_group("alice", "room")
        with pytest.raises(RecoveryImpossible, match="was lost"):
            await b.recover(socket, "room", since=before)
        assert socket.received == []
        assert await b.recover(socket, "room", since=Position(after.epoch, 0)) == 1
        await wait_until(lambda: texts(socket) == ["m1"], "the new epoch's message")


async def test_messages_past_the_streams_bound_fall_out(redis: RedisServer) -> None:
    async with fleet(redis, size=1) as (a, b):
        first = (await a.send_to_group("room", "m0")).position
        for n in range(1, 300):  # MAXLEN ~ trims whole nodes of the stream, 100 entries each
            await a.send_to_group("room", f"m{n}")
        socket = MemoryTransport()
        b.register(socket, "alice")
        b.add_to_group("alice", "room")
        assert first is not None
        with pytest.raises(RecoveryImpossible, match="fell out"):
            await b.recover(socket, "room", since=first)


async def test_a_node_that_missed_announcements_fills_the_gap_from_the_stream(
    redis: RedisServer,
) -> None:
    async with (
        fleet(redis, delays=(0.05, 1.0)) as (a, b),
        coredis.Redis.from_url(redis.url) as client,
    ):
        watcher = MemoryTransport("watcher on b")
        b.register(watcher, "bob")
        b.add_to_group("bob", "room")
        await a.send_to_group("room", "m0")
        await wait_until(lambda: texts(watcher) == ["m0"], "bob has m0")
        await client.client_kill(type_=PureToken.PUBSUB)  # both nodes stop hearing
        await a.send_to_group("room", "m1")  # node b hears neither
        await a.send_to_group("room", "m2")

        async def listeners() -> int:
            counts = await client.pubsub_numsub("wsfleet:history")
            return int(next(iter(counts.values())))

        with anyio.fail_after(5):
            while await listeners() < 2:
                await anyio.sleep(0.01)
        await a.send_to_group("room", "m3")  # node b hears it, after a gap
        await wait_until(lambda: len(watcher.received) == 4, "bob has every message")
        assert texts(watcher) == ["m0", "m1", "m2", "m3"]
        assert b.stats().history["filled"] == 2
        assert b.stats().history["lost"] == 0


async def test_forged_announcements_reach_no_socket_and_stop_no_node(redis: RedisServer) -> None:
    """Whoever can publish on the history channel can announce anything. Announcements that
    are not well formed, or that claim an offset nobody appended (far ahead of the group,
    which would make every genuine message look delivered already), are dropped and
    counted; every node goes on serving the group."""
    import json

    async with (
        fleet(redis) as (a, b),
        coredis.Redis.from_url(redis.url, decode_responses=True) as client,
    ):
        watcher = MemoryTransport("watcher on b")
        b.register(watcher, "bob")
        b.add_to_group("bob", "room")
        first = (await a.send_to_group("room", "m0")).position
        assert first is not None
        await wait_until(lambda: texts(watcher) == ["m0"], "b heard m0")
        real = {"g": "room", "e": first.epoch, "o": 2, "m": "forged", "k": "t", "x": "[]", "n": ""}
        forged = [
            real | {"g": ["room"]},
            real | {"g": 7},
            real | {"e": "a:b"},
            real | {"e": "x" * 200},
            real | {"o": -1},
            real | {"x": "5"},
            real | {"n": [1]},
            real | {"m": {"a": 1}},
            real | {"o": 10**9},  # far ahead, with the group's real epoch
            real | {"o": first.offset + 5},  # a gap the store does not have either
        ]
        for note in forged:
            await client.publish("wsfleet:history", json.dumps(note))
        await client.publish("wsfleet:history", "not json at all")
        second = (await a.send_to_group("room", "m1")).position
        assert second is not None
        assert second.offset == first.offset + 1
        await wait_until(lambda: texts(watcher) == ["m0", "m1"], "b goes on delivering")
        await wait_until(lambda: b.stats().history["malformed"] >= 8, "b counted the forged ones")
        assert "forged" not in " ".join(texts(watcher))
        third = (await b.send_to_group("room", "m2")).position  # and b still sends
        assert third is not None
        await wait_until(lambda: texts(watcher) == ["m0", "m1", "m2"], "b sends too")
