"""Over a real ``redis-server``: every message a node accepted is delivered or counted, exactly.

Node a sends numbered broadcasts to node b's socket while Redis is frozen (SIGSTOP, longer
than a publish may take), thawed, SIGKILLed and restarted; then it tries a message over the
backplane's bound. The sum must come out exact, with no allowance: what a accepted
(``Delivery.published``) equals what b's socket received plus what a and b count as dropped,
and what a refused is what a counted as refused. Also here: a message larger than Redis lets
a subscriber take (on a fleet whose bound was set too high) is lost and still counted; and a
forged 80-byte envelope with a lone surrogate reaches no socket and disturbs none.

Short heartbeats and publish timeouts (0.2 s, 0.5 s) keep each test within a few seconds;
``tests/reliability/test_11_redis_accounting.py`` runs the issue's sizes.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import coredis
import pytest

from adapters.clients import client
from adapters.harness_websockets import serve
from redis_server import UNCLOSED, RedisServer
from support import REFUSED, Ledger, backplane_drops, backplane_stat, connected, wait_until
from wsfleet import Backplane, ConnectionManager, MessageTooLarge, OverflowPolicy
from wsfleet.adapters.redis import RedisBackplane, RedisStore
from wsfleet.testing import MemoryTransport

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings(f"ignore:{UNCLOSED}:ResourceWarning"),
]

NAMESPACE = "wsfleet-accounting"
HEARTBEAT = 0.2
TTL = 0.6
OP_TIMEOUT = 0.5
RATE = 50  # messages per second


@asynccontextmanager
async def nodes(
    url: str, *names: str, overflow: OverflowPolicy | None = None, **options: Any
) -> AsyncIterator[list[ConnectionManager]]:
    settings = {"heartbeat_interval": HEARTBEAT, "node_ttl": TTL, "op_timeout": OP_TIMEOUT}
    async with AsyncExitStack() as stack:
        managers = []
        for name in names:
            store = RedisStore(url, namespace=NAMESPACE)
            backplane = Backplane(store, namespace=NAMESPACE, node_id=name, **settings, **options)
            manager = ConnectionManager(backplane=backplane, overflow=overflow)
            managers.append(await stack.enter_async_context(manager))
        await wait_until(lambda: connected(*managers), "every node connected")
        yield managers


@pytest.mark.slow  # Redis frozen, then killed
async def test_every_accepted_message_is_delivered_or_counted_through_outages(
    redis: RedisServer,
) -> None:
    pid = redis.pid
    assert pid is not None
    async with nodes(redis.url, "a", "b", max_message_size=64 * 1024) as (a, b):
        ledger = Ledger(a, b)
        stop = anyio.Event()

        async def traffic() -> None:
            for _ in range(RATE * 20):  # bounded, whatever happens
                if stop.is_set():
                    return
                await ledger.send()
                await anyio.sleep(1 / RATE)

        async with anyio.create_task_group() as tg:
            tg.start_soon(traffic)
            await anyio.sleep(0.3)
            os.kill(pid, signal.SIGSTOP)  # publishes hang, then time out: their fate unknown
            try:
                await anyio.sleep(2 * OP_TIMEOUT)
            finally:
                os.kill(pid, signal.SIGCONT)
            await wait_until(lambda: connected(a, b), "back after the freeze")
            await anyio.sleep(0.3)
            redis.kill()
            await anyio.sleep(0.2)
            await anyio.to_thread.run_sync(redis.start)
            await wait_until(lambda: connected(a, b), "back after the restart")
            await anyio.sleep(0.3)
            with pytest.raises(MessageTooLarge, match="backplane"):
                await ledger.send("x" * (64 * 1024))  # refused up front: neither sum moves
            await anyio.sleep(0.3)
            stop.set()

        await wait_until(ledger.balanced, f"the sum balances: {ledger.explain()}")
        assert ledger.refused > 0, "the outages cost something"
        numbers = [int(m) for m in ledger.socket.received]
        assert numbers == sorted(set(numbers))  # in order, none twice
        assert set(backplane_drops(a)) <= {*REFUSED, "backplane: unconfirmed at close"}
        assert set(backplane_drops(b)) <= {"backplane: lost in transit"}
        assert backplane_stat(a, "link error") >= 2


async def test_a_message_over_the_bound_is_refused_before_redis_can_drop_the_subscribers(
    redis: RedisServer,
) -> None:
    """40 MB, over Redis' default 32 MiB for a subscriber's output buffer: refused by the
    default bound, with nothing queued anywhere; the links never notice."""
    roomy = OverflowPolicy(max_message_size=48 * 1024 * 1024, max_bytes=64 * 1024 * 1024)
    options = {"heartbeat_interval": HEARTBEAT, "node_ttl": TTL, "namespace": NAMESPACE}
    # The managers' own limit, raised here, is not the backplane's (left at its default).
    async with (
        ConnectionManager(
            backplane=RedisBackplane(redis.url, node_id="a", **options), overflow=roomy
        ) as a,
        ConnectionManager(
            backplane=RedisBackplane(redis.url, node_id="b", **options), overflow=roomy
        ) as b,
    ):
        await wait_until(lambda: connected(a, b), "both connected")
        alice, bob = MemoryTransport("alice"), MemoryTransport("bob")
        a.register(alice, "alice")
        b.register(bob, "bob")
        with pytest.raises(MessageTooLarge) as info:
            await a.broadcast(bytes(40_000_000))
        assert "backplane" in str(info.value)
        assert "max_message_size" in str(info.value)
        await a.broadcast(b"\x00" * (1024 * 1024))  # the manager's default limit fits
        await wait_until(lambda: len(bob.received) == 1, "the next one arrived")
        assert len(alice.received) == 1
        assert backplane_stat(a, "link error") == backplane_stat(b, "link error") == 0
        assert backplane_drops(a) == backplane_drops(b) == {}


async def test_a_message_redis_drops_with_its_subscribers_is_counted(redis: RedisServer) -> None:
    """A fleet whose bound is above what Redis lets a subscriber take: the message goes, Redis
    disconnects every subscriber rather than deliver it, and b counts it when a's hello
    tells the count after the links come back."""
    async with coredis.Redis.from_url(redis.url) as admin:
        await admin.config_set({"client-output-buffer-limit": "pubsub 512kb 256kb 60"})
    async with nodes(redis.url, "a", "b") as (a, b):
        ledger = Ledger(a, b)
        await ledger.send()
        await wait_until(lambda: len(ledger.socket.received) == 1, "the first arrived")
        await ledger.send("y" * (1024 * 1024))  # under the bound, over Redis' limit
        await wait_until(
            lambda: backplane_stat(a, "link error") >= 1 and backplane_stat(b, "link error") >= 1,
            "Redis dropped both subscriptions",
        )
        await wait_until(lambda: connected(a, b), "both back")
        await ledger.send()
        await wait_until(ledger.balanced, f"the sum balances: {ledger.explain()}")
        assert ledger.socket.received == ["1", "3"]
        assert backplane_drops(b) == {"backplane: lost in transit": 1}


async def test_a_forged_envelope_with_a_lone_surrogate_reaches_no_socket(
    redis: RedisServer,
) -> None:
    """80 bytes of valid JSON on the bus, whose text no socket could send: every node counts
    it as malformed and drops it; no connection anywhere changes state; all keep receiving."""
    forged = (
        b'{"v":2,"ns":"wsfleet-accounting","node":"x","run":"r","seq":1,"k":"send",'
        b'"to":"all","text":"\\ud800"}'
    )
    assert len(forged) <= 100
    async with nodes(redis.url, "n1", "n2") as managers, AsyncExitStack() as servers:
        urls = []
        for manager in managers:

            async def handler(ws: Any, identifier: str, m: ConnectionManager = manager) -> None:
                async with m.session(ws, identifier) as session:
                    async for _ in session:
                        pass

            urls.append(await servers.enter_async_context(serve(handler)))
        received: dict[str, list[str]] = {}
        async with AsyncExitStack() as clients:
            for url, manager in zip(urls, managers, strict=True):
                name = f"user-{manager.node_id}"
                ws = await clients.enter_async_context(client(f"{url}?id={name}"))
                received[name] = []
                tg = await clients.enter_async_context(anyio.create_task_group())
                tg.start_soon(read, ws, received[name])
                clients.callback(tg.cancel_scope.cancel)
            await wait_until(lambda: all(m.count() == 1 for m in managers), "both clients in")
            states = [m.stats().states for m in managers]

            async with coredis.Redis.from_url(redis.url) as intruder:
                assert await intruder.publish(f"{NAMESPACE}:bus", forged) == 2
            await wait_until(
                lambda: all(backplane_stat(m, "malformed") == 1 for m in managers),
                "both counted it",
            )
            await managers[0].broadcast("after")
            await wait_until(
                lambda: all(got == ["after"] for got in received.values()),
                "everyone still receives",
            )
            assert [m.stats().states for m in managers] == states
            for manager in managers:
                assert backplane_drops(manager) == {"backplane: malformed": 1}
                assert manager.stats().dropped == 1
                assert backplane_stat(manager, "link error") == 0
        # The clients closed: their sessions end before the servers stop.
        await wait_until(lambda: all(m.count() == 0 for m in managers), "the sessions ended")


async def read(ws: Any, into: list[str]) -> None:
    async for message in ws:
        into.append(str(message))
