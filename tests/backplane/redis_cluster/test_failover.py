"""Shards failing under traffic, on a real Redis Cluster of our own per test.

Node a sends numbered broadcasts, 50 a second, to a socket on node b; the namespace's shard
then loses its master:

* SIGKILLed: after ``cluster-node-timeout`` (1 s here) its replica takes over; both nodes'
  links fail, start new sessions on the new topology and subscribe again on the new master;
  traffic resumes. What a accepted equals what b's socket received plus what a and b
  counted as dropped, exactly; what a refused is what a counted as refused.
* handed over (``CLUSTER FAILOVER`` on the replica): the old master unsubscribes its shard
  channel's subscribers (``sunsubscribe``) instead of closing their connections; the links
  take that as the end of the session, and the same sum holds.

And a replica SIGKILLed goes unnoticed: the fleet needs only its shard's master, and a node
that starts meanwhile connects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest

from redis_server import UNCLOSED, RedisCluster, running_redis_cluster
from support import REFUSED, Ledger, backplane_drops, backplane_stat, connected, wait_until
from wsfleet import Backplane, ConnectionManager
from wsfleet.adapters.redis import RedisStore
from wsfleet.testing import MemoryTransport
from wsfleet.testing.redis_cluster import command

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings(f"ignore:{UNCLOSED}:ResourceWarning"),
]

NAMESPACE = "wsfleet-failover"
TAG = f"{{{NAMESPACE}}}"
CHANNEL = f"{TAG}:bus"
HEARTBEAT = 0.2
TTL = 0.6
OP_TIMEOUT = 0.5
RATE = 50  # messages per second


@asynccontextmanager
async def nodes(url: str, *names: str) -> AsyncIterator[list[ConnectionManager]]:
    settings = {"heartbeat_interval": HEARTBEAT, "node_ttl": TTL, "op_timeout": OP_TIMEOUT}
    async with AsyncExitStack() as stack:
        managers = []
        for name in names:
            store = RedisStore(url, namespace=NAMESPACE, cluster=True)
            backplane = Backplane(store, namespace=NAMESPACE, node_id=name, **settings)
            managers.append(await stack.enter_async_context(ConnectionManager(backplane=backplane)))
        await wait_until(lambda: connected(*managers), "every node connected")
        yield managers


async def under_traffic(
    cluster: RedisCluster, fault: Callable[[], Any], *, url: str | None = None
) -> tuple[Ledger, int]:
    """Run ``fault`` (in a thread) while a sends to b; return the ledger once traffic has
    resumed and the sum balances, and the port of the shard's master by then."""
    async with nodes(url or cluster.url, "a", "b") as (a, b):
        ledger = Ledger(a, b)
        stop = anyio.Event()

        async def traffic() -> None:
            for _ in range(RATE * 25):  # bounded, whatever happens
                if stop.is_set():
                    return
                await ledger.send()
                await anyio.sleep(1 / RATE)

        async with anyio.create_task_group() as tg:
            tg.start_soon(traffic)
            await wait_until(lambda: len(ledger.socket.received) >= 10, "traffic flows")
            await anyio.to_thread.run_sync(fault)
            await wait_until(lambda: connected(a, b), "both links back", timeout=15)
            resumed = len(ledger.socket.received) + 10
            await wait_until(lambda: len(ledger.socket.received) >= resumed, "traffic resumed")
            stop.set()

        await wait_until(ledger.balanced, f"the sum balances: {ledger.explain()}")
        numbers = [int(m) for m in ledger.socket.received]
        assert numbers == sorted(set(numbers))  # in order, none twice
        assert set(backplane_drops(a)) <= {*REFUSED, "backplane: unconfirmed at close"}
        assert set(backplane_drops(b)) <= {"backplane: lost in transit"}
        master = cluster.master_for(TAG).port
        # Both subscribed again, on the shard's master of now, to the shard channel.
        assert command(master, "PUBSUB", "SHARDNUMSUB", CHANNEL) == [CHANNEL, 2]
        return ledger, master


@pytest.mark.slow  # a cluster of its own, a failover
async def test_a_killed_master_is_replaced_and_every_accepted_message_is_counted() -> None:
    with running_redis_cluster() as cluster:
        old = cluster.master_for(TAG)
        replica = cluster.shard_for(TAG).replicas[0]

        def kill_and_wait() -> None:
            cluster.kill(old)
            cluster.wait_for_failover(old)

        # Started from the master to be killed: the nodes must find the others themselves.
        ledger, master = await under_traffic(cluster, kill_and_wait, url=old.url)
        assert master == replica
        assert backplane_stat(ledger.sender, "link error") >= 1
        assert backplane_stat(ledger.receiver, "link error") >= 1


@pytest.mark.slow  # a cluster of its own, a failover
async def test_a_master_handing_over_ends_the_subscription_and_nothing_goes_uncounted() -> None:
    with running_redis_cluster() as cluster:
        old = cluster.master_for(TAG)
        replica = cluster.shard_for(TAG).replicas[0]

        def hand_over() -> None:
            assert command(replica, "CLUSTER", "FAILOVER") == "OK"
            cluster.wait(
                lambda: cluster.master_for(TAG).port == replica, "the replica took over", 15
            )

        ledger, master = await under_traffic(cluster, hand_over)
        assert master == replica
        assert old.running
        # The old master told its subscribers they were unsubscribed; both links noticed.
        assert backplane_stat(ledger.receiver, "link error") >= 1


@pytest.mark.slow  # a cluster of its own, a node timeout
async def test_a_killed_replica_goes_unnoticed() -> None:
    with running_redis_cluster() as cluster:
        shard = cluster.shard_for(TAG)
        async with nodes(cluster.url, "a", "b") as (a, b):
            ledger = Ledger(a, b)
            replica = cluster.node(shard.replicas[0])

            def kill_and_wait() -> None:
                cluster.kill(replica)
                cluster.wait(
                    lambda: all(replica.port not in s.replicas for s in cluster.shards()),
                    "the cluster marked the replica failed",
                    15,
                )

            await anyio.to_thread.run_sync(kill_and_wait)
            for _ in range(20):
                await ledger.send()
            # A node that starts now connects: it needs the shard's master, not every node.
            async with nodes(cluster.url, "c") as (c,):
                carol = MemoryTransport("carol")
                c.register(carol, "carol")
                await a.send_to_one("carol", "hello")
                await wait_until(lambda: carol.received == ["hello"], "carol got it")
            await wait_until(lambda: len(ledger.socket.received) == 20, "all 20 arrived")
            assert ledger.balanced()
            for manager in (a, b):
                assert backplane_stat(manager, "link error") == 0
                assert backplane_drops(manager) == {}
