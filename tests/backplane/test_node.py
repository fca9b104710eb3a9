"""The backplane without a manager: a test's own ``Node`` on each side.

``Backplane.run(node)`` reaches the local side only through the ``Node`` it is given, so
here each backplane runs against a ``RecordingNode``: identifiers and their groups in a
dictionary, and a list of every call the backplane made. The tests check what travels
between nodes (fan-outs handed over as they were sent, membership followed by the view and
by the node, kicks, the records in the store after a reconnection), and the replication's
own rule: a change made while another node's record is being loaded is made again on top
of it. No ``ConnectionManager`` is built, and none is imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest

from support import wait_until
from wsfleet import RetryPolicy
from wsfleet.backplane import Backplane, InMemoryHub, Store, StoreSession
from wsfleet.backplane.replication import Replication
from wsfleet.backplane.view import ClusterView

pytestmark = pytest.mark.anyio

HEARTBEAT = 0.05
TTL = 0.2
FAST = RetryPolicy(max_attempts=1_000_000_000, base_delay=0.01, max_delay=0.05, jitter=0)


class RecordingNode:
    """A node's local side as a dictionary, and every call the backplane made to it."""

    def __init__(self, tg: anyio.abc.TaskGroup, groups: dict[str, set[str]] | None = None):
        self.tg = tg
        #: identifier -> its groups, for every identifier with "sockets" here.
        self.groups: dict[str, set[str]] = groups or {}
        self.delivered: list[tuple[str, object, str | bytes, list[str]]] = []
        self.mirrored: list[tuple[str, str, bool]] = []
        self.kicked: list[tuple[str, int, str]] = []
        self.spawned: list[str] = []

    def deliver(
        self, to: str, target: str | list[str] | None, message: str | bytes, exclude: Sequence[str]
    ) -> int:
        self.delivered.append((to, target, message, list(exclude)))
        return 1

    def mirror(self, identifier: str, group: str, joined: bool) -> None:
        self.mirrored.append((identifier, group, joined))
        if identifier in self.groups:
            if joined:
                self.groups[identifier].add(group)
            else:
                self.groups[identifier].discard(group)

    def kick(self, identifier: str, code: int, reason: str) -> None:
        self.kicked.append((identifier, code, reason))

    def holds(self, identifier: str) -> bool:
        return identifier in self.groups

    def groups_of(self, identifier: str) -> Collection[str]:
        return self.groups.get(identifier, set())

    def meta_of(self, identifier: str) -> Mapping[str, Any] | None:
        return None

    def memberships(self) -> Mapping[str, Collection[str]]:
        return self.groups

    def spawn(self, func: Callable[..., Coroutine[Any, Any, None]], *args: Any, name: str) -> None:
        self.spawned.append(name)
        self.tg.start_soon(func, *args, name=name)


@asynccontextmanager
async def running(
    store: Store, *names: str, holding: Mapping[str, dict[str, set[str]]] | None = None
) -> AsyncIterator[list[tuple[Backplane, RecordingNode]]]:
    """One backplane per name on ``store``, each run with its own ``RecordingNode`` (holding
    what ``holding`` gives it). Each is CONNECTED before the next starts; the block begins
    once every one knows the others."""
    holding = holding or {}
    async with anyio.create_task_group() as tg:
        pairs = []
        for name in names:
            backplane = Backplane(
                store, node_id=name, heartbeat_interval=HEARTBEAT, node_ttl=TTL, retry_policy=FAST
            )
            node = RecordingNode(tg, {k: set(v) for k, v in holding.get(name, {}).items()})
            await tg.start(backplane.run, node)
            await wait_until(lambda b=backplane: b.state.name == "CONNECTED", f"{name} connected")
            pairs.append((backplane, node))
        await wait_until(
            lambda: all(
                b.state.name == "CONNECTED" and b.view.nodes() == set(names) - {b.node_id}
                for b, _ in pairs
            ),
            "every backplane connected and knowing the others",
        )
        try:
            yield pairs
        finally:
            with anyio.CancelScope(shield=True):
                for backplane, _ in pairs:
                    await backplane.close()
            tg.cancel_scope.cancel()  # reloads the nodes spawned, if still under way


async def test_a_fan_out_reaches_the_other_node_as_it_was_sent() -> None:
    async with running(InMemoryHub(), "a", "b") as [(a, na), (_, nb)]:
        sent = [
            ("group", "room", "to the room", ["bob"]),
            ("one", "alice", b"\x00bytes", []),
            ("many", ["x", "y"], "to x and y", []),
            ("all", None, "to everyone", ["x", "y"]),
        ]
        for to, target, message, exclude in sent:
            assert a.send(to, target, message, exclude) is True
        await wait_until(lambda: len(nb.delivered) == len(sent), "b was handed every fan-out")
        assert nb.delivered == sent  # in order, once, targets and exclusions as sent
        assert na.delivered == []  # a's own come back on the bus, and are skipped
        assert a.stats["published"] == len(sent)


async def test_membership_is_followed_by_the_view_the_node_and_the_records() -> None:
    hub = InMemoryHub()
    # alice has sockets on both nodes; on b she is in no group yet.
    holding = {"a": {"alice": set()}, "b": {"alice": set()}}
    async with running(hub, "a", "b", holding=holding) as [(a, na), (b, nb)]:
        assert hub.members == {"a": {"alice": []}, "b": {"alice": []}}  # written on connecting
        na.groups["alice"].add("room")
        a.membership("join", "alice", "room")
        await wait_until(lambda: hub.members["b"] == {"alice": ["room"]}, "b rewrote its record")
        assert nb.mirrored == [("alice", "room", True)]
        assert nb.groups == {"alice": {"room"}}  # the node followed
        assert b.view.members("room") == {"alice"}
        assert b.view.presence("alice") == {"a"}
        assert hub.members["a"] == {"alice": ["room"]}  # recorded before it was announced

        na.groups["carol"] = set()
        a.membership("online", "carol")
        await wait_until(lambda: b.view.presence("carol") == {"a"}, "b saw carol come")
        assert nb.mirrored == [("alice", "room", True)]  # carol is not b's to follow
        del na.groups["carol"]
        a.membership("offline", "carol")
        await wait_until(lambda: b.view.presence("carol") == set(), "b saw carol go")

        a.kick("alice", 4000, "bye")
        await wait_until(lambda: nb.kicked == [("alice", 4000, "bye")], "b was told to kick")
        assert na.kicked == []  # a closes its own sockets itself, not through the backplane


async def test_a_node_that_says_hello_is_loaded_through_a_task_of_the_node() -> None:
    hub = InMemoryHub()
    holding = {"b": {"bob": {"g1", "g2"}}}
    async with running(hub, "a", "b", holding=holding) as [(a, na), (b, _)]:
        assert hub.members["b"] == {"bob": ["g1", "g2"]}  # b's record, written on connecting
        await wait_until(lambda: a.stats["hellos"] == 1, "a heard b's hello")
        assert na.spawned == ["wsfleet backplane reload"]
        await wait_until(lambda: a.view.groups_of("bob") == {"g1", "g2"}, "a loaded b's record")
        assert b.stats["hellos"] == 0  # a was there first: b loaded it on connecting


async def test_changes_made_while_the_link_is_down_are_announced_when_it_is_back() -> None:
    hub = InMemoryHub()
    async with running(hub, "a", "b") as [(a, na), (b, _)]:
        hub.down = True
        await wait_until(lambda: a.state.name != "CONNECTED", "a saw the outage")
        na.groups["dave"] = {"room"}
        a.membership("online", "dave")
        a.membership("join", "dave", "room")
        assert a.send("all", None, "lost", []) is False  # no buffer: refused and counted
        assert a.stats["dropped: link down"] == 1
        hub.down = False
        await wait_until(lambda: b.view.members("room") == {"dave"}, "b learned of dave")
        assert hub.members["a"] == {"dave": ["room"]}


async def test_a_backplane_that_closes_leaves_the_others_view() -> None:
    hub = InMemoryHub()
    async with running(hub, "a", "b") as [(a, na), (b, _)]:
        na.groups["alice"] = set()
        a.membership("online", "alice")
        await wait_until(lambda: b.view.presence("alice") == {"a"}, "b saw alice")
        await a.close()
        assert "a" not in hub.leases
        await wait_until(lambda: b.view.nodes() == set(), "b forgot a at its next heartbeat")
        assert b.view.presence("alice") == set()
        assert b.stats["nodes expired"] == 1


class Gate(StoreSession):
    """A session of the hub whose ``load`` waits until the test opens the gate."""

    def __init__(self, session: StoreSession) -> None:
        self.session = session
        self.loading = anyio.Event()
        self.open = anyio.Event()

    async def load(self, node: str) -> dict[str, list[str]]:
        record = await self.session.load(node)  # read now: the record is what it was
        self.loading.set()
        await self.open.wait()
        return record

    async def publish(self, data: bytes) -> int | None:
        return await self.session.publish(data)

    def subscribe(self) -> Any:
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
        return await self.session.live_nodes()

    async def forget(self, node: str) -> None:
        await self.session.forget(node)


async def test_a_change_made_while_a_record_loads_is_made_again_on_top_of_it() -> None:
    hub = InMemoryHub()
    view = ClusterView()
    replication = Replication(view, hub, "b", op_timeout=2.0)
    async with anyio.create_task_group() as tg:
        node = RecordingNode(tg)
        async with hub.session() as session:
            await session.replace_node("a", {"alice": []}, TTL * 100)
            gate = Gate(session)
            async with anyio.create_task_group() as loading:
                loading.start_soon(replication.load, gate, "a")
                await gate.loading.wait()
                # While the record (alice in no group) is on its way, the bus says she
                # joined, and that carol came online.
                replication.follow("join", "alice", "room", "a")
                replication.online("a", "carol", node)
                gate.open.set()
    assert view.groups_of("alice") == {"room"}  # not undone by the older record
    assert view.presence("carol") == {"a"}


async def test_records_say_what_the_node_holds() -> None:
    hub = InMemoryHub()
    replication = Replication(ClusterView(), hub, "b", op_timeout=2.0)
    async with anyio.create_task_group() as tg:
        node = RecordingNode(tg, {"bob": {"g2", "g1"}, "eve": set()})
        async with hub.session() as session:
            await replication.reassert(session, node, TTL)
            assert hub.members["b"] == {"bob": ["g1", "g2"], "eve": []}
            node.groups["bob"].add("g3")
            del node.groups["eve"]
            await replication.record(session, "bob", node)
            await replication.record(session, "eve", node)
            assert hub.members["b"] == {"bob": ["g1", "g2", "g3"]}


def test_the_backplane_runs_without_the_manager_or_the_runtime() -> None:
    code = (
        "import json, sys\n"
        "from wsfleet.backplane import Backplane, InMemoryHub\n"
        "Backplane(InMemoryHub())\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('wsfleet.'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(out.stdout)
    assert "wsfleet._manager" not in loaded
    assert not [
        m for m in loaded if m.startswith("wsfleet._runtime.") and m != "wsfleet._runtime.loop"
    ]
