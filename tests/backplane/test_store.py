"""A store for another engine is written with ``wsfleet.backplane``'s public names only.

``KeyValueStore`` below is written as an application would write a store for an engine
wsfleet does not ship: records kept as JSON text under string keys, as a key-value server
keeps them; a bus of subscriber queues; leases on the clock; and a ``publish`` that cannot
tell how many subscribers got a message (it answers ``None``, which the backplane must take).
Two managers joined by it make one fleet. A check of this module's own imports keeps it
honest: none of them names a private module.
"""

from __future__ import annotations

import ast
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from support import wait_until
from wsfleet import ConnectionManager, RetryPolicy
from wsfleet.backplane import Backplane, Store, StoreSession
from wsfleet.testing import MemoryTransport

pytestmark = pytest.mark.anyio

HEARTBEAT = 0.05
TTL = 0.2
FAST = RetryPolicy(max_attempts=1_000_000_000, base_delay=0.01, max_delay=0.05, jitter=0)


class KeyValueStore(Store):
    """A store over what a key-value engine offers: keys with expiry, and a channel."""

    def __init__(self) -> None:
        #: node -> identifier -> its groups, as JSON text.
        self.records: dict[str, dict[str, str]] = {}
        #: node -> when its lease ends.
        self.leases: dict[str, float] = {}
        self.channel: list[MemoryObjectSendStream[bytes]] = []

    @asynccontextmanager
    async def session(self) -> AsyncIterator[StoreSession]:
        yield KeyValueSession(self)


class KeyValueSession(StoreSession):
    def __init__(self, store: KeyValueStore) -> None:
        self.store = store

    async def publish(self, data: bytes) -> None:
        for subscriber in list(self.store.channel):
            subscriber.send_nowait(data)
        await checkpoint()

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[bytes]]:
        send, receive = anyio.create_memory_object_stream[bytes](1000)
        self.store.channel.append(send)
        messages = self._messages(receive)
        try:
            yield messages
        finally:
            await messages.aclose()
            self.store.channel.remove(send)
            send.close()
            receive.close()

    async def _messages(self, receive: MemoryObjectReceiveStream[bytes]) -> AsyncGenerator[bytes]:
        async for data in receive:
            yield data

    async def put_member(self, node: str, identifier: str, groups: list[str]) -> None:
        self.store.records.setdefault(node, {})[identifier] = json.dumps(groups)

    async def del_member(self, node: str, identifier: str) -> None:
        self.store.records.get(node, {}).pop(identifier, None)

    async def replace_node(self, node: str, snapshot: Mapping[str, list[str]], ttl: float) -> None:
        self.store.records[node] = {k: json.dumps(v) for k, v in snapshot.items()}
        await self.beat(node, ttl)

    async def beat(self, node: str, ttl: float) -> None:
        self.store.leases[node] = anyio.current_time() + ttl

    async def live_nodes(self) -> set[str]:
        now = anyio.current_time()
        for node, until in list(self.store.leases.items()):
            if until <= now:  # expired: the engine drops the lease and the record with it
                del self.store.leases[node]
                self.store.records.pop(node, None)
        return set(self.store.leases)

    async def load(self, node: str) -> dict[str, list[str]]:
        return {k: json.loads(v) for k, v in self.store.records.get(node, {}).items()}

    async def forget(self, node: str) -> None:
        self.store.leases.pop(node, None)
        self.store.records.pop(node, None)


@asynccontextmanager
async def two_nodes(store: Store) -> AsyncIterator[tuple[ConnectionManager, ConnectionManager]]:
    """Two managers joined by ``store``, once each knows the other."""
    async with AsyncExitStack() as stack:
        managers, views = [], []
        for name in ("n1", "n2"):
            backplane = Backplane(
                store, node_id=name, heartbeat_interval=HEARTBEAT, node_ttl=TTL, retry_policy=FAST
            )
            managers.append(await stack.enter_async_context(ConnectionManager(backplane=backplane)))
            views.append(backplane.view)
        await wait_until(
            lambda: (
                all(m.stats().backplane_state == "CONNECTED" for m in managers)
                and views[0].nodes() == {"n2"}
                and views[1].nodes() == {"n1"}
            ),
            "both nodes connected, each knowing the other",
        )
        yield managers[0], managers[1]


def test_this_module_imports_no_private_module_of_wsfleet() -> None:
    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.append(node.module)
        elif isinstance(node, ast.Import):
            imported.extend(alias.name for alias in node.names)
    ours = [name for name in imported if name.split(".")[0] == "wsfleet"]
    assert "wsfleet.backplane" in ours
    private = [name for name in ours if any(part.startswith("_") for part in name.split("."))]
    assert private == []


async def test_two_managers_make_one_fleet_through_a_store_written_outside_wsfleet() -> None:
    store = KeyValueStore()
    async with two_nodes(store) as (n1, n2):
        alice, bob = MemoryTransport("alice"), MemoryTransport("bob")
        n1.register(alice, "alice")
        n2.register(bob, "bob")
        n1.add_to_group("alice", "room")
        await wait_until(lambda: n2.get_group_members("room") == {"alice"}, "n2 sees the room")
        assert json.loads(store.records["n1"]["alice"]) == ["room"]

        delivery = await n2.send_to_group("room", "to the room")
        assert (delivery, delivery.published) == (0, True)
        await wait_until(lambda: alice.received == ["to the room"], "alice got the room's")
        await n1.broadcast("to all but bob", exclude="bob")
        await n1.send_to_one("bob", b"\x00bytes")
        await wait_until(lambda: bob.received == [b"\x00bytes"], "bob got his own")
        assert alice.received == ["to the room", "to all but bob"]

        assert n1.nodes_of("bob") == {"n2"}
        assert await n1.disconnect_identifier("bob", 4000, "bye") == 0
        await wait_until(lambda: bob.close_code == 4000, "bob closed from the other node")
        await wait_until(lambda: n1.nodes_of("bob") == set(), "n1 saw bob go")
        for manager in (n1, n2):
            # The store could not count receivers: nothing was taken for lost.
            assert manager.stats().drops == {}
    # Both left cleanly: their records and leases went with them.
    assert (store.records, store.leases) == ({}, {})
