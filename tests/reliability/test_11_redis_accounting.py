"""Check 11: after Redis is frozen, killed and restarted, every cross-node loss is counted.

Two managers, each its own node on a ``RedisBackplane`` to a throw-away ``redis-server`` on
127.0.0.1; node b serves one real websockets client. Node a broadcasts numbered messages,
20 a second, while Redis is frozen (SIGSTOP, then SIGCONT), then SIGKILLed and restarted;
traffic goes on after the restart; then a message larger than Redis lets a subscriber take
(40 MB, over its default 32 MiB pub/sub output-buffer limit); then three more.

The full form has the issue's sizes: frozen 10 s, traffic for 18 s after the restart, and
the backplane's default timings (heartbeat 2 s, lease 6 s, publish timeout 2 s). The short
form (CI) freezes Redis 3 s (longer than a publish may take, so publishes time out with
their fate unknown), runs 2 s after the restart, with a heartbeat of 0.2 s.

Criteria, the sums printed:

* a refuses, with ``MessageTooLarge`` naming the backplane's bound, the 40 MB message, and
  queues it nowhere; no link notices it;
* what a accepted (``Delivery.published``) = what b's client received + what a counts as
  dropped after accepting + what b counts as dropped, exactly: nothing uncounted, nothing
  counted twice; what a refused = what a counted as refused;
* the client got what it got in order, once; the last three messages arrive.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import anyio
import pytest

from redis_server import UNCLOSED, RedisServer
from support import backplane_drops, backplane_stat, connected, wait_until
from wsfleet import ConnectionManager, MessageTooLarge, OverflowPolicy
from wsfleet.adapters.redis import RedisBackplane

from .conftest import Figure, Sizes, client, serve

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.slow,  # Redis frozen, then killed
    pytest.mark.anyio,
    pytest.mark.filterwarnings(f"ignore:{UNCLOSED}:ResourceWarning"),
]

RATE = 20  # messages per second
OVERSIZE = 40_000_000
#: Reasons a sender gives for refusing a message (``published`` False).
REFUSED = ("backplane: link down", "backplane: publish queue full")


async def test_every_cross_node_loss_is_counted_through_freeze_kill_restart_and_oversize(
    redis: RedisServer, sizes: Sizes, figure: Figure
) -> None:
    frozen = sizes.pick(3.0, 10.0)
    after_restart = sizes.pick(2.0, 18.0)
    timings: dict[str, Any] = sizes.pick(
        {"heartbeat_interval": 0.2, "node_ttl": 0.6}, {}
    )  # the full form: the defaults
    # The managers take 40 MB (their own limit is not the point here): the backplane must not.
    roomy = OverflowPolicy(max_message_size=48 * 1024 * 1024, max_bytes=64 * 1024 * 1024)
    received: list[int] = []
    accepted = refused = 0
    pid = redis.pid
    assert pid is not None

    async def handler(ws: Any, identifier: str) -> None:
        async with b.session(ws, identifier) as session:
            async for _ in session:
                pass

    async def read(url: str, *, task_status: Any) -> None:
        async with client(f"{url}?id=bob") as ws:
            task_status.started()
            async for message in ws:
                received.append(int(message))

    async def send(number: int) -> None:
        nonlocal accepted, refused
        delivery = await a.broadcast(str(number))
        if delivery.published:
            accepted += 1
        else:
            refused += 1

    async with (
        ConnectionManager(
            backplane=RedisBackplane(redis.url, node_id="a", **timings), overflow=roomy
        ) as a,
        ConnectionManager(
            backplane=RedisBackplane(redis.url, node_id="b", **timings), overflow=roomy
        ) as b,
        serve(handler) as url,
        anyio.create_task_group() as tg,
    ):
        await wait_until(lambda: connected(a, b), "both nodes connected", timeout=10)
        await tg.start(read, url)
        await wait_until(lambda: b.count() == 1, "bob connected")
        stop = anyio.Event()
        numbers = iter(range(1, 100_000))

        async def traffic() -> None:
            for _ in range(RATE * 120):  # bounded, whatever happens
                if stop.is_set():
                    return
                await send(next(numbers))
                await anyio.sleep(1 / RATE)

        async with anyio.create_task_group() as senders:
            senders.start_soon(traffic)
            await anyio.sleep(1.0)
            os.kill(pid, signal.SIGSTOP)
            try:
                await anyio.sleep(frozen)
            finally:
                os.kill(pid, signal.SIGCONT)
            await wait_until(lambda: connected(a, b), "back after the freeze", timeout=30)
            await anyio.sleep(1.0)
            redis.kill()
            await anyio.sleep(0.2)
            await anyio.to_thread.run_sync(redis.start)
            await wait_until(lambda: connected(a, b), "back after the restart", timeout=30)
            await anyio.sleep(after_restart)
            stop.set()

        links = [backplane_stat(a, "link error"), backplane_stat(b, "link error")]
        with pytest.raises(MessageTooLarge) as info:
            await a.broadcast(bytes(OVERSIZE))
        assert "backplane" in str(info.value)
        assert "max_message_size" in str(info.value)
        last = [next(numbers) for _ in range(3)]
        for number in last:
            await send(number)
        await wait_until(lambda: received[-3:] == last, "the last three arrived", timeout=10)

        def sums() -> tuple[int, int, int]:
            a_drops, b_drops = backplane_drops(a), backplane_drops(b)
            counted_refused = sum(a_drops.get(reason, 0) for reason in REFUSED)
            return (
                counted_refused,
                sum(a_drops.values()) - counted_refused,
                sum(b_drops.values()),
            )

        def balanced() -> bool:
            counted_refused, by_a, by_b = sums()
            return counted_refused == refused and accepted == len(received) + by_a + by_b

        # A loss of the last messages before the check shows when a next tells its count.
        with anyio.move_on_after(10):
            while not balanced():
                await anyio.sleep(0.01)
        counted_refused, by_a, by_b = sums()
        uncounted = accepted - len(received) - by_a - by_b
        figure("sent by a", accepted + refused)
        figure("refused by a (link down)", refused, "", f"= counted by a: {counted_refused}")
        figure("accepted by a", accepted)
        figure("delivered to b's client", len(received))
        figure("counted as dropped by a, after accepting", by_a)
        figure("counted as dropped by b", by_b)
        figure("accepted - delivered - counted", uncounted, "", "= 0")
        figure("drops by reason, a", str(backplane_drops(a)))
        figure("drops by reason, b", str(backplane_drops(b)))
        figure("oversize refused", f"{OVERSIZE} bytes: {info.value}")
        assert uncounted == 0
        assert counted_refused == refused
        assert received == sorted(set(received))  # in order, none twice
        assert refused > 0, "the outages cost something"
        assert [
            backplane_stat(a, "link error"),
            backplane_stat(b, "link error"),
        ] == links  # the 40 MB went nowhere
        assert b.stats().drops.keys() <= {"backplane: lost in transit"}
        tg.cancel_scope.cancel()
