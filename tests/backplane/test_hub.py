"""Several managers, one fleet: the backplane over an in-process ``InMemoryHub``.

Each manager is a node with its own ``Backplane`` on one shared hub, and its sockets are
``MemoryTransport``s. The tests check the contract of the backplane end to end: every fan-out
reaches every target on every node exactly once and in the sender's order; membership and
presence agree across nodes; while the hub is down local delivery goes on and every
cross-node message is either buffered (up to ``buffer``) or dropped and counted, and the link
comes back by itself; a node that leaves cleanly vanishes at once, one that dies when its
lease lapses. Heartbeats and leases are short (50 ms and 200 ms) so that all of it takes
well under a second per test; every wait is bounded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from support import backplane_stat, connected, wait_until
from wsfleet import (
    Backplane,
    ConnectionManager,
    Delivery,
    InMemoryHub,
    InvalidArgument,
    RetryPolicy,
    WrongType,
)
from wsfleet.backplane import Store, StoreSession
from wsfleet.testing import MemoryTransport
from wsfleet.transport import Message

pytestmark = pytest.mark.anyio

HEARTBEAT = 0.05
TTL = 0.2
#: The link redials quickly, so a test never waits long for it after the hub returns.
FAST = RetryPolicy(max_attempts=1_000_000_000, base_delay=0.01, max_delay=0.05, jitter=0)


def down(*managers: ConnectionManager) -> bool:
    return all(m.stats().backplane_state != "CONNECTED" for m in managers)


@dataclass
class Node:
    manager: ConnectionManager
    backplane: Backplane
    sockets: dict[str, list[MemoryTransport]] = field(default_factory=dict)

    @property
    def id(self) -> str:
        node_id = self.manager.node_id
        assert node_id is not None
        return node_id

    def connect(self, identifier: str) -> MemoryTransport:
        socket = MemoryTransport(f"{identifier}@{self.id}#{len(self.sockets.get(identifier, []))}")
        self.manager.register(socket, identifier)
        self.sockets.setdefault(identifier, []).append(socket)
        return socket


@asynccontextmanager
async def fleet(
    store: Store, *names: str, options: Mapping[str, Mapping[str, Any]] | None = None
) -> AsyncIterator[list[Node]]:
    """Start one manager per name, in order, and wait until they all know one another.

    Each node is CONNECTED before the next starts, so node ``i`` hears the ``hello`` of every
    later node; the fleet is ready once those hellos are in and every view knows every node.
    """
    options = options or {}
    async with AsyncExitStack() as stack:
        nodes: list[Node] = []
        for name in names:
            settings: dict[str, Any] = {
                "node_id": name,
                "heartbeat_interval": HEARTBEAT,
                "node_ttl": TTL,
                "retry_policy": FAST,
            }
            backplane = Backplane(store, **(settings | dict(options.get(name, {}))))
            manager = ConnectionManager(backplane=backplane)
            await stack.enter_async_context(manager)
            await wait_until(lambda m=manager: connected(m), f"{name} connected")
            nodes.append(Node(manager, backplane))
        for i, node in enumerate(nodes):
            later = len(nodes) - 1 - i
            await wait_until(
                lambda n=node, k=later: backplane_stat(n.manager, "hellos") >= k,
                f"{node.id} heard the later nodes' hellos",
            )
        await wait_until(
            lambda: all(n.backplane.view.nodes() >= set(names) - {n.id} for n in nodes),
            "every view knows every other node",
        )
        yield nodes


class Relay(Store):
    """One node's own way to a shared store, which a test can cut or slow down.

    ``cut``: everything the node tries fails, as for a process that was SIGKILLed or cut off
    by the network; it can no longer renew its lease, and the others are not told.
    ``hold(operation)``: that operation waits until ``release(operation)``, as a store
    that is slow to answer would make it.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cut = False
        self._gates: dict[str, anyio.Event] = {}
        self._waiting: dict[str, int] = {}
        #: Operations that went through, by name.
        self.calls: Counter[str] = Counter()

    def hold(self, operation: str) -> None:
        self._gates[operation] = anyio.Event()

    def release(self, operation: str) -> None:
        self._gates.pop(operation).set()

    def waiting(self, operation: str) -> int:
        return self._waiting.get(operation, 0)

    async def check(self, operation: str) -> None:
        if self.cut:
            raise ConnectionError("cut off")
        self.calls[operation] += 1
        gate = self._gates.get(operation)
        if gate is not None:
            self._waiting[operation] = self._waiting.get(operation, 0) + 1
            try:
                await gate.wait()
            finally:
                self._waiting[operation] -= 1

    @asynccontextmanager
    async def session(self) -> AsyncIterator[StoreSession]:
        await self.check("session")
        async with self.store.session() as session:
            yield _RelaySession(self, session)


class _RelaySession(StoreSession):
    def __init__(self, relay: Relay, session: StoreSession) -> None:
        self.relay = relay
        self.session = session

    async def publish(self, data: bytes) -> int | None:
        await self.relay.check("publish")
        return await self.session.publish(data)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[bytes]]:
        await self.relay.check("subscribe")
        async with self.session.subscribe() as messages:
            yield self._messages(messages)

    async def _messages(self, messages: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for data in messages:
            await self.relay.check("message")
            yield data

    async def put_member(
        self,
        node: str,
        identifier: str,
        groups: list[str],
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        await self.relay.check("put_member")
        await self.session.put_member(node, identifier, groups, meta=meta)

    async def del_member(self, node: str, identifier: str) -> None:
        await self.relay.check("del_member")
        await self.session.del_member(node, identifier)

    async def replace_node(
        self,
        node: str,
        snapshot: Mapping[str, list[str]],
        ttl: float,
        *,
        metas: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        await self.relay.check("replace_node")
        await self.session.replace_node(node, snapshot, ttl, metas=metas)

    async def beat(self, node: str, ttl: float) -> None:
        await self.relay.check("beat")
        await self.session.beat(node, ttl)

    async def live_nodes(self) -> set[str]:
        await self.relay.check("live_nodes")
        return await self.session.live_nodes()

    async def load(self, node: str) -> dict[str, list[str]]:
        await self.relay.check("load")
        return await self.session.load(node)

    async def load_record(self, node: str) -> tuple[dict[str, list[str]], dict[str, object]]:
        await self.relay.check("load")
        return await self.session.load_record(node)

    async def forget(self, node: str) -> None:
        await self.relay.check("forget")
        await self.session.forget(node)


def text(message: Message) -> str:
    return message if isinstance(message, str) else message.decode()


# -- fan-out ---------------------------------------------------------------------------------


async def test_every_kind_of_fan_out_reaches_every_target_on_every_node_once_in_order() -> None:
    hub = InMemoryHub()
    async with fleet(hub, "n1", "n2", "n3") as (n1, n2, n3):
        # ann is on two nodes, dee has two sockets on one; room = {ann, cy}.
        n1.connect("ann")
        n1.connect("dee")
        n1.connect("dee")
        n2.connect("ann")
        n2.connect("bob")
        n3.connect("cy")
        nodes = (n1, n2, n3)
        n1.manager.add_to_group("ann", "room")
        n3.manager.add_to_group("cy", "room")
        await wait_until(
            lambda: (
                all(n.manager.get_group_members("room") == {"ann", "cy"} for n in nodes)
                and "room" in n2.manager.groups()
            ),
            "room = {ann, cy} everywhere, and n2 put its ann socket in the room",
        )
        everyone = {"ann", "bob", "cy", "dee"}
        room = {"ann", "cy"}

        expected: dict[MemoryTransport, list[str]] = {
            s: [] for n in nodes for socks in n.sockets.values() for s in socks
        }

        published = {n.id: 0 for n in nodes}

        async def send(sender: Node, tag: str, targets: set[str], call: Any) -> None:
            delivery = await call
            assert isinstance(delivery, Delivery)
            assert delivery.published is True
            assert delivery.local == sum(len(sender.sockets.get(i, [])) for i in targets), tag
            published[sender.id] += 1
            for node in nodes:
                for identifier in targets:
                    for socket in node.sockets.get(identifier, []):
                        expected[socket].append(tag)

        for r in range(3):
            tag = f"{r}:n1:all"
            await send(n1, tag, everyone, n1.manager.broadcast(tag))
            tag = f"{r}:n2:one-ann"
            await send(n2, tag, {"ann"}, n2.manager.send_to_one("ann", tag.encode()))
            tag = f"{r}:n3:many ✓"
            many = n3.manager.send_to_many(["bob", "dee", "bob", "zed"], tag)
            await send(n3, tag, {"bob", "dee"}, many)
            tag = f"{r}:n1:group"
            await send(n1, tag, room, n1.manager.send_to_group("room", tag.encode()))
            tag = f"{r}:n3:all-but-bob"
            await send(n3, tag, everyone - {"bob"}, n3.manager.broadcast(tag, exclude="bob"))
            tag = f"{r}:n2:group-but-cy"
            await send(n2, tag, {"ann"}, n2.manager.send_to_group("room", tag, exclude="cy"))
            tag = f"{r}:n1:one-cy 日本"
            await send(n1, tag, {"cy"}, n1.manager.send_to_one("cy", tag))
            tag = f"{r}:n2:many-ann-cy"
            await send(n2, tag, {"ann", "cy"}, n2.manager.send_to_many(["cy", "ann"], tag))

        def arrived() -> bool:
            return all(len(s.received) >= len(want) for s, want in expected.items())

        await wait_until(arrived, "every socket got its messages")
        await anyio.sleep(2 * HEARTBEAT)  # time for any duplicate to show up
        for socket, want in expected.items():
            got = [text(m) for m in socket.received]
            assert sorted(got) == sorted(want), socket  # each exactly once, nothing else
            for sender in ("n1", "n2", "n3"):  # in each sender's order
                mine = [t for t in got if t.split(":")[1] == sender]
                assert mine == [t for t in want if t.split(":")[1] == sender], (socket, sender)
        # Text stays text and bytes stay bytes across nodes.
        for socket in n1.sockets["ann"] + n2.sockets["ann"]:
            assert b"0:n2:one-ann" in socket.received
            assert "0:n1:all" in socket.received

        for n in nodes:
            stats = n.manager.stats()
            assert stats.dropped == 0
            assert stats.backplane is not None
            assert stats.backplane["published"] == published[n.id]
            assert stats.backplane.get("malformed", 0) == 0


async def test_a_lone_node_publishes_but_delivers_only_locally() -> None:
    async with fleet(InMemoryHub(), "n1") as (n1,):
        ann = n1.connect("ann")
        delivery = await n1.manager.send_to_one("ann", "hi")
        assert (delivery.local, delivery.published) == (1, True)
        assert delivery == 1  # a Delivery is the local count
        nobody = await n1.manager.send_to_one("bob", "hi")
        assert (nobody.local, nobody.published) == (0, True)
        await wait_until(lambda: backplane_stat(n1.manager, "published") == 2, "published")
        await wait_until(lambda: ann.received == ["hi"], "delivered here")
        assert backplane_stat(n1.manager, "received") == 0  # its own messages are skipped


async def test_without_a_backplane_nothing_is_published() -> None:
    async with ConnectionManager() as manager:
        manager.register(MemoryTransport(), "ann")
        delivery = await manager.broadcast("hi")
        assert isinstance(delivery, Delivery)
        assert (delivery.local, delivery.published) == (1, False)
        assert manager.node_id is None
        assert manager.stats().backplane is None
        assert manager.nodes_of("ann") == {"local"}


async def test_disconnect_identifier_closes_its_sockets_on_every_node() -> None:
    async with fleet(InMemoryHub(), "n1", "n2") as (n1, n2):
        a1, a2, b2 = n1.connect("ann"), n2.connect("ann"), n2.connect("bob")
        await wait_until(lambda: n1.manager.nodes_of("ann") == {"n1", "n2"}, "ann on both")
        assert await n1.manager.disconnect_identifier("ann", 4001, "banned") == 1
        await wait_until(lambda: a1.closed and a2.closed, "both of ann's sockets closed")
        assert (a2.close_code, a2.close_reason) == (4001, "banned")
        assert not b2.closed
        await wait_until(
            lambda: n1.manager.nodes_of("ann") == set() == n2.manager.nodes_of("ann"),
            "ann gone everywhere",
        )


# -- membership and presence ---------------------------------------------------------------


async def test_membership_and_presence_agree_across_nodes() -> None:
    async with fleet(InMemoryHub(), "n1", "n2", "n3") as nodes:
        n1, n2, n3 = nodes
        n1.connect("ann")
        n2.connect("bob")
        n2.connect("bob")
        n3.connect("cy")
        n1.manager.add_to_group("ann", "red")
        n2.manager.add_to_group("bob", "red")
        n2.manager.add_to_group("bob", "blue")
        n3.manager.add_to_group("cy", "blue")

        def agreed() -> bool:
            return all(
                n.manager.get_group_members("red") == {"ann", "bob"}
                and n.manager.get_group_members("blue") == {"bob", "cy"}
                and n.manager.groups_of("bob") == {"red", "blue"}
                and n.manager.nodes_of("bob") == {"n2"}
                and n.manager.online_count() == 3
                for n in nodes
            )

        await wait_until(agreed, "every node sees the same groups and presence")
        for n in nodes:
            assert n.manager.nodes_of("ann") == {"n1"}
            assert n.manager.nodes_of("cy") == {"n3"}
            assert n.manager.nodes_of("zed") == set()
            assert n.manager.groups_of("ann") == {"red"}
            assert n.manager.get_group_members("green") == set()

        n2.manager.remove_from_group("bob", "red")
        await wait_until(
            lambda: all(n.manager.get_group_members("red") == {"ann"} for n in nodes),
            "bob left red everywhere",
        )
        for socket in n2.sockets["bob"]:
            n2.manager.unregister(socket)
        await wait_until(
            lambda: all(
                n.manager.nodes_of("bob") == set()
                and n.manager.get_group_members("blue") == {"cy"}
                and n.manager.online_count() == 2
                for n in nodes
            ),
            "bob went offline everywhere, and out of his groups",
        )


async def test_an_identifier_on_two_nodes() -> None:
    async with fleet(InMemoryHub(), "n1", "n2") as nodes:
        n1, n2 = nodes
        a1 = n1.connect("ann")
        n1.manager.add_to_group("ann", "room")
        a2 = n2.connect("ann")  # her groups follow her to the new node
        await wait_until(
            lambda: all(
                n.manager.nodes_of("ann") == {"n1", "n2"}
                and n.manager.get_group_members("room") == {"ann"}
                and n.manager.groups() == {"room"}  # each node's own socket is in the room
                and n.manager.online_count() == 1
                for n in nodes
            ),
            "ann on both nodes, in the room",
        )

        await n1.manager.send_to_group("room", "to the room")
        await n2.manager.send_to_one("ann", "to ann")
        await wait_until(lambda: len(a1.received) == len(a2.received) == 2, "both sockets")
        # Two senders: each socket gets both, in no particular order between them.
        assert sorted(a1.received) == sorted(a2.received) == ["to ann", "to the room"]

        n2.manager.remove_from_group("ann", "room")  # from the node that did not add her
        await wait_until(
            lambda: all(n.manager.get_group_members("room") == set() for n in nodes),
            "ann out of the room on both nodes",
        )
        assert n1.manager.groups() == set()

        n2.manager.unregister(a2)
        await wait_until(
            lambda: all(n.manager.nodes_of("ann") == {"n1"} for n in nodes), "ann only on n1"
        )
        assert n2.manager.online_count() == 1


async def test_a_third_node_sees_group_changes_made_through_another_node() -> None:
    async with fleet(InMemoryHub(), "n1", "n2", "n3") as nodes:
        n1, n2, n3 = nodes
        a1 = n1.connect("ann")
        n1.manager.add_to_group("ann", "room")
        n2.connect("ann")  # her groups follow her: n2 puts this socket in the room too
        n3.connect("cy")
        await wait_until(
            lambda: (
                all(n.manager.nodes_of("ann") == {"n1", "n2"} for n in nodes)
                and n2.manager.groups() == {"room"}
            ),
            "ann on two nodes, in the room on both",
        )
        n1.manager.unregister(a1)  # she is still in the room on n2
        await wait_until(lambda: n3.manager.nodes_of("ann") == {"n2"}, "n3 saw ann leave n1")
        await anyio.sleep(2 * HEARTBEAT)
        assert n2.manager.get_group_members("room") == {"ann"}
        assert n1.manager.get_group_members("room") == {"ann"}
        assert n3.manager.get_group_members("room") == {"ann"}


async def test_a_node_starting_while_an_identifier_comes_online_still_sees_it() -> None:
    # A membership change must be in the store before it is announced: a node that starts
    # between the two would otherwise miss both, for good.
    hub = InMemoryHub()
    relay = Relay(hub)  # n2's store is slow to record its members
    async with fleet(relay, "n2") as (n2,):
        relay.hold("put_member")
        n2.connect("bob")
        await wait_until(lambda: relay.waiting("put_member") == 1, "n2 is recording bob")
        async with fleet(hub, "n1") as (n1,):  # starts in that window
            relay.release("put_member")
            await wait_until(lambda: "bob" in hub.members.get("n2", {}), "bob recorded")
            await wait_until(lambda: n1.manager.nodes_of("bob") == {"n2"}, "n1 sees bob")


# -- outages ----------------------------------------------------------------------------------


async def test_hub_down_local_delivery_goes_on_and_cross_node_drops_are_counted() -> None:
    hub = InMemoryHub()
    async with fleet(hub, "n1", "n2") as nodes:
        n1, n2 = nodes
        ann, bob = n1.connect("ann"), n2.connect("bob")
        await wait_until(lambda: n1.manager.nodes_of("bob") == {"n2"}, "n1 sees bob")
        await n1.manager.send_to_one("bob", "before")
        await wait_until(lambda: bob.received == ["before"], "bob got 'before'")

        hub.down = True
        await wait_until(lambda: down(n1.manager, n2.manager), "both links noticed")
        sent = {"n1": 0, "n2": 0}
        for i in range(5):
            d = await n1.manager.broadcast(f"all {i}")
            assert (d.local, d.published) == (1, False)
            d = await n1.manager.send_to_one("bob", f"bob {i}")
            assert (d.local, d.published) == (0, False)
            d = await n2.manager.send_to_group("nowhere", f"group {i}")
            assert (d.local, d.published) == (0, False)
            sent["n1"] += 2
            sent["n2"] += 1
        n1.manager.add_to_group("ann", "red")  # not published now: re-asserted later
        eve = n1.connect("eve")
        await wait_until(
            lambda: ann.received == [f"all {i}" for i in range(5)], "local delivery went on"
        )
        assert bob.received == ["before"]
        for node in nodes:
            stats = node.manager.stats()
            assert stats.drops == {"backplane: link down": sent[node.id]}
            assert stats.backplane is not None
            assert stats.backplane["dropped"] == sent[node.id]
            assert stats.backplane["dropped: link down"] == sent[node.id]
            assert stats.backplane["link error"] >= 1

        hub.down = False
        await wait_until(lambda: connected(n1.manager, n2.manager), "the links came back")
        await wait_until(
            lambda: (
                n2.manager.nodes_of("eve") == {"n1"}
                and n2.manager.get_group_members("red") == {"ann"}
            ),
            "n1's membership re-asserted after the outage",
        )
        await n1.manager.send_to_one("bob", "after")
        await n2.manager.send_to_one("eve", "after")
        await wait_until(lambda: bob.received[-1:] == eve.received == ["after"], "delivered")
        assert bob.received == ["before", "after"]
        for node in nodes:
            stats = node.manager.stats()
            assert stats.dropped == sent[node.id]  # nothing more was lost
            assert stats.backplane is not None
            assert stats.backplane["link connected"] >= 2


async def test_the_link_comes_back_after_repeated_outages() -> None:
    hub = InMemoryHub()
    async with fleet(hub, "n1", "n2") as (n1, n2):
        bob = n2.connect("bob")
        await wait_until(lambda: n1.manager.nodes_of("bob") == {"n2"}, "n1 sees bob")
        dropped = 0
        for outage in range(3):
            hub.down = True
            await wait_until(lambda: down(n1.manager, n2.manager), "both links noticed")
            assert (await n1.manager.send_to_one("bob", f"lost {outage}")).published is False
            dropped += 1
            await anyio.sleep(TTL)  # longer than a lease: the hub forgets everyone
            hub.down = False
            await wait_until(lambda: connected(n1.manager, n2.manager), "the links came back")
            await wait_until(lambda: n1.manager.nodes_of("bob") == {"n2"}, "n1 sees bob again")
            await n1.manager.send_to_one("bob", f"kept {outage}")
            await wait_until(lambda o=outage: bob.received[-1:] == [f"kept {o}"], "delivered")
        assert bob.received == ["kept 0", "kept 1", "kept 2"]
        assert n1.manager.stats().drops == {"backplane: link down": dropped}
        assert n2.manager.stats().dropped == 0


async def test_what_registered_during_an_outage_comes_back_in_one_snapshot() -> None:
    """Not one record and one announcement per identifier: after a long outage those
    would hold back, by seconds, the changes made as the link came back."""
    hub = InMemoryHub()
    relay = Relay(hub)
    async with fleet(hub, "n2") as (n2,), fleet(relay, "n1") as (n1,):
        await wait_until(lambda: n2.backplane.view.nodes() == {"n1"}, "n2 knows n1")
        relay.cut = True
        await wait_until(lambda: down(n1.manager), "n1's link noticed")
        names = [f"u{i}" for i in range(300)]
        for name in names:
            n1.connect(name)
            n1.manager.add_to_group(name, "room")
        relay.calls.clear()
        relay.cut = False
        await wait_until(lambda: connected(n1.manager), "n1's link back")
        await wait_until(
            lambda: all(n2.manager.nodes_of(name) == {"n1"} for name in names), "n2 sees all"
        )
        assert n2.manager.get_group_members("room") >= set(names)
        assert relay.calls["replace_node"] >= 1
        assert relay.calls["put_member"] < 10  # nothing re-recorded one by one
        assert relay.calls["publish"] < 20  # the hello, not 600 announcements


async def test_a_buffer_keeps_up_to_n_messages_for_when_the_link_returns() -> None:
    hub = InMemoryHub()
    relay = Relay(hub)  # only n1's link fails: n2 stays subscribed throughout
    async with (
        fleet(hub, "n2") as (n2,),
        fleet(relay, "n1", options={"n1": {"buffer": 3}}) as (n1,),
    ):
        bob = n2.connect("bob")
        await wait_until(lambda: n1.manager.nodes_of("bob") == {"n2"}, "n1 sees bob")

        relay.cut = True
        await wait_until(lambda: down(n1.manager), "n1's link noticed")
        published = [(await n1.manager.send_to_one("bob", f"m{i}")).published for i in range(5)]
        assert published == [True, True, True, False, False]
        assert n1.manager.stats().drops == {"backplane: link down": 2}
        assert backplane_stat(n1.manager, "queued sends") == 3
        await anyio.sleep(2 * HEARTBEAT)  # the link keeps failing meanwhile: nothing is lost
        assert backplane_stat(n1.manager, "queued sends") == 3
        assert bob.received == []
        assert connected(n2.manager)

        relay.cut = False
        await wait_until(lambda: len(bob.received) == 3, "the buffered messages arrived")
        await n1.manager.send_to_one("bob", "m5")
        await wait_until(lambda: len(bob.received) == 4, "and the next one")
        assert bob.received == ["m0", "m1", "m2", "m5"]
        assert n1.manager.stats().drops == {"backplane: link down": 2}
        assert backplane_stat(n1.manager, "queued sends") == 0
        assert backplane_stat(n1.manager, "published") == 4


async def test_a_buffer_outlives_an_outage_of_the_whole_hub() -> None:
    hub = InMemoryHub()
    # n2 redials later than n1, as one of many nodes coming back after a Redis restart may,
    # but within its lease (a node away longer than its lease has left the fleet).
    slow = RetryPolicy(max_attempts=1_000_000_000, base_delay=0.12, max_delay=0.12, jitter=0)
    options = {"n1": {"buffer": 3}, "n2": {"retry_policy": slow}}
    async with fleet(hub, "n1", "n2", options=options) as (n1, n2):
        bob = n2.connect("bob")
        await wait_until(lambda: n1.manager.nodes_of("bob") == {"n2"}, "n1 sees bob")

        hub.down = True
        await wait_until(lambda: down(n1.manager, n2.manager), "both links noticed")
        for i in range(3):
            assert (await n1.manager.send_to_one("bob", f"m{i}")).published
        hub.down = False
        await wait_until(lambda: connected(n1.manager, n2.manager), "the links came back")
        await wait_until(
            lambda: len(bob.received) == 3 or n1.manager.stats().dropped > 0,
            "the buffered messages were delivered, or counted as lost",
        )
        assert n1.manager.stats().drops == {}
        assert bob.received == ["m0", "m1", "m2"]


# -- nodes that leave ---------------------------------------------------------------------------


async def test_a_node_that_exits_cleanly_vanishes_at_once() -> None:
    hub = InMemoryHub()
    async with fleet(hub, "n1") as (n1,):
        n1.connect("ann")
        # A long lease: the node must vanish well before it could have expired.
        backplane = Backplane(hub, node_id="n2", heartbeat_interval=HEARTBEAT, node_ttl=5.0)
        async with ConnectionManager(backplane=backplane) as manager:
            await wait_until(lambda: connected(manager), "n2 connected")
            manager.register(MemoryTransport(), "bob")
            manager.add_to_group("bob", "red")
            await wait_until(
                lambda: (
                    n1.manager.nodes_of("bob") == {"n2"}
                    and n1.manager.get_group_members("red") == {"bob"}
                ),
                "n1 sees bob on n2",
            )
            assert "n2" in hub.leases
        assert "n2" not in hub.leases
        assert "n2" not in hub.members
        await wait_until(
            lambda: (
                n1.manager.nodes_of("bob") == set()
                and n1.manager.get_group_members("red") == set()
                and n1.manager.online_count() == 1
                and n1.backplane.view.nodes() == set()
            ),
            "n2 gone from n1's view",
            timeout=4 * HEARTBEAT + 0.5,
        )
        assert n1.manager.nodes_of("ann") == {"n1"}


async def test_sends_queued_for_other_nodes_at_exit_are_published_or_counted() -> None:
    hub = InMemoryHub()
    relay = Relay(hub)  # n1's store is slow to take publishes
    async with fleet(hub, "n2") as (n2,):
        bob = n2.connect("bob")
        await wait_until(lambda: "bob" in hub.members.get("n2", {}), "bob recorded")
        async with fleet(relay, "n1") as (n1,):
            await wait_until(lambda: n1.manager.nodes_of("bob") == {"n2"}, "n1 sees bob")
            relay.hold("publish")
            for i in range(5):
                assert (await n1.manager.send_to_one("bob", f"m{i}")).published
            await wait_until(lambda: relay.waiting("publish") == 1, "the first is under way")
        await wait_until(
            lambda: len(bob.received) + n1.manager.stats().dropped == 5, "each sent or counted"
        )
        assert backplane_stat(n1.manager, "queued sends") == 0


async def test_a_node_whose_lease_lapses_vanishes_after_node_ttl() -> None:
    hub = InMemoryHub()
    doomed = Relay(hub)
    async with fleet(hub, "n1") as (n1,), fleet(doomed, "n2") as (n2,):
        n2.connect("bob")
        n2.manager.add_to_group("bob", "red")
        await wait_until(
            lambda: (
                n1.manager.nodes_of("bob") == {"n2"}
                and n1.manager.get_group_members("red") == {"bob"}
            ),
            "n1 sees bob on n2",
        )

        doomed.cut = True
        lease_ends = hub.leases["n2"]  # the last renewal n2 made; it cannot make another
        await wait_until(
            lambda: n1.manager.nodes_of("bob") == set(),
            "n2's lease lapsed",
            timeout=TTL + 4 * HEARTBEAT + 0.5,
        )
        gone_at = anyio.current_time()
        assert gone_at >= lease_ends  # never before the lease ran out
        assert n1.manager.get_group_members("red") == set()
        assert n1.manager.online_count() == 0
        assert n1.backplane.view.nodes() == set()
        assert backplane_stat(n1.manager, "nodes expired") == 1
        assert "n2" not in hub.members
        assert n2.manager.stats().backplane_state != "CONNECTED"
        assert n1.manager.stats().backplane_state == "CONNECTED"  # the others carry on


# -- construction --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"namespace": ""},
        {"namespace": 5},
        {"heartbeat_interval": 1.0, "node_ttl": 1.0},
        {"heartbeat_interval": 2.0, "node_ttl": 1.0},
        {"heartbeat_interval": 0},
        {"heartbeat_interval": True},
        {"node_ttl": -1},
        {"op_timeout": 0},
        {"op_timeout": "1"},
        {"buffer": -1},
        {"buffer": True},
        {"buffer": 1.5},
    ],
    ids=repr,
)
def test_backplane_refuses_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        Backplane(InMemoryHub(), **kwargs)


def test_backplane_defaults() -> None:
    backplane = Backplane(InMemoryHub(), buffer=0)
    assert backplane.namespace == "wsfleet"
    assert backplane.node_ttl > backplane.heartbeat_interval
    assert backplane.node_id  # a random one
    assert backplane.node_id != Backplane(InMemoryHub()).node_id


@pytest.mark.parametrize("backplane", [object(), InMemoryHub(), "redis://localhost"], ids=repr)
def test_the_manager_wants_a_backplane(backplane: object) -> None:
    with pytest.raises(TypeError) as info:
        ConnectionManager(backplane=backplane)  # type: ignore[arg-type]
    assert isinstance(info.value, WrongType)
