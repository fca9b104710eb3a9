"""Several managers, one fleet, on a real Redis Cluster, on asyncio and on trio.

Each manager is its own node (its own ``RedisBackplane(cluster=True)``), every test its own
namespace, so its own slot: the tests land on different shards. What is checked:

* broadcast, one-to-one, to-many and group messages reach every target on every node once,
  in the sender's order, through sharded pub/sub: the channel has one subscriber per node
  on its shard (``PUBSUB SHARDNUMSUB``) and none as a classic channel;
* membership and presence (the nodes of each identifier) agree on every node, and the
  keys behind them share the namespace's slot (the transactions that rewrite a node's
  record need it);
* a node started from any one cluster node, even a replica, finds the others.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest

from redis_server import UNCLOSED, RedisCluster
from support import backplane_drops, backplane_stat, connected, wait_until
from wsfleet import ConnectionManager, Delivery
from wsfleet.adapters.redis import RedisBackplane
from wsfleet.testing import MemoryTransport
from wsfleet.testing.redis_cluster import command

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings(f"ignore:{UNCLOSED}:ResourceWarning"),
]

HEARTBEAT = 0.2
#: Long enough that a busy machine (six Redis processes besides the test) does not let a
#: lease lapse between two heartbeats: nothing here waits for one to lapse.
TTL = 2.0


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    """A namespace of the test's own (so a slot of its own, maybe another shard)."""
    return f"wsfleet-{request.node.name}"


@asynccontextmanager
async def fleet(
    url: str, namespace: str, *names: str, **options: Any
) -> AsyncIterator[list[ConnectionManager]]:
    """One manager per name, each its own node on the cluster, all connected."""
    settings = {"heartbeat_interval": HEARTBEAT, "node_ttl": TTL, **options}
    async with AsyncExitStack() as stack:
        managers = []
        for name in names:
            backplane = RedisBackplane(
                url, cluster=True, namespace=namespace, node_id=name, **settings
            )
            managers.append(await stack.enter_async_context(ConnectionManager(backplane=backplane)))
        await wait_until(lambda: connected(*managers), "every node connected")
        yield managers


async def test_every_fan_out_reaches_every_target_on_every_node_once_in_order(
    redis_cluster: RedisCluster, namespace: str
) -> None:
    async with fleet(redis_cluster.url, namespace, "n1", "n2", "n3") as (n1, n2, n3):
        nodes = {"n1": n1, "n2": n2, "n3": n3}
        # The bus is a shard channel on the namespace's shard, one subscriber per node.
        master = redis_cluster.master_for(f"{{{namespace}}}")
        channel = f"{{{namespace}}}:bus"
        assert command(master.port, "PUBSUB", "SHARDNUMSUB", channel) == [channel, 3]
        assert command(master.port, "PUBSUB", "NUMSUB", channel) == [channel, 0]

        where = {
            ("n1", "alice"): MemoryTransport("alice@n1"),
            ("n1", "carol"): MemoryTransport("carol@n1"),
            ("n2", "bob"): MemoryTransport("bob@n2"),
            ("n2", "carol"): MemoryTransport("carol@n2"),
            ("n3", "dave"): MemoryTransport("dave@n3"),
        }
        for (node, identifier), socket in where.items():
            nodes[node].register(socket, identifier)
        n1.add_to_group("alice", "room")
        n2.add_to_group("bob", "room")
        n3.add_to_group("dave", "room")
        await wait_until(
            lambda: all(
                m.get_group_members("room") == {"alice", "bob", "dave"} for m in nodes.values()
            ),
            "every node sees the room",
        )

        def operations(sender: str, i: int) -> list[tuple[str, tuple[Any, ...], set[str]]]:
            tag = f"{sender}:{i}"
            return [
                ("broadcast", (f"{tag}:all",), {"alice", "bob", "carol", "dave"}),
                ("send_to_one", ("carol", f"{tag}:one"), {"carol"}),
                ("send_to_many", (["alice", "dave"], f"{tag}:many"), {"alice", "dave"}),
                ("send_to_group", ("room", f"{tag}:group"), {"alice", "bob", "dave"}),
            ]

        expected: dict[tuple[str, str], list[str]] = {key: [] for key in where}

        async def send_all(sender: str) -> None:
            manager = nodes[sender]
            for i in range(20):
                for method, args, targets in operations(sender, i):
                    result = await getattr(manager, method)(*args)
                    local = [k for k in where if k[0] == sender and k[1] in targets]
                    assert isinstance(result, Delivery)
                    assert (int(result), result.published) == (len(local), True)
                    for key in where:
                        if key[1] in targets:
                            expected[key].append(args[-1])

        async with anyio.create_task_group() as tg:  # all three nodes send at once
            for sender in nodes:
                tg.start_soon(send_all, sender)

        await wait_until(
            lambda: all(len(where[k].received) >= len(expected[k]) for k in where),
            "every socket got every message",
        )
        await anyio.sleep(0.1)  # room for a duplicate to show up
        for key, socket in where.items():
            received = [str(m) for m in socket.received]
            assert sorted(received) == sorted(expected[key]), key  # exactly once
            for sender in nodes:  # in the sender's order
                mine = [m for m in received if m.startswith(f"{sender}:")]
                assert mine == [m for m in expected[key] if m.startswith(f"{sender}:")], key
        for manager in nodes.values():
            assert backplane_drops(manager) == {}
            assert backplane_stat(manager, "malformed") == 0
            assert backplane_stat(manager, "link error") == 0


async def test_membership_and_presence_agree_on_every_node(
    redis_cluster: RedisCluster, namespace: str
) -> None:
    async with fleet(redis_cluster.url, namespace, "n1", "n2", "n3") as managers:
        n1, n2, n3 = managers

        async def agree(what: str, check: Any) -> None:
            def state() -> str:
                return "; ".join(
                    f"{m.node_id}: alice@{sorted(m.nodes_of('alice'))} "
                    f"room={sorted(m.get_group_members('room'))} "
                    f"bob@{sorted(m.nodes_of('bob'))}"
                    for m in managers
                )

            await wait_until(lambda: all(check(m) for m in managers), f"{what} ({state()})")

        alice1, alice2, bob2 = MemoryTransport(), MemoryTransport(), MemoryTransport()
        n1.register(alice1, "alice")
        n2.register(alice2, "alice")
        n2.register(bob2, "bob")
        n1.add_to_group("alice", "room")
        n2.add_to_group("bob", "room")
        await agree(
            "alice on n1 and n2 and bob on n2, both in room",
            lambda m: (
                m.nodes_of("alice") == {"n1", "n2"}
                and m.nodes_of("bob") == {"n2"}
                and m.online_count() == 2
                and m.get_group_members("room") == {"alice", "bob"}
                and m.groups_of("alice") == {"room"}
            ),
        )
        # The records live in the namespace's slot, on its shard's master.
        slot = redis_cluster.keyslot(f"{{{namespace}}}")
        master = redis_cluster.master_for(f"{{{namespace}}}")
        for key in (f"{{{namespace}}}:nodes", f"{{{namespace}}}:node:n1"):
            assert redis_cluster.keyslot(key) == slot
            assert command(master.port, "EXISTS", key) == 1, key

        # A node that starts from a replica's address finds the fleet and catches up.
        replica = redis_cluster.node(redis_cluster.shards()[0].replicas[0])
        async with fleet(replica.url, namespace, "n4") as (n4,):
            managers.append(n4)
            await agree(
                "n4 caught up",
                lambda m: (
                    m.nodes_of("alice") == {"n1", "n2"}
                    and m.get_group_members("room") == {"alice", "bob"}
                ),
            )
            await n4.send_to_group("room", "from n4")
            await wait_until(
                lambda: alice1.received == alice2.received == bob2.received == ["from n4"],
                "the room got it on n1 and n2",
            )
            n2.unregister(alice2)
            n1.remove_from_group("alice", "room")
            await agree(
                "alice on n1 only, out of the room",
                lambda m: m.nodes_of("alice") == {"n1"} and m.get_group_members("room") == {"bob"},
            )
            managers.remove(n4)
        # n4 left cleanly: its record is gone from the cluster at once.
        assert command(master.port, "EXISTS", f"{{{namespace}}}:node:n4") == 0
        await agree("n4 gone", lambda m: m.nodes_of("bob") == {"n2"})
        assert n3.count() == 0
