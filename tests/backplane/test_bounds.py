"""What a message on the bus can make a node do is bounded, with signing off as with it on.

Without signing, anyone who can publish on the bus can say anything (that is the trust
model, docs/howto/security.md); what they must not get is a node's memory or its
connections. A flood of forged presence, from made-up nodes and in the name of a real one,
and a flood of forged hellos, leave every count of entries within its bound; the node
counts what it refused and keeps serving. Over the in-process hub and a real redis-server,
on asyncio and on trio. Entries are counted, never memory or time.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import pytest

from support import backplane_stat, connected
from wsfleet import Backplane, ConnectionManager, InvalidArgument
from wsfleet.backplane import Store, StoreSession
from wsfleet.backplane.signing import Signing
from wsfleet.backplane.wire import VERSION
from wsfleet.testing import MemoryTransport

from .test_signing import NS, OLD, delivers, publish, wait_until

pytestmark = pytest.mark.anyio

#: Forged presence messages in one flood: twelve times the bound on records is plenty to
#: show it holds (benchmarks/backplane_flood.py floods with 50,000 and measures memory).
FLOOD = 6_000
#: Published at a time; the hub's subscriptions hold 10,000 messages each.
CHUNK = 2_000
MAX_NODES = 8
MAX_RECORDS = 500
#: A lease long enough that no node's lapses while the other is busy with a flood.
HEARTBEAT = 0.2
TTL = 3.0


class Counting(Store):
    """A node's way to the shared store, counting the sessions it opens."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.sessions = 0
        self.open = 0
        self.most_open = 0

    @asynccontextmanager
    async def session(self) -> AsyncIterator[StoreSession]:
        self.sessions += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            async with self.store.session() as session:
                yield session
        finally:
            self.open -= 1


class Hiding(Store):
    """A node's way to the shared store, which reads the leases of ``hidden`` as lapsed."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.hidden: set[str] = set()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[StoreSession]:
        async with self.store.session() as session:
            yield _Hiding(session, self.hidden)


class _Hiding(StoreSession):
    def __init__(self, session: StoreSession, hidden: set[str]) -> None:
        self.session = session
        self.hidden = hidden

    async def publish(self, data: bytes) -> int | None:
        return await self.session.publish(data)

    async def publish_many(self, data: list[bytes]) -> list[int | None]:
        return await self.session.publish_many(data)

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self.session.subscribe()

    async def put_member(self, node: str, identifier: str, groups: list[str]) -> None:
        await self.session.put_member(node, identifier, groups)

    async def del_member(self, node: str, identifier: str) -> None:
        await self.session.del_member(node, identifier)

    async def replace_node(self, node: str, snapshot: Mapping[str, list[str]], ttl: float) -> None:
        await self.session.replace_node(node, snapshot, ttl)

    async def beat(self, node: str, ttl: float) -> None:
        await self.session.beat(node, ttl)

    async def live_nodes(self) -> set[str]:
        return await self.session.live_nodes() - self.hidden

    async def load(self, node: str) -> dict[str, list[str]]:
        return await self.session.load(node)

    async def forget(self, node: str) -> None:
        await self.session.forget(node)


@asynccontextmanager
async def node(
    store: Callable[[], Store], name: str, **options: Any
) -> AsyncIterator[tuple[ConnectionManager, Backplane, Counting]]:
    counting = Counting(store())
    backplane = Backplane(
        counting,
        namespace=NS,
        node_id=name,
        heartbeat_interval=HEARTBEAT,
        node_ttl=TTL,
        max_nodes=MAX_NODES,
        max_records=MAX_RECORDS,
        **options,
    )
    async with ConnectionManager(backplane=backplane) as manager:
        await wait_until(lambda: connected(manager), f"{name} connected")
        yield manager, backplane, counting


def forged(kind: str, node: str, **fields: Any) -> bytes:
    body = {"v": VERSION, "ns": NS, "node": node, "run": "forged", "seq": 0, "k": kind}
    return json.dumps(body | fields, separators=(",", ":")).encode()


async def flood(
    store: Callable[[], Store], receiver: ConnectionManager, frames: list[bytes]
) -> None:
    """Publish ``frames`` in chunks, each once ``receiver`` has taken the one before."""
    for start in range(0, len(frames), CHUNK):
        chunk = frames[start : start + CHUNK]
        before = backplane_stat(receiver, "received") + backplane_stat(receiver, "dropped")
        await publish(store(), *chunk)
        goal = before + len(chunk)
        await wait_until(
            lambda g=goal: (
                backplane_stat(receiver, "received") + backplane_stat(receiver, "dropped") >= g
            ),
            "the receiver took the chunk",
            timeout=30,
        )


def test_bounds_are_validated() -> None:
    from wsfleet import InMemoryHub

    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(InvalidArgument):
            Backplane(InMemoryHub(), max_nodes=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            Backplane(InMemoryHub(), max_records=bad)  # type: ignore[arg-type]


async def test_a_presence_flood_takes_bounded_memory(store: Callable[[], Store]) -> None:
    async with AsyncExitStack() as stack:
        n1, _, _ = await stack.enter_async_context(node(store, "n1"))
        n2, backplane, _ = await stack.enter_async_context(node(store, "n2"))
        view = backplane.view
        await wait_until(lambda: view.knows("n1"), "n2 knows n1")
        alice = MemoryTransport()
        n1.register(alice, "alice")
        await wait_until(lambda: n2.nodes_of("alice") == {"n1"}, "n2 sees alice")
        third = FLOOD // 3
        frames = [forged("online", f"made-up-{i}", id=f"u{i}") for i in range(third)]
        frames += [forged("online", "n1", id=f"v{i}") for i in range(third)]
        frames += [
            forged("join", "n1", id="alice", group=f"g{i}") for i in range(FLOOD - 2 * third)
        ]
        await flood(store, n2, frames)
        # Nothing of the made-up nodes; of n1, at most its bound.
        assert view.nodes() <= {"n1"}
        assert view.size("n1") <= MAX_RECORDS
        assert len(view.identifiers()) <= MAX_RECORDS
        assert len(backplane._link._receipts) <= MAX_NODES
        assert backplane_stat(n2, "refused: unknown node") == third
        assert backplane_stat(n2, "refused: too many records") >= FLOOD - third - MAX_RECORDS
        # It keeps serving: the real n1 is still seen, and messages cross both ways.
        assert "alice" in view.identifiers()
        await delivers(n1, n2, "after the flood")
        await delivers(n2, n1, "and back")
        # What was forged in n1's name lasts until n1's record is loaded again.
        backplane.refresh_after = 0.2
        await wait_until(lambda: view.size("n1") == 1, "the forged records are gone")
        assert view.identifiers() == {"alice"}
        assert n2.groups_of("alice") == set()


async def test_a_hello_flood_opens_one_connection_at_a_time(store: Callable[[], Store]) -> None:
    async with AsyncExitStack() as stack:
        n1, _, _ = await stack.enter_async_context(node(store, "n1"))
        n2, backplane, counting = await stack.enter_async_context(node(store, "n2"))
        await wait_until(lambda: backplane.view.knows("n1"), "n2 knows n1")
        sessions = counting.sessions
        hellos = 1_000
        frames = [forged("hello", f"made-up-{i}") for i in range(hellos)]
        await flood(store, n2, frames)
        await wait_until(
            lambda: (
                backplane_stat(n2, "refused: hello of no node with a lease")
                + backplane_stat(n2, "refused: too many hellos")
                == hellos
            ),
            "every forged hello refused",
        )
        assert counting.most_open <= 2  # the link's own session, and one for the reloads
        assert counting.sessions - sessions < hellos // 10
        assert len(backplane._publisher._peers) <= MAX_NODES
        assert backplane.view.nodes() == {"n1"}
        assert len(backplane._link._receipts) <= MAX_NODES
        await delivers(n1, n2, "after the hellos")


async def test_with_signing_a_flood_leaves_no_trace(store: Callable[[], Store]) -> None:
    async with AsyncExitStack() as stack:
        n1, _, _ = await stack.enter_async_context(node(store, "n1", secrets=OLD))
        n2, backplane, _ = await stack.enter_async_context(node(store, "n2", secrets=OLD))
        await wait_until(lambda: backplane.view.knows("n1"), "n2 knows n1")
        receipts = len(backplane._link._receipts)
        frames = [forged("online", "n1", id=f"v{i}") for i in range(CHUNK)]
        frames += [forged("hello", f"made-up-{i}") for i in range(CHUNK)]
        other = Signing(b"not the fleet's key, 32 bytes.." + b"!")
        frames += [other.seal(frame, 1, time.time()) for frame in frames[:CHUNK]]
        await flood(store, n2, frames)
        assert backplane_stat(n2, "dropped: unsigned") == 2 * CHUNK
        assert backplane_stat(n2, "dropped: bad signature") == CHUNK
        assert backplane.view.size("n1") == 0
        assert len(backplane._link._receipts) == receipts
        assert len(backplane._link._fresh) <= 1
        await delivers(n1, n2, "after the forgeries")


@pytest.fixture(params=["hub", "redis"])
def store(request: pytest.FixtureRequest) -> Callable[[], Store]:
    if request.param == "hub":
        from wsfleet import InMemoryHub

        hub = InMemoryHub()
        return lambda: hub
    pytest.importorskip("coredis")
    from wsfleet.adapters.redis import RedisStore

    server = request.getfixturevalue("redis")
    return lambda: RedisStore(server.url, namespace=NS)


# -- what a node reads from Redis ------------------------------------------------------------------


async def test_what_is_read_from_redis_is_bounded(redis: Any) -> None:
    """Whoever can write the keys can plant records; a node reads a bounded part of them."""
    coredis = pytest.importorskip("coredis")
    from wsfleet.adapters.redis import MAX_RECORD_BYTES, RedisStore

    future = time.time() + 3600
    async with coredis.Redis.from_url(redis.url) as client:
        await client.zadd(f"{NS}:nodes", {f"planted-{i}": future + i for i in range(3000)})
        big = {f"id-{i}": json.dumps([f"g{i}"]) for i in range(5000)}
        await client.hset(f"{NS}:node:planted-1", big)
        huge = json.dumps(["x" * 100] * (MAX_RECORD_BYTES // 100))
        await client.hset(f"{NS}:node:planted-2", {"one": huge, "two": '["ok"]'})
    store = RedisStore(redis.url, namespace=NS, max_nodes=MAX_NODES, max_records=MAX_RECORDS)
    async with store.session() as session:
        live = await session.live_nodes()
        assert len(live) == MAX_NODES + 1
        assert live == {f"planted-{i}" for i in range(MAX_NODES + 1)}
        assert len(await session.load("planted-1")) == MAX_RECORDS
        assert await session.load("planted-2") == {"two": ["ok"]}
    # Leases planted far ahead do not push the real nodes out: they renew theirs a few
    # seconds at a time, so theirs end first.
    async with AsyncExitStack() as stack:
        n1, _, _ = await stack.enter_async_context(
            node(lambda: RedisStore(redis.url, namespace=NS, max_nodes=MAX_NODES), "n1")
        )
        n2, backplane, _ = await stack.enter_async_context(
            node(lambda: RedisStore(redis.url, namespace=NS, max_nodes=MAX_NODES), "n2")
        )
        await wait_until(lambda: backplane.view.knows("n1"), "n2 follows n1")
        assert len(backplane.view.nodes()) <= MAX_NODES
        await delivers(n1, n2, "past the planted leases")


async def test_a_join_from_a_node_not_known_yet_still_reaches_this_nodes_sockets(
    store: Callable[[], Store],
) -> None:
    """A real node may be unknown here for a moment (its lease read as lapsed under load):
    its membership changes wait for its record, but this node's own sockets of the
    identifier still follow the join, which no record would bring back."""
    hiding = Hiding(store())
    async with AsyncExitStack() as stack:
        n1, _, _ = await stack.enter_async_context(node(store, "n1"))
        n2, backplane, _ = await stack.enter_async_context(node(lambda: hiding, "n2"))
        await wait_until(lambda: backplane.view.knows("n1"), "n2 knows n1")
        n1.register(MemoryTransport(), "alice")
        n2.register(MemoryTransport(), "alice")
        await wait_until(lambda: n2.nodes_of("alice") == {"n1", "n2"}, "n2 sees alice on n1")
        hiding.hidden.add("n1")  # n2 reads n1's lease as lapsed
        await wait_until(lambda: not backplane.view.knows("n1"), "n2 forgot n1")
        n1.add_to_group("alice", "room")
        await wait_until(
            lambda: backplane_stat(n2, "refused: unknown node") == 1, "refused for the view"
        )
        assert n2.groups() == {"room"}  # alice's socket here is in the room
        # n1's lease is read again: the next heartbeat loads its record, the view catches up.
        hiding.hidden.clear()
        await wait_until(lambda: n2.nodes_of("alice") == {"n1", "n2"}, "n1 loaded again")
        assert n2.get_group_members("room") == {"alice"}


async def test_forged_joins_of_a_user_here_are_bounded(store: Callable[[], Store]) -> None:
    """A join in a node's name puts this node's own sockets of the identifier in the group:
    so many groups at most."""
    async with AsyncExitStack() as stack:
        n1, _, _ = await stack.enter_async_context(node(store, "n1"))
        n2, backplane, _ = await stack.enter_async_context(node(store, "n2"))
        await wait_until(lambda: backplane.view.knows("n1"), "n2 knows n1")
        n2.register(MemoryTransport(), "bob")
        frames = [forged("join", "n1", id="bob", group=f"g{i}") for i in range(2 * MAX_RECORDS)]
        await flood(store, n2, frames)
        assert len(n2.groups()) == MAX_RECORDS
        assert backplane_stat(n2, "refused: too many groups") == MAX_RECORDS
        await delivers(n1, n2, "after the joins")


@pytest.mark.parametrize("kind", ["tally", "send"])
async def test_a_count_forged_far_ahead_does_not_silence_the_node_it_names(
    store: Callable[[], Store], kind: str
) -> None:
    """Anyone who can publish on an unsigned bus can name a node and its run. One envelope
    numbered far ahead of that run would make every genuine send after it look "already
    counted": the named node would go silent for the rest of its run, and the receiver's
    count of sends lost in transit would jump by the forged distance. The jump is refused
    and counted instead; the node's own sends go on arriving."""
    async with AsyncExitStack() as stack:
        n1, b1, _ = await stack.enter_async_context(node(store, "n1"))
        n2, _, _ = await stack.enter_async_context(node(store, "n2"))
        await delivers(n1, n2, "before")
        run = b1._link.publisher._numbers.run
        fields: dict[str, Any] = {"run": run, "seq": 10**15}
        if kind == "send":
            fields["to"] = "nobody-knows-this-target"  # unreadable past its header
        await flood(store, n2, [forged(kind, "n1", **fields)])
        for i in range(3):
            await delivers(n1, n2, f"after {i}")
        assert backplane_stat(n2, "dropped: implausible count") == 1
        assert backplane_stat(n2, "lost in transit") == 0


def test_receipts_believe_a_long_jump_only_when_the_next_envelope_follows_it() -> None:
    from wsfleet.backplane.accounting import IMPLAUSIBLE, MAX_JUMP, Receipts
    from wsfleet.backplane.wire import Header

    def at(seq: int) -> Header:
        return Header("send", "a", "r1", seq)  # type: ignore[arg-type]

    receipts = Receipts()
    assert receipts.arrived(at(1), 0.0) == (True, 0)
    far = 2 + MAX_JUMP
    assert receipts.arrived(at(far), 0.0) == (False, IMPLAUSIBLE)  # alone: refused
    assert receipts.arrived(at(2), 0.0) == (True, 0)  # the real count goes on
    assert receipts.arrived(at(2 + MAX_JUMP), 0.0) == (True, MAX_JUMP - 1)  # a gap, within
    last = 2 + MAX_JUMP
    assert receipts.arrived(at(last + 3 * MAX_JUMP), 0.0) == (False, IMPLAUSIBLE)
    # A real outage that long: the next envelope follows the first, and both are believed.
    assert receipts.arrived(at(last + 3 * MAX_JUMP + 1), 0.0) == (True, 3 * MAX_JUMP)
