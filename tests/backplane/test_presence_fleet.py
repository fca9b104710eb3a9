"""Presence across nodes on the in-process hub: three managers, one fleet.

Every manager observes each change of the fleet once, whichever node it happened on: one
event per identity per change, not per tab nor per node. Metadata travels with the
membership (announcements and records); what another node could not have sent (metadata
too large, in an announcement or in a record) is refused and counted, never a crash. A
node whose lease lapses takes its identities offline, once, on every other manager.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import anyio
import pytest

from support import backplane_stat, wait_until
from wsfleet import ConnectionManager, InMemoryHub, PresenceEvent
from wsfleet.backplane.wire import Envelope, encode
from wsfleet.presence import MAX_META_BYTES
from wsfleet.testing import MemoryTransport

from .test_hub import HEARTBEAT, TTL, Node, Relay, fleet

pytestmark = pytest.mark.anyio

Seen = dict[str, list[tuple[str, str, str | None, str]]]


def observe(*nodes: Node) -> Seen:
    """Each node's presence events as (kind, identifier, group, node), in order."""
    seen: Seen = defaultdict(list)
    for node in nodes:

        def record(event: PresenceEvent, name: str = node.id) -> None:
            seen[name].append((event.kind, event.identifier, event.group, event.node))

        node.manager.on_presence(record)
    return seen


async def settle() -> None:
    """Long enough for an envelope to reach every node of the hub, and their callbacks."""
    await anyio.sleep(10 * HEARTBEAT)


async def test_every_manager_observes_each_change_once() -> None:
    async with fleet(InMemoryHub(), "n1", "n2", "n3") as nodes:
        n1, n2, n3 = nodes
        seen = observe(*nodes)
        first = n1.connect("alice")
        await wait_until(lambda: all(len(seen[n.id]) == 1 for n in nodes), "online seen")
        n2.connect("alice")  # the same identity on a second node: no event anywhere
        n2.connect("alice")  # and a second tab there
        n2.manager.add_to_group("alice", "room")
        await wait_until(lambda: all(len(seen[n.id]) == 2 for n in nodes), "join seen")
        assert n3.manager.online("alice")
        assert n3.manager.nodes_of("alice") == {"n1", "n2"}
        assert await n3.manager.presence("room") == {"alice": {}}
        n1.manager.unregister(first)  # still on n2: nothing
        await wait_until(
            lambda: all(n.manager.nodes_of("alice") == {"n2"} for n in nodes), "n1 lost it"
        )
        await settle()
        for socket in n2.sockets["alice"]:
            n2.manager.unregister(socket)
        await wait_until(lambda: all(len(seen[n.id]) == 4 for n in nodes), "offline seen")
        await settle()
        for node in nodes:
            assert seen[node.id] == [
                ("online", "alice", None, "n1"),
                ("join", "alice", "room", "n2"),
                ("leave", "alice", "room", "n2"),
                ("offline", "alice", None, "n2"),
            ], node.id
        assert not any(n.manager.online("alice") for n in nodes)


async def test_metadata_reaches_every_node_and_follows_a_change() -> None:
    async with fleet(InMemoryHub(), "n1", "n2", "n3") as nodes:
        n1, n2, n3 = nodes
        events: list[PresenceEvent] = []
        n3.manager.on_presence(events.append)
        n1.manager.register(_socket("alice@n1"), "alice", meta={"name": "Alice"})
        n1.manager.add_to_group("alice", "room")
        n2.manager.register(_socket("bob@n2"), "bob", meta={"name": "Bob", "away": False})
        n2.manager.add_to_group("bob", "room")
        expected = {"alice": {"name": "Alice"}, "bob": {"name": "Bob", "away": False}}
        for node in nodes:
            await presence_is(node.manager, "room", expected)
        await wait_until(lambda: len(events) == 4, "n3 saw two online, two joins")
        online = {e.identifier: e for e in events if e.kind == "online"}
        assert online["alice"] == PresenceEvent("online", "alice", None, {"name": "Alice"}, "n1")
        assert online["bob"].meta == {"name": "Bob", "away": False}
        assert online["bob"].node == "n2"
        # A later registration with new metadata, here on another node, reaches all.
        n3.manager.register(_socket("bob@n3"), "bob", meta={"name": "Bob", "away": True})
        n2.manager.register(_socket("bob@n2 again"), "bob", meta={"name": "Bob", "away": True})
        expected["bob"]["away"] = True
        for node in nodes:
            await presence_is(node.manager, "room", expected)


async def test_a_node_that_starts_later_learns_the_metadata_from_the_records() -> None:
    hub = InMemoryHub()
    async with fleet(hub, "n1") as (n1,):
        n1.manager.register(_socket("alice@n1"), "alice", meta={"name": "Alice"})
        n1.manager.add_to_group("alice", "room")
        await wait_until(lambda: hub.metas.get("n1", {}).get("alice") is not None, "recorded")
        async with fleet(hub, "n2") as (n2,):
            await presence_is(n2.manager, "room", {"alice": {"name": "Alice"}})


async def test_forged_metadata_is_refused_and_counted_never_a_crash() -> None:
    hub = InMemoryHub()
    async with fleet(hub, "n2") as (n2,):
        n2.manager.register(_socket("bob@n2"), "bob", meta={"name": "Bob"})
        n2.manager.add_to_group("bob", "room")
        await wait_until(lambda: "bob" in hub.metas.get("n2", {}), "recorded")
        hub.metas["n2"]["bob"] = {"name": "x" * MAX_META_BYTES}  # no node writes that
        async with fleet(hub, "n1") as (n1,):
            await wait_until(lambda: n1.manager.online("bob"), "n1 loaded n2's record")
            assert await n1.manager.presence("room") == {"bob": {}}  # kept, without it
            assert backplane_stat(n1.manager, "refused: bad meta") == 1
            malformed = backplane_stat(n1.manager, "malformed")
            # An announcement in n2's name with metadata too large: refused whole.
            forged = Envelope("online", "n2", "forged", 0, {"id": "eve", "meta": {"x": "y" * 5000}})
            async with hub.session() as session:
                await session.publish(encode("wsfleet", forged))
            await wait_until(
                lambda: backplane_stat(n1.manager, "malformed") == malformed + 1, "refused"
            )
            assert not n1.manager.online("eve")
            assert n1.manager.stats().backplane_state == "CONNECTED"


async def test_a_node_whose_lease_lapses_takes_its_identities_offline_once() -> None:
    hub = InMemoryHub()
    doomed = Relay(hub)
    async with fleet(hub, "n1", "n3") as (n1, n3), fleet(doomed, "n2") as (n2,):
        await wait_until(
            lambda: all("n2" in n.backplane.view.nodes() for n in (n1, n3)), "n2 known"
        )
        seen = observe(n1, n3)
        n2.manager.register(_socket("bob@n2"), "bob", meta={"name": "Bob"})
        n2.manager.add_to_group("bob", "room")
        n2.connect("cy")
        n3.connect("cy")  # cy is on n3 as well: it stays online
        await wait_until(
            lambda: all(len(seen[n.id]) == 3 for n in (n1, n3)), "bob and cy online, bob joined"
        )
        doomed.cut = True  # as a SIGKILL would: no word to anyone, the lease runs out
        await wait_until(
            lambda: all(len(seen[n.id]) == 5 for n in (n1, n3)),
            "bob went offline",
            timeout=TTL + 4 * HEARTBEAT + 1,
        )
        await settle()
        for node in (n1, n3):
            assert seen[node.id][3:] == [
                ("leave", "bob", "room", "n2"),
                ("offline", "bob", None, "n2"),
            ]
            assert node.manager.online("cy")
            assert not node.manager.online("bob")


def _socket(name: str) -> MemoryTransport:
    return MemoryTransport(name)


async def presence_is(manager: ConnectionManager, group: str, expected: dict[str, Any]) -> None:
    """Wait (bounded) until ``manager.presence(group)`` answers ``expected``."""
    with anyio.move_on_after(10):
        while await manager.presence(group) != expected:
            await anyio.sleep(0.005)
    assert await manager.presence(group) == expected
