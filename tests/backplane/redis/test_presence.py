"""Presence over a real ``redis-server``, three managers in one process (the SIGKILLed
node in its own process is in ``test_processes.py``).

Metadata is kept in each node's record (``ns:node:<id>``: the groups, then one object), so
a node that starts later learns it; a record of the format before metadata (a plain list)
still reads; metadata no node could have written is refused, counted, never a crash.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import anyio
import coredis
import pytest

from redis_server import UNCLOSED, RedisServer
from support import backplane_stat, wait_until
from wsfleet import ConnectionManager, PresenceEvent
from wsfleet.presence import MAX_META_BYTES
from wsfleet.testing import MemoryTransport

from .test_backplane import HEARTBEAT, NAMESPACE, fleet

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings(f"ignore:{UNCLOSED}:ResourceWarning"),
]


async def presence_is(manager: ConnectionManager, group: str, expected: dict[str, Any]) -> None:
    """Wait (bounded) until ``manager.presence(group)`` answers ``expected``."""
    with anyio.move_on_after(10):
        while await manager.presence(group) != expected:
            await anyio.sleep(0.005)
    assert await manager.presence(group) == expected


async def test_three_nodes_observe_each_change_once_with_its_metadata(redis: RedisServer) -> None:
    async with fleet(redis.url, "n1", "n2", "n3") as managers:
        n1, n2, n3 = managers
        seen: dict[str, list[tuple[str, str, str | None, str]]] = defaultdict(list)
        for manager in managers:

            def record(event: PresenceEvent, name: str = str(manager.node_id)) -> None:
                seen[name].append((event.kind, event.identifier, event.group, event.node))

            manager.on_presence(record)
            seen[str(manager.node_id)] = []
        alice = MemoryTransport("alice@n1")
        n1.register(alice, "alice", meta={"name": "Alice"})
        n1.add_to_group("alice", "room")
        await wait_until(lambda: all(len(seen[n]) == 2 for n in seen), "online everywhere")
        n2.register(MemoryTransport("alice@n2"), "alice")  # on a second node: no event
        await wait_until(
            lambda: all(m.nodes_of("alice") == {"n1", "n2"} for m in managers), "on both"
        )
        for manager in managers:
            await presence_is(manager, "room", {"alice": {"name": "Alice"}})
        n1.unregister(alice)
        await wait_until(lambda: all(m.nodes_of("alice") == {"n2"} for m in managers), "moved")
        n2.clear()
        await wait_until(lambda: all(len(seen[n]) == 4 for n in seen), "offline everywhere")
        await anyio.sleep(5 * HEARTBEAT)  # room for a repeated event to show up
        for name in ("n1", "n2", "n3"):
            assert seen[name] == [
                ("online", "alice", None, "n1"),
                ("join", "alice", "room", "n1"),
                ("leave", "alice", "room", "n2"),
                ("offline", "alice", None, "n2"),
            ], name
        assert not n3.online("alice")


async def test_a_node_that_starts_later_reads_the_metadata_from_redis(redis: RedisServer) -> None:
    async with fleet(redis.url, "n1") as (n1,):
        n1.register(MemoryTransport(), "alice", meta={"name": "Alice", "n": 1})
        n1.add_to_group("alice", "room")
        async with coredis.Redis.from_url(redis.url) as client:
            key = f"{NAMESPACE}:node:n1"
            record = json.dumps(["room", {"name": "Alice", "n": 1}]).encode()
            with anyio.fail_after(5):
                while await client.hget(key, "alice") != record:
                    await anyio.sleep(0.01)
            # The format before metadata: a plain list of groups, as an older node writes.
            await client.hset(key, {"bob": json.dumps(["room"])})
        async with fleet(redis.url, "n2") as (n2,):
            await presence_is(n2, "room", {"alice": {"name": "Alice", "n": 1}, "bob": {}})


async def test_metadata_in_redis_no_node_wrote_is_refused_and_counted(redis: RedisServer) -> None:
    async with fleet(redis.url, "n1") as (n1,):
        n1.register(MemoryTransport(), "alice", meta={"name": "Alice"})
        n1.register(MemoryTransport(), "bob")
        n1.add_to_group("alice", "room")
        n1.add_to_group("bob", "room")
        async with coredis.Redis.from_url(redis.url) as client:
            key = f"{NAMESPACE}:node:n1"
            with anyio.fail_after(5):
                while await client.hget(key, "bob") != b'["room"]':
                    await anyio.sleep(0.01)
            await anyio.sleep(5 * HEARTBEAT)  # n1 has written what it had to write
            big = {"x": "y" * MAX_META_BYTES}
            await client.hset(key, {"bob": json.dumps(["room", big])})
        async with fleet(redis.url, "n2") as (n2,):
            await presence_is(n2, "room", {"alice": {"name": "Alice"}, "bob": {}})
            assert backplane_stat(n2, "refused: bad meta") == 1
            assert n2.stats().backplane_state == "CONNECTED"
