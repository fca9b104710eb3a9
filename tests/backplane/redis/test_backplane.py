"""Several managers in one process, one fleet, over a real ``redis-server``.

Each manager is its own node (its own ``RedisBackplane`` and node id) on a throw-away Redis
started on a free loopback port (``tests/redis_server.py``); sockets are ``MemoryTransport``s.
What is checked, on asyncio and on trio:

* every fan-out reaches every target connection on every node exactly once, in the sender's
  order, and the sender's own connections get their copy at once, before Redis is involved;
* group membership and presence agree on every node, an identifier on two nodes included;
* garbage on the channel is skipped and counted; ``disconnect_identifier`` reaches every node;
* Redis SIGKILLed and restarted three times under traffic: nothing escapes, local delivery
  loses nothing, cross-node delivery resumes within 2 s, and every cross-node message the
  other node did not get is counted once, in the sender's ``stats().drops`` or the
  receiver's (``test_accounting.py`` beside it adds a frozen Redis and an oversize message);
* the link's own state machine goes CONNECTED -> ERROR -> RECONNECTING -> CONNECTED.

Heartbeats and leases are short (0.2 s / 0.6 s); every wait is bounded.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import coredis
import pytest

from redis_server import UNCLOSED, RedisServer
from support import backplane_drops, backplane_stat, connected, wait_until
from wsfleet import ConnectionManager, Delivery, InvalidArgument
from wsfleet.adapters.redis import RedisBackplane
from wsfleet.backplane.wire import VERSION
from wsfleet.testing import MemoryTransport

pytestmark = [
    pytest.mark.anyio,
    # coredis creates a connection's memory streams before it dials and closes them only
    # if the dial succeeds; every failed attempt while Redis is down leaves some to the GC.
    pytest.mark.filterwarnings(f"ignore:{UNCLOSED}:ResourceWarning"),
]

HEARTBEAT = 0.2
TTL = 0.6
NAMESPACE = "wsfleet-test"


@asynccontextmanager
async def fleet(url: str, *names: str, **options: Any) -> AsyncIterator[list[ConnectionManager]]:
    """One manager per name, each its own node on the Redis at ``url``, all connected."""
    options = {"heartbeat_interval": HEARTBEAT, "node_ttl": TTL, **options}
    async with AsyncExitStack() as stack:
        managers = []
        for name in names:
            backplane = RedisBackplane(url, namespace=NAMESPACE, node_id=name, **options)
            manager = ConnectionManager(backplane=backplane)
            managers.append(await stack.enter_async_context(manager))
        await wait_until(lambda: connected(*managers), "every node connected")
        yield managers


async def settle(*managers: ConnectionManager) -> None:
    """Wait until every node's queue to Redis is empty, and a little for the far side."""
    await wait_until(
        lambda: all(backplane_stat(m, "queued sends") == 0 for m in managers),
        "publish queues empty",
    )
    await anyio.sleep(0.05)


# -- fan-out ------------------------------------------------------------------------------------


async def test_every_fan_out_reaches_every_target_on_every_node_once_in_order(
    redis: RedisServer,
) -> None:
    async with fleet(redis.url, "n1", "n2", "n3") as (n1, n2, n3):
        nodes = {"n1": n1, "n2": n2, "n3": n3}
        # (node, identifier) -> socket; carol has a socket on two nodes.
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

        # Each operation: (call, the identifiers it targets).
        def operations(sender: str, i: int) -> list[tuple[str, tuple[Any, ...], set[str]]]:
            tag = f"{sender}:{i}"
            return [
                ("broadcast", (f"{tag}:all",), {"alice", "bob", "carol", "dave"}),
                ("send_to_one", ("carol", f"{tag}:one"), {"carol"}),
                ("send_to_many", (["alice", "dave"], f"{tag}:many"), {"alice", "dave"}),
                ("send_to_group", ("room", f"{tag}:group"), {"alice", "bob", "dave"}),
            ]

        expected: dict[tuple[str, str], list[str]] = {key: [] for key in where}

        delivery = await n1.broadcast("n1:first")
        assert isinstance(delivery, Delivery)
        assert (int(delivery), delivery.published) == (2, True)
        for key in where:
            expected[key].append("n1:first")

        async def send_all(sender: str) -> None:
            manager = nodes[sender]
            for i in range(30):
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

        def complete() -> bool:
            return all(len(where[k].received) >= len(expected[k]) for k in where)

        await wait_until(complete, "every socket got every message")
        await anyio.sleep(0.1)  # room for a duplicate to show up
        for key, socket in where.items():
            received = socket.received
            assert sorted(map(str, received)) == sorted(expected[key]), key  # exactly once
            for sender in nodes:  # in the sender's order
                mine = [m for m in received if str(m).startswith(f"{sender}:")]
                assert mine == [m for m in expected[key] if m.startswith(f"{sender}:")], key
        for manager in nodes.values():
            assert backplane_drops(manager) == {}
            assert backplane_stat(manager, "malformed") == 0


@pytest.mark.slow  # Redis frozen
async def test_local_targets_do_not_wait_for_redis(redis: RedisServer) -> None:
    """With Redis frozen (SIGSTOP), the sender's own sockets still get their copy at once;
    the other node's get theirs when Redis thaws, and nothing is lost or counted."""
    async with fleet(redis.url, "n1", "n2") as (n1, n2):
        alice, bob = MemoryTransport(), MemoryTransport()
        n1.register(alice, "alice")
        n2.register(bob, "bob")
        pid = redis.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            delivery = await n1.broadcast("hello")
            assert (int(delivery), delivery.published) == (1, True)
            for _ in range(10):  # the flusher task writes it: a few checkpoints at most
                if alice.received:
                    break
                await anyio.lowlevel.checkpoint()
            assert alice.received == ["hello"]
            await anyio.sleep(0.2)
            assert bob.received == []  # Redis holds it
        finally:
            os.kill(pid, signal.SIGCONT)
        await wait_until(lambda: bob.received == ["hello"], "bob got it once Redis thawed")
        await settle(n1, n2)
        assert backplane_drops(n1) == {}
        assert backplane_stat(n1, "published") == 1


async def test_bytes_and_exclusions_cross_nodes(redis: RedisServer) -> None:
    async with fleet(redis.url, "n1", "n2") as (n1, n2):
        alice1, alice2, bob2 = MemoryTransport(), MemoryTransport(), MemoryTransport()
        n1.register(alice1, "alice")
        n2.register(alice2, "alice")
        n2.register(bob2, "bob")
        await n1.broadcast(b"\x00\xffraw", exclude="bob")
        await n2.broadcast("not alice", exclude=["alice"])
        await settle(n1, n2)
        await wait_until(lambda: len(alice2.received) == 1 and len(bob2.received) == 1, "arrived")
        assert alice1.received == [b"\x00\xffraw"]
        assert alice2.received == [b"\x00\xffraw"]
        assert bob2.received == ["not alice"]


# -- membership and presence ------------------------------------------------------------------


async def test_membership_and_presence_agree_on_every_node(redis: RedisServer) -> None:
    async with fleet(redis.url, "n1", "n2", "n3") as (n1, n2, n3):
        managers = [n1, n2, n3]

        async def agree(what: str, check: Callable[[ConnectionManager], bool]) -> None:
            await wait_until(lambda: all(check(m) for m in managers), what)

        alice1, alice2, bob2 = MemoryTransport(), MemoryTransport(), MemoryTransport()
        n1.register(alice1, "alice")
        n2.register(alice2, "alice")
        n2.register(bob2, "bob")
        await agree(
            "alice on n1 and n2, bob on n2",
            lambda m: (
                m.nodes_of("alice") == {"n1", "n2"}
                and m.nodes_of("bob") == {"n2"}
                and m.online_count() == 2
            ),
        )

        # Joining through n1 puts alice's socket on n2 in the group too.
        n1.add_to_group("alice", "room")
        await agree(
            "alice in room",
            lambda m: m.get_group_members("room") == {"alice"} and m.groups_of("alice") == {"room"},
        )
        # n2's own registry, not only its view: it follows when n1's announcement arrives,
        # which may come after n2 loaded n1's record (written first) if n2 was reloading the
        # nodes that said hello as the fleet started.
        await wait_until(lambda: n2.groups() == {"room"}, "n2's registry followed")
        delivery = await n2.send_to_group("room", "to the room")
        assert int(delivery) == 1  # alice's socket on n2, queued there and then
        await wait_until(
            lambda: alice1.received == alice2.received == ["to the room"], "both alices got it"
        )

        n2.add_to_group("bob", "room")
        await agree("bob in room", lambda m: m.get_group_members("room") == {"alice", "bob"})

        # Leaving through n2 takes alice out on n1 as well.
        n2.remove_from_group("alice", "room")
        await agree(
            "alice left",
            lambda m: m.get_group_members("room") == {"bob"} and m.groups_of("alice") == set(),
        )
        assert n1.groups() == set()
        n2.add_to_group("alice", "room")  # and back, through n2 this time
        await agree("alice is back", lambda m: m.get_group_members("room") == {"alice", "bob"})

        # A node that starts now learns all of it from the store.
        async with fleet(redis.url, "n4") as (n4,):
            managers.append(n4)
            await agree(
                "n4 caught up",
                lambda m: (
                    m.nodes_of("alice") == {"n1", "n2"}
                    and m.get_group_members("room") == {"alice", "bob"}
                    and m.groups_of("alice") == {"room"}
                    and m.online_count() == 2
                ),
            )

            # alice's last socket on n1 goes: she stays, in her groups, on n2.
            n1.unregister(alice1)
            await agree(
                "alice on n2 only",
                lambda m: (
                    m.nodes_of("alice") == {"n2"}
                    and m.get_group_members("room") == {"alice", "bob"}
                    and m.groups_of("alice") == {"room"}
                ),
            )
            # Her last socket anywhere goes: she is nowhere, in no group.
            n2.unregister(alice2)
            await agree(
                "alice gone",
                lambda m: (
                    m.nodes_of("alice") == set()
                    and m.get_group_members("room") == {"bob"}
                    and m.groups_of("alice") == set()
                    and m.online_count() == 1
                ),
            )
            managers.remove(n4)
        # n4 left cleanly: nothing of it lingers, and the others never saw sockets there.
        await agree("bob still there", lambda m: m.nodes_of("bob") == {"n2"})


# -- garbage on the channel ---------------------------------------------------------------------


async def test_garbage_on_the_channel_is_skipped_and_counted(redis: RedisServer) -> None:
    envelope = {"v": VERSION, "ns": NAMESPACE, "node": "x", "run": "r", "seq": 1, "k": "send"}
    envelope["to"] = "all"
    garbage = [
        b"not json",
        b"\xff\xfe\x00 binary",
        json.dumps([1, 2, 3]).encode(),
        json.dumps({**envelope, "ns": "another-app", "text": "hi"}).encode(),
        json.dumps({**envelope, "v": VERSION - 1, "text": "hi"}).encode(),
        json.dumps({**envelope, "k": "launch", "text": "hi"}).encode(),
        json.dumps({**envelope, "to": "all"}).encode(),  # neither text nor b64
    ]
    async with fleet(redis.url, "n1", "n2") as (n1, n2):
        bob = MemoryTransport()
        n2.register(bob, "bob")
        async with coredis.Redis.from_url(redis.url) as client:
            for raw in garbage:
                assert await client.publish(f"{NAMESPACE}:bus", raw) == 2
        await wait_until(
            lambda: (
                backplane_stat(n1, "malformed") == backplane_stat(n2, "malformed") == len(garbage)
            ),
            "every node counted every bad message",
        )
        assert bob.received == []
        # The subscribers live on: the link never went down and messages still flow.
        assert backplane_stat(n1, "link error") == backplane_stat(n2, "link error") == 0
        await n1.broadcast("after the garbage")
        await wait_until(lambda: bob.received == ["after the garbage"], "bob got the next one")
        assert connected(n1, n2)


@pytest.mark.parametrize("forged", ["node id", "identifier", "groups"])
async def test_records_no_node_wrote_are_skipped_and_the_links_stay_up(
    redis: RedisServer, forged: str
) -> None:
    """Whoever can write to the namespace's keys can plant records: one that is not UTF-8
    once made every node's link fail, over and over, for as long as the key existed."""
    async with coredis.Redis.from_url(redis.url) as client:
        future = time.time() + 3600
        if forged == "node id":
            await client.zadd(f"{NAMESPACE}:nodes", {b"\xff\xfe": future})
        else:
            await client.zadd(f"{NAMESPACE}:nodes", {"evil": future})
            key, value = (b"\xff\xfe", b"[]") if forged == "identifier" else (b"ok", b"[[[1]]]")
            await client.hset(f"{NAMESPACE}:node:evil", {key: value})
            await client.hset(f"{NAMESPACE}:node:evil", {b"line\nbreak": b'["g"]'})
        async with fleet(redis.url, "n1", "n2") as (n1, n2):
            bob = MemoryTransport()
            n2.register(bob, "bob")
            await anyio.sleep(3 * HEARTBEAT)  # heartbeats that read the records again
            assert backplane_stat(n1, "link error") == backplane_stat(n2, "link error") == 0
            assert "line\nbreak" not in n1.nodes_of("bob") | set(n1.identifiers())
            await n1.broadcast("still flowing")
            await wait_until(lambda: bob.received == ["still flowing"], "bob got it")
            assert connected(n1, n2)
            assert n1.stats().dropped == n2.stats().dropped == 0


# -- disconnect_identifier ----------------------------------------------------------------------


async def test_disconnect_identifier_closes_the_sockets_on_every_node(redis: RedisServer) -> None:
    async with fleet(redis.url, "n1", "n2", "n3") as (n1, n2, n3):
        alice1, alice2, alice3 = MemoryTransport(), MemoryTransport(), MemoryTransport()
        bob2 = MemoryTransport()
        n1.register(alice1, "alice")
        n2.register(alice2, "alice")
        n3.register(alice3, "alice")
        n2.register(bob2, "bob")
        await wait_until(lambda: n1.nodes_of("alice") == {"n1", "n2", "n3"}, "alice everywhere")

        assert await n1.disconnect_identifier("alice", 4001, "banned") == 1
        await wait_until(lambda: alice1.closed, "the local socket closed")
        await wait_until(lambda: alice2.closed and alice3.closed, "the remote sockets closed")
        for socket in (alice1, alice2, alice3):
            assert (socket.close_code, socket.close_reason) == (4001, "banned")
        for manager in (n1, n2, n3):
            assert manager.sockets_of("alice") == []
        assert not bob2.closed
        await wait_until(
            lambda: all(m.nodes_of("alice") == set() for m in (n1, n2, n3)), "alice is nowhere"
        )
        assert all(m.nodes_of("bob") == {"n2"} for m in (n1, n2, n3))


# -- Redis outages --------------------------------------------------------------------------------


class LinkLog(logging.Handler):
    """Records every change of one backplane's link, as its logger reports it."""

    def __init__(self, node: str) -> None:
        super().__init__(logging.DEBUG)
        self.node = node
        self.changes: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if (
            record.msg == "%r: link %s -> %s (%s)"
            and isinstance(args, tuple)
            and getattr(args[0], "node_id", None) == self.node
        ):
            self.changes.append((str(args[1]), str(args[2])))


@pytest.fixture
def link_log() -> Iterator[LinkLog]:
    logger = logging.getLogger("wsfleet.backplane")
    handler = LinkLog("n1")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.slow  # Redis killed
async def test_the_link_goes_through_error_and_reconnecting_around_an_outage(
    redis: RedisServer, link_log: LinkLog
) -> None:
    async with fleet(redis.url, "n1", "n2") as (n1, n2):
        bob = MemoryTransport()
        n2.register(bob, "bob")
        seen = [n1.stats().backplane_state]

        async def watch() -> None:  # the public view of the same thing
            while True:
                state = n1.stats().backplane_state
                if state != seen[-1]:
                    seen.append(state)
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            redis.kill()
            await wait_until(lambda: n1.stats().backplane_state == "ERROR", "n1 saw the outage")
            delivery = await n1.broadcast("lost")  # the caller is not held up
            assert (int(delivery), delivery.published) == (0, False)
            # A few failed attempts: wait for them, not for a time they should take.
            await wait_until(
                lambda: link_log.changes.count(("RECONNECTING", "ERROR")) >= 2,
                "n1 tried twice while Redis was down",
            )
            await anyio.to_thread.run_sync(redis.start)
            await wait_until(lambda: connected(n1, n2), "both back")
            await wait_until(lambda: seen[-1] == "CONNECTED", "the watcher saw it back")
            tg.cancel_scope.cancel()

        await n1.broadcast("found")
        await wait_until(lambda: bob.received == ["found"], "bob got the next one")

    assert seen[0] == "CONNECTED"
    assert seen[-1] == "CONNECTED"
    assert "ERROR" in seen
    changes = link_log.changes
    assert changes[:2] == [("new", "RECONNECTING"), ("RECONNECTING", "CONNECTED")]
    assert changes[2] == ("CONNECTED", "ERROR")
    assert changes[-2:] == [("RECONNECTING", "CONNECTED"), ("CONNECTED", "DISCONNECTED")]
    outage = changes[3:-2]  # retries: ERROR -> RECONNECTING, and back to ERROR while down
    assert len(outage) >= 3
    assert len(outage) % 2 == 1
    assert all(c == ("ERROR", "RECONNECTING") for c in outage[0::2])
    assert all(c == ("RECONNECTING", "ERROR") for c in outage[1::2])


@pytest.mark.slow  # Redis killed
async def test_redis_killed_and_restarted_under_traffic(redis: RedisServer) -> None:
    """Three SIGKILLs of Redis while node a sends numbered messages to everyone, 200 a second.

    What "drops are counted exactly" means here: every number b did not get is counted once,
    either by a, which refused it while its link was down (``published`` False, "backplane:
    link down"), or by b, which saw the gap in a's numbering ("backplane: lost in transit"),
    including a message Redis took at the very instant it was killed.
    """
    async with fleet(redis.url, "a", "b") as (a, b):
        mine = [MemoryTransport(f"a{i}") for i in range(3)]
        theirs = [MemoryTransport(f"b{i}") for i in range(2)]
        for i, socket in enumerate(mine):
            a.register(socket, f"a-user-{i}")
        for i, socket in enumerate(theirs):
            b.register(socket, f"b-user-{i}")
        await wait_until(lambda: a.online_count() == b.online_count() == 5, "both see all five")

        sent: list[float] = []  # sent[n - 1]: when message n was sent
        outages: list[tuple[float, float]] = []  # (killed, answering again)
        stop = anyio.Event()

        refused = 0

        async def send() -> None:
            nonlocal refused
            while not stop.is_set():
                sent.append(anyio.current_time())
                delivery = await a.broadcast(str(len(sent)))  # never blocks on Redis
                refused += not delivery.published
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            await anyio.sleep(0.4)
            for _ in range(3):
                redis.kill()
                killed = anyio.current_time()
                await anyio.sleep(0.3)
                await anyio.to_thread.run_sync(redis.start)
                outages.append((killed, anyio.current_time()))
                await anyio.sleep(1.5)
            stop.set()

        await settle(a, b)
        total = len(sent)
        numbers = [str(n) for n in range(1, total + 1)]
        for socket in mine:  # local delivery lost nothing
            assert socket.received == numbers

        def missed() -> set[int]:
            return set(range(1, total + 1)) - {int(m) for m in theirs[0].received}

        def counted() -> int:
            return sum(backplane_drops(a).values()) + sum(backplane_drops(b).values())

        # b learns of a last loss from a's next tally, within a heartbeat.
        await wait_until(lambda: counted() == len(missed()), "every loss counted")
        got = [int(m) for m in theirs[0].received]
        assert theirs[1].received == theirs[0].received
        assert got == sorted(set(got))  # in order, none twice
        assert backplane_drops(a) == {"backplane: link down": refused}
        assert set(backplane_drops(b)) == {"backplane: lost in transit"}
        assert missed(), "the outages cost something"
        missed_now = missed()

        # Cross-node delivery resumed within 2 s of Redis answering again, and from then on
        # b got everything until the next kill (but for what was in flight when it came).
        ends = [killed - 0.1 for killed, _ in outages[1:]] + [sent[-1] + 1]
        for (_, back), end in zip(outages, ends, strict=True):
            window = [n for n, t in enumerate(sent, 1) if back <= t < end]
            resumed = next((n for n in window if n not in missed_now), None)
            assert resumed is not None, f"nothing got through after Redis returned at {back:.2f}"
            assert sent[resumed - 1] - back <= 2.0
            assert not missed_now & set(range(resumed, window[-1] + 1)), sorted(missed_now)

        assert connected(a, b)
        assert backplane_stat(a, "link error") >= 3
        assert backplane_stat(b, "link error") >= 3


def test_the_redis_backplane_takes_the_settings_of_a_backplane() -> None:
    """Every setting of ``Backplane`` that matters at scale reaches it through
    ``RedisBackplane`` (``op_timeout`` bounds a whole reload of the others' records)."""
    backplane = RedisBackplane("redis://127.0.0.1:1/0", op_timeout=7.5, node_ttl=9.0)
    assert backplane.op_timeout == 7.5
    assert backplane.node_ttl == 9.0
    with pytest.raises(InvalidArgument):
        RedisBackplane("redis://127.0.0.1:1/0", op_timeout=0)
