"""A fleet that shares a secret trusts only what a holder of it published.

Every test runs over the in-process ``InMemoryHub`` and over a real ``redis-server`` (the
``redis`` fixture; skipped without one), on asyncio and on trio. Forged frames are published
straight on the bus, as anyone who can reach Redis could: unsigned, signed with another
key, with a cut signature, with a good signature over an altered envelope, replayed, stale.
Each is dropped and counted on every node, reaches no socket, and the fleet goes on.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any

import anyio
import pytest

from support import backplane_stat, connected
from support import wait_until as wait_until_within
from wsfleet import Backplane, ConnectionManager, InMemoryHub, InvalidArgument, WrongType
from wsfleet.backplane import Store
from wsfleet.backplane.signing import PREFIX, Signing
from wsfleet.backplane.wire import VERSION
from wsfleet.testing import MemoryTransport

pytestmark = pytest.mark.anyio

NS = "wsfleet-sign"
HEARTBEAT = 0.1
TTL = 0.4
OLD = b"the old secret, 32 bytes long..."
NEW = "the new secret, as text, 32+ long"
OTHER = b"a secret of another fleet, 32 b."

#: Nodes on a real Redis may take their time on a loaded machine: longer than the default.
wait_until = partial(wait_until_within, timeout=15.0)


@pytest.fixture(params=["hub", "redis"])
def store(request: pytest.FixtureRequest) -> Callable[[], Store]:
    """A way to the shared store: one ``InMemoryHub``, or a ``RedisStore`` per node."""
    if request.param == "hub":
        hub = InMemoryHub()
        return lambda: hub
    pytest.importorskip("coredis")
    from wsfleet.adapters.redis import RedisStore

    server = request.getfixturevalue("redis")
    return lambda: RedisStore(server.url, namespace=NS)


async def publish(store: Store, *frames: bytes) -> None:
    """Put ``frames`` on the bus as they are, as anyone who can reach the store could."""
    async with store.session() as session:
        await session.publish_many(list(frames))


@asynccontextmanager
async def tap(store: Store) -> AsyncIterator[list[bytes]]:
    """Every frame published on the bus while the block runs, as it was published."""
    heard: list[bytes] = []

    async def listen(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with store.session() as session, session.subscribe() as messages:
                task_status.started()
                async for frame in messages:
                    heard.append(frame)
        except BaseExceptionGroup:
            # coredis's pub/sub adds its own errors to the cancellation that ends the block
            # (on asyncio, in place of it).
            if not stopping:
                raise

    stopping = False

    async with anyio.create_task_group() as tg:
        await tg.start(listen)
        yield heard
        stopping = True
        tg.cancel_scope.cancel()


@asynccontextmanager
async def node(
    store: Callable[[], Store], name: str, secrets: Any, **options: Any
) -> AsyncIterator[ConnectionManager]:
    backplane = Backplane(
        store(),
        namespace=NS,
        node_id=name,
        heartbeat_interval=HEARTBEAT,
        node_ttl=TTL,
        secrets=secrets,
        **options,
    )
    async with ConnectionManager(backplane=backplane) as manager:
        await wait_until(lambda: connected(manager), f"{name} connected")
        yield manager


def knows(manager: ConnectionManager, *others: str) -> bool:
    backplane = manager._backplane
    assert backplane is not None
    return backplane.view.nodes() >= set(others)


@asynccontextmanager
async def pair(
    store: Callable[[], Store], first: Any, second: Any
) -> AsyncIterator[tuple[ConnectionManager, ConnectionManager]]:
    """Two nodes, ``n1`` and ``n2``, with these secrets, each knowing of the other."""
    async with AsyncExitStack() as stack:
        n1 = await stack.enter_async_context(node(store, "n1", first))
        n2 = await stack.enter_async_context(node(store, "n2", second))
        await wait_until(lambda: knows(n1, "n2") and knows(n2, "n1"), "each knows the other")
        yield n1, n2


async def delivers(sender: ConnectionManager, receiver: ConnectionManager, text: str) -> None:
    """``sender``'s broadcast reaches a socket of ``receiver``, once."""
    socket = MemoryTransport()
    receiver.register(socket, f"listener-of-{text}")
    try:
        result = await sender.broadcast(text)
        assert result.published
        await wait_until(lambda: text in socket.received, f"{text!r} delivered")
        assert socket.received.count(text) == 1
    finally:
        receiver.unregister(socket)


def envelope(node: str = "n1", **fields: Any) -> bytes:
    body = {"v": VERSION, "ns": NS, "node": node, "run": "forged", "seq": 1, "k": "send"}
    body |= {"to": "all", "text": "forged"} | fields
    return json.dumps(body, separators=(",", ":")).encode()


# -- the keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secrets", "error"),
    [
        (123, WrongType),
        ([OLD, 123], WrongType),
        (bytearray(OLD), WrongType),
        (b"short", InvalidArgument),
        ("fifteen chars..", InvalidArgument),
        ([], InvalidArgument),
        ([NEW, OLD, OTHER], InvalidArgument),
        ([OLD, OLD], InvalidArgument),
        ([OLD.decode(), OLD], InvalidArgument),  # the same key, as str and as bytes
    ],
)
def test_bad_secrets_are_refused(secrets: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        Backplane(InMemoryHub(), secrets=secrets)
    with pytest.raises(error):
        Signing(secrets)


def test_keys_are_never_shown() -> None:
    backplane = Backplane(InMemoryHub(), secrets=[NEW, OLD])
    assert backplane.signing is not None
    assert repr(backplane.signing) == "Signing(2 keys)"
    assert OLD.decode() not in repr(backplane) + repr(backplane.signing)
    assert Backplane(InMemoryHub()).signing is None  # off by default


def test_a_frame_opens_with_a_key_it_was_signed_with_only() -> None:
    payload = envelope()
    now = 1_700_000_000.0
    frame = Signing([NEW, OLD]).seal(payload, 7, now)
    assert frame.startswith(PREFIX)
    assert frame.endswith(payload)
    for keys in ([OLD], [NEW], [OTHER, OLD], [NEW, OTHER]):
        opened, stamp = Signing(keys).open(frame, now + 1)
        assert opened == payload
        assert (stamp.n, stamp.ms) == (7, int(now * 1000))
    with pytest.raises(Exception, match="bad signature"):
        Signing(OTHER).open(frame, now)
    with pytest.raises(Exception, match="stale"):
        Signing(OLD).open(frame, now + 61)
    with pytest.raises(Exception, match="unsigned"):
        Signing(OLD).open(payload, now)


# -- a fleet that shares a secret ------------------------------------------------------------------


async def test_nodes_sharing_a_secret_deliver(store: Callable[[], Store]) -> None:
    async with pair(store, OLD, [OLD]) as (n1, n2), tap(store()) as heard:
        await delivers(n1, n2, "one way")
        await delivers(n2, n1, "the other")
        alice = MemoryTransport()
        n2.register(alice, "alice")
        n2.add_to_group("alice", "room")
        await wait_until(lambda: n1.get_group_members("room") == {"alice"}, "n1 sees the room")
        assert n1.nodes_of("alice") == {"n2"}
        for manager in (n1, n2):
            assert manager.stats().drops == {}
            assert backplane_stat(manager, "dropped") == backplane_stat(manager, "replayed") == 0
        assert heard
        assert all(frame.startswith(PREFIX) for frame in heard)


async def test_forged_frames_are_dropped_counted_and_deliver_nothing(
    store: Callable[[], Store],
) -> None:
    async with pair(store, OLD, OLD) as (n1, n2):
        bob = MemoryTransport()
        n2.register(bob, "bob")
        await wait_until(lambda: n1.nodes_of("bob") == {"n2"}, "n1 sees bob")
        now = time.time()
        payload = envelope("n1", text="forged")
        good = Signing(OLD).seal(payload, 1, now)
        head, _, rest = good.partition(b"\n")
        altered = head + b"\n" + rest.replace(b'"forged"', b'"altered"')
        cut = head[:-10] + b"\n" + rest
        kick = envelope("n1", k="kick", id="bob", code=1008, reason="forged")
        unsigned = [payload, kick]
        bad = [
            Signing(OTHER).seal(payload, 2, now),  # another key
            Signing(OTHER).seal(kick, 3, now),
            cut,  # a signature cut short
            altered,  # a good signature over another envelope
            PREFIX + b"1 2 3\n" + payload,  # no signature at all
            PREFIX + b"garbage",
        ]
        await publish(store(), *unsigned, *bad)
        for manager in (n1, n2):
            await wait_until(
                lambda m=manager: (
                    backplane_stat(m, "dropped: unsigned") == len(unsigned)
                    and backplane_stat(m, "dropped: bad signature") == len(bad)
                ),
                "every forged frame counted",
            )
            assert backplane_stat(manager, "dropped") == len(unsigned) + len(bad)
            assert manager.stats().drops["backplane: bad signature"] == len(bad)
        assert bob.received == []
        assert not bob.closed  # the forged kick closed nothing
        assert backplane_stat(n2, "link error") == 0
        await delivers(n1, n2, "after the forgeries")


async def test_a_node_without_the_secret_is_refused_both_ways(
    store: Callable[[], Store],
) -> None:
    """A fleet whose nodes disagree fails loudly and countably, not silently."""
    async with AsyncExitStack() as stack:
        signed = await stack.enter_async_context(node(store, "n1", OLD))
        plain = await stack.enter_async_context(node(store, "n2", None))
        await wait_until(lambda: knows(signed, "n2") and knows(plain, "n1"), "leases seen")
        listener = MemoryTransport()
        plain.register(listener, "x")
        other = MemoryTransport()
        signed.register(other, "y")
        await signed.broadcast("to the plain node")
        await plain.broadcast("to the signed node")
        await wait_until(
            lambda: backplane_stat(plain, "dropped: signed, no key here") >= 1, "plain counts"
        )
        await wait_until(lambda: backplane_stat(signed, "dropped: unsigned") >= 1, "signed counts")
        await anyio.sleep(HEARTBEAT)
        # Each got its own node's broadcast, delivered locally; nothing crossed.
        assert listener.received == ["to the signed node"]
        assert other.received == ["to the plain node"]


# -- changing keys ---------------------------------------------------------------------------------


async def test_rotation_keeps_every_pair_talking(store: Callable[[], Store]) -> None:
    """[old] -> [new, old] one node at a time, then [new] one at a time: at each step both
    directions deliver; once no node signs with the old key, it is refused."""
    async with pair(store, [NEW, OLD], [OLD]) as (a, b):
        await delivers(a, b, "a on [new, old] to b on [old]")
        await delivers(b, a, "b on [old] to a on [new, old]")
    async with pair(store, [NEW, OLD], [NEW]) as (a, b):
        await delivers(a, b, "a on [new, old] to b on [new]")
        await delivers(b, a, "b on [new] to a on [new, old]")
    async with pair(store, [OLD], [NEW]) as (a, b):  # the old key retired: refused
        socket = MemoryTransport()
        b.register(socket, "s")
        await a.broadcast("signed with the retired key")
        await wait_until(lambda: backplane_stat(b, "dropped: bad signature") >= 1, "refused")
        assert socket.received == []


# -- replays ---------------------------------------------------------------------------------------


async def test_a_replayed_frame_is_refused(store: Callable[[], Store]) -> None:
    async with AsyncExitStack() as stack:
        heard = await stack.enter_async_context(tap(store()))
        first = await stack.enter_async_context(node(store, "n1", OLD))
        n2 = await stack.enter_async_context(node(store, "n2", OLD))
        await wait_until(lambda: knows(first, "n2") and knows(n2, "n1"), "each knows the other")
        bob = MemoryTransport()
        n2.register(bob, "bob")
        await first.broadcast("once")
        await wait_until(lambda: bob.received == ["once"], "delivered")
        captured = [frame for frame in heard if b'"once"' in frame]
        assert len(captured) == 1
        # Heard again, as it was: the same run, a number already heard.
        await publish(store(), captured[0])
        await wait_until(lambda: backplane_stat(n2, "replayed") == 1, "the copy refused")
        # Stale: well signed, but signed long ago.
        old = Signing(OLD).seal(envelope("n1", run="r", text="old"), 1, time.time() - 3600)
        await publish(store(), old)
        await wait_until(lambda: backplane_stat(n2, "stale") == 1, "the stale one refused")
        # The sender restarts (a new run); a frame of its earlier run is a replay too.
        await stack.aclose()
    async with AsyncExitStack() as stack:
        n2 = await stack.enter_async_context(node(store, "n2", OLD))
        n1 = await stack.enter_async_context(node(store, "n1", OLD))
        await wait_until(lambda: knows(n1, "n2") and knows(n2, "n1"), "each knows the other")
        bob = MemoryTransport()
        n2.register(bob, "bob")
        await n1.broadcast("from the new run")
        await wait_until(lambda: bob.received == ["from the new run"], "delivered")
        await publish(store(), captured[0])
        await wait_until(
            lambda: backplane_stat(n2, "replayed") == 1, "the earlier run's frame refused"
        )
        await anyio.sleep(HEARTBEAT)
        assert bob.received == ["from the new run"]
        assert backplane_stat(n2, "dropped") == 0


def test_signing_does_no_io() -> None:
    """Like the wire and the accounting, the signing module imports no event loop."""
    import subprocess
    import sys

    code = (
        "import sys, wsfleet.backplane.signing\n"
        "print(sorted(m for m in ('anyio', 'trio', 'asyncio', 'socket', 'coredis') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
