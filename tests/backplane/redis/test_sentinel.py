"""The backplane behind Redis Sentinel, on a real one: a primary, its replica, a Sentinel.

Node a sends numbered broadcasts, 50 a second, to a socket on node b, both configured with
the Sentinel's address and the service name only. The primary is SIGKILLed; after
``down-after-milliseconds`` (1 s here) Sentinel promotes the replica; both links fail, ask
Sentinel again at their next session, reach the new primary and subscribe there; traffic
resumes. What a accepted equals what b's socket received plus what a and b counted as
dropped, exactly.
"""

from __future__ import annotations

import anyio
import pytest

from redis_server import UNCLOSED, running_redis_sentinel
from support import REFUSED, Ledger, backplane_drops, backplane_stat, connected, wait_until
from wsfleet import ConnectionManager
from wsfleet.adapters.redis import RedisBackplane
from wsfleet.testing.redis_cluster import command

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings(f"ignore:{UNCLOSED}:ResourceWarning"),
]

NAMESPACE = "wsfleet-sentinel"
RATE = 50  # messages per second


def test_sentinel_needs_both_its_address_and_the_service_name() -> None:
    with pytest.raises(ValueError, match="service"):
        RedisBackplane("redis://127.0.0.1:6379/0", sentinels=[("127.0.0.1", 26379)])
    with pytest.raises(ValueError, match="sentinels"):
        RedisBackplane("redis://127.0.0.1:6379/0", service="mymaster")
    with pytest.raises(ValueError, match="not both"):
        RedisBackplane(
            "redis://127.0.0.1:6379/0",
            cluster=True,
            sentinels=[("127.0.0.1", 26379)],
            service="mymaster",
        )


@pytest.mark.slow  # a failover
async def test_a_killed_primary_is_replaced_and_every_accepted_message_is_counted() -> None:
    with running_redis_sentinel() as setup:
        options = {
            "namespace": NAMESPACE,
            "sentinels": setup.sentinels,
            "service": setup.service,
            "heartbeat_interval": 0.2,
            "node_ttl": 0.6,
        }
        async with (
            ConnectionManager(backplane=RedisBackplane(setup.url, node_id="a", **options)) as a,
            ConnectionManager(backplane=RedisBackplane(setup.url, node_id="b", **options)) as b,
        ):
            await wait_until(lambda: connected(a, b), "both connected")
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

                def kill_and_wait() -> None:
                    setup.kill_primary()
                    setup.wait_for_failover()

                await anyio.to_thread.run_sync(kill_and_wait)
                await wait_until(lambda: connected(a, b), "both links back", timeout=15)
                resumed = len(ledger.socket.received) + 10
                await wait_until(lambda: len(ledger.socket.received) >= resumed, "resumed")
                stop.set()

            await wait_until(ledger.balanced, f"the sum balances: {ledger.explain()}")
            numbers = [int(m) for m in ledger.socket.received]
            assert numbers == sorted(set(numbers))  # in order, none twice
            assert set(backplane_drops(a)) <= {*REFUSED, "backplane: unconfirmed at close"}
            assert set(backplane_drops(b)) <= {"backplane: lost in transit"}
            assert backplane_stat(b, "link error") >= 1
            # Both subscribed on the promoted replica.
            channel = f"{NAMESPACE}:bus"
            assert command(setup.replica.port, "PUBSUB", "NUMSUB", channel) == [channel, 2]
