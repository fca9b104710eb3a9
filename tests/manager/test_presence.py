"""Presence on one node: metadata, events, ``presence(group)``, ``online``, ``nodes_of``.

One event per identity per change (not per socket); an identity going offline leaves its
groups first; bad metadata is refused and changes nothing; callbacks run as state-change
callbacks do (sync or async, errors counted). Over real sockets and across nodes:
``tests/adapters/test_presence_sockets.py`` and ``tests/backplane/test_presence_fleet.py``.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest
from anyio.lowlevel import checkpoint
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from support import eventually
from wsfleet import ConnectionManager, InvalidMeta, PresenceEvent, WrongType
from wsfleet.presence import MAX_META_BYTES
from wsfleet.testing import MemoryTransport

pytestmark = pytest.mark.anyio


def kinds(events: list[PresenceEvent]) -> list[tuple[str, str, str | None]]:
    return [(e.kind, e.identifier, e.group) for e in events]


async def test_metadata_is_the_identitys_and_presence_answers_with_it() -> None:
    async with ConnectionManager() as manager:
        meta = {"name": "Alice", "tags": ["a", 1]}
        manager.register(MemoryTransport(), "alice", meta=meta)
        manager.register(MemoryTransport(), "bob")
        manager.add_to_group("alice", "room")
        manager.add_to_group("bob", "room")
        meta["name"] = "changed by the caller afterwards"
        assert await manager.presence("room") == {
            "alice": {"name": "Alice", "tags": ["a", 1]},
            "bob": {},
        }
        answer = await manager.presence("room")
        answer["alice"]["name"] = "changed by the caller"  # a copy: the fleet keeps its own
        assert (await manager.presence("room"))["alice"]["name"] == "Alice"
        assert await manager.presence("nobody's room") == {}
        assert manager.online("alice")
        assert manager.online("bob")
        assert not manager.online("carol")
        assert manager.nodes_of("alice") == {"local"}
        assert manager.nodes_of("carol") == set()


async def test_a_later_registration_with_meta_replaces_it_and_one_without_keeps_it() -> None:
    async with ConnectionManager() as manager:
        manager.register(MemoryTransport(), "alice", meta={"v": 1})
        manager.add_to_group("alice", "room")
        manager.register(MemoryTransport(), "alice")
        assert await manager.presence("room") == {"alice": {"v": 1}}
        manager.register(MemoryTransport(), "alice", meta={"v": 2})
        assert await manager.presence("room") == {"alice": {"v": 2}}


@pytest.mark.parametrize(
    ("meta", "error"),
    [
        ({"big": "x" * MAX_META_BYTES}, InvalidMeta),
        ({"a set": {1, 2}}, InvalidMeta),
        ({1: "not a str key"}, InvalidMeta),
        ({"nan": math.nan}, InvalidMeta),
        ({"surrogate": "\ud800"}, InvalidMeta),
        (["not", "a", "mapping"], WrongType),
        ("text", WrongType),
    ],
)
async def test_bad_metadata_is_refused_and_changes_nothing(meta: Any, error: type) -> None:
    async with ConnectionManager() as manager:
        manager.register(MemoryTransport(), "alice", meta={"v": 1})
        manager.add_to_group("alice", "room")
        socket = MemoryTransport()
        with pytest.raises(error) as caught:
            manager.register(socket, "alice", meta=meta)
        assert isinstance(caught.value, ValueError | TypeError)
        with pytest.raises(error):
            manager.register(MemoryTransport(), "bob", meta=meta)
        assert manager.identifier_of(socket) is None
        assert manager.count() == 1
        assert not manager.online("bob")
        assert await manager.presence("room") == {"alice": {"v": 1}}


async def test_metadata_at_the_bound_is_taken() -> None:
    async with ConnectionManager() as manager:
        padding = MAX_META_BYTES - len('{"k":""}')
        manager.register(MemoryTransport(), "alice", meta={"k": "x" * padding})
        manager.add_to_group("alice", "g")
        assert len((await manager.presence("g"))["alice"]["k"]) == padding


async def test_one_event_per_identity_per_change_not_per_socket() -> None:
    events: list[PresenceEvent] = []
    async with ConnectionManager() as manager:
        manager.on_presence(events.append)
        first, second = MemoryTransport(), MemoryTransport()
        manager.register(first, "alice", meta={"name": "Alice"})
        manager.register(second, "alice")  # a second tab: no event
        manager.add_to_group("alice", "room")
        manager.add_to_group("alice", "room")  # already in it: no event
        manager.add_to_group("alice", "lobby")
        await eventually(lambda: len(events) == 3)
        manager.remove_from_group("alice", "lobby")
        await eventually(lambda: len(events) == 4)
        manager.unregister(first)  # one socket left: still online
        manager.register(MemoryTransport(), "bob")
        await eventually(lambda: len(events) == 5)
        manager.unregister(second)
        await eventually(lambda: len(events) == 7)
        for _ in range(20):
            await checkpoint()
    assert kinds(events) == [
        ("online", "alice", None),
        ("join", "alice", "lobby"),  # joined in the same step: compared once, by name
        ("join", "alice", "room"),
        ("leave", "alice", "lobby"),
        ("online", "bob", None),
        ("leave", "alice", "room"),  # going offline leaves every group first
        ("offline", "alice", None),
        ("offline", "bob", None),  # the manager closed: its sockets went
    ]
    assert all(e.node == "local" for e in events)
    assert all(e.meta == {"name": "Alice"} for e in events if e.identifier == "alice")
    assert events[0] == PresenceEvent("online", "alice", None, {"name": "Alice"}, "local")


async def test_changes_within_one_step_are_reported_once() -> None:
    """What comes and goes before the event loop moves on never happened for presence."""
    events: list[PresenceEvent] = []
    async with ConnectionManager() as manager:
        manager.on_presence(events.append)
        socket = MemoryTransport()
        manager.register(socket, "alice")
        manager.add_to_group("alice", "room")
        manager.unregister(socket)
        manager.register(MemoryTransport(), "bob")
        await eventually(lambda: len(events) == 1)
        for _ in range(20):
            await checkpoint()
        assert kinds(events) == [("online", "bob", None)]


async def test_a_callback_added_later_starts_from_what_is_online_then() -> None:
    events: list[PresenceEvent] = []
    async with ConnectionManager() as manager:
        socket = MemoryTransport()
        manager.register(socket, "alice")
        manager.add_to_group("alice", "room")
        handle = manager.on_presence(events.append)
        manager.unregister(socket)
        await eventually(lambda: len(events) == 2)
        assert kinds(events) == [("leave", "alice", "room"), ("offline", "alice", None)]
        assert handle.remove()
        manager.register(MemoryTransport(), "bob")
        for _ in range(20):
            await checkpoint()
        assert len(events) == 2


async def test_callbacks_may_be_async_and_their_errors_are_counted() -> None:
    seen: list[str] = []
    async with ConnectionManager() as manager:

        @manager.on_presence
        async def slow(event: PresenceEvent) -> None:
            await checkpoint()
            seen.append(f"async {event.kind}")

        @manager.on_presence
        def broken(event: PresenceEvent) -> None:
            raise RuntimeError("a bug in the application")

        manager.register(MemoryTransport(), "alice")
        await eventually(lambda: seen == ["async online"])
        await eventually(lambda: manager.stats().callback_errors == 1)


async def test_the_managers_own_shutdown_is_reported_before_it_ends() -> None:
    events: list[PresenceEvent] = []
    async with ConnectionManager() as manager:

        @manager.on_presence
        async def record(event: PresenceEvent) -> None:
            await anyio.sleep(0.01)
            events.append(event)

        manager.register(MemoryTransport(), "alice")
        manager.add_to_group("alice", "room")
    assert kinds(events) == [
        ("online", "alice", None),
        ("join", "alice", "room"),
        ("leave", "alice", "room"),
        ("offline", "alice", None),
    ]


async def test_presence_and_online_check_names() -> None:
    async with ConnectionManager() as manager:
        with pytest.raises(WrongType):
            await manager.presence(1)  # type: ignore[arg-type]
        with pytest.raises(WrongType):
            manager.online(None)  # type: ignore[arg-type]
        with pytest.raises(WrongType):
            manager.on_presence("not callable")  # type: ignore[arg-type]


OPS = st.lists(
    st.tuples(
        st.sampled_from(["register", "unregister", "join", "leave", "step", "step"]),
        st.sampled_from(["ann", "bob"]),
        st.sampled_from(["red", "blue"]),
    ),
    max_size=40,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
@example(  # online, join, then gone: the groups are left first
    ops=[
        ("register", "ann", "red"),
        ("join", "ann", "red"),
        ("step", "", ""),
        ("unregister", "ann", ""),
    ]
)
@example(  # a second socket comes and goes: nothing to report
    ops=[("register", "ann", ""), ("step", "", ""), ("register", "ann", ""), ("step", "", "")]
)
async def test_the_events_replayed_give_the_fleets_presence_and_each_is_a_change(
    ops: list[tuple[str, str, str]],
) -> None:
    """Any sequence of registrations, departures, joins and leaves, with the event loop
    stepping between some of them: replaying the events gives who is online and in which
    groups, and no event repeats what the replay already holds."""
    events: list[PresenceEvent] = []
    async with ConnectionManager() as manager:
        manager.on_presence(events.append)
        sockets: dict[str, list[MemoryTransport]] = {"ann": [], "bob": []}
        for op, identifier, group in ops:
            if op == "register":
                socket = MemoryTransport()
                manager.register(socket, identifier)
                sockets[identifier].append(socket)
            elif op == "unregister" and sockets[identifier]:
                manager.unregister(sockets[identifier].pop(0))
            elif op == "join" and sockets[identifier]:
                manager.add_to_group(identifier, group)
            elif op == "leave":
                manager.remove_from_group(identifier, group)
            elif op == "step":  # the manager reports what changed before this
                for _ in range(3):
                    await checkpoint()
        fleet = {i: manager.groups_of(i) for i in ("ann", "bob") if manager.online(i)}
        await eventually(lambda: replay(events) == fleet)


def replay(events: list[PresenceEvent]) -> dict[str, set[str]]:
    """Who is online, in which groups, by the events; each event must change it."""
    replayed: dict[str, set[str]] = {}
    for event in events:
        if event.kind == "online":
            assert event.identifier not in replayed
            replayed[event.identifier] = set()
        elif event.kind == "offline":
            assert replayed.pop(event.identifier) == set()  # its groups were left first
        elif event.kind == "join":
            assert event.group not in replayed[event.identifier]
            replayed[event.identifier].add(str(event.group))
        else:
            replayed[event.identifier].remove(str(event.group))
    return replayed
