"""Every row of the manager's API table, with each bad input changing nothing.

The contract is issue 3's table: register, unregister, the fan-out calls, groups, the state
queries, callbacks, ``set_connection_state``, ``set_retry_policy``, ``count``/``len``, ``clear``
and ``stats``; plus the message checks (type, size) and the manager's lifetime.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from anyio.lowlevel import checkpoint

import wsfleet
import wsfleet.transport
from support import NEVER, C, D, E, I, R, eventually
from wsfleet import (
    AlreadyRegistered,
    ConnectionManager,
    ConnectionState,
    InvalidArgument,
    InvalidTransition,
    ManagerClosed,
    MessageTooLarge,
    OverflowPolicy,
    StateChange,
    UnencodableMessage,
    UnknownIdentifier,
    UnknownSocket,
    WrongThread,
    WrongType,
    WsfleetError,
)
from wsfleet.fsm.table import rules_by_pair
from wsfleet.testing import MemoryTransport

pytestmark = pytest.mark.anyio

BAD_NAME_TYPES = [None, 1, b"alice", ["alice"], 1.5]
BAD_NAME_VALUES = ["", "x" * 257, "lone \udc80 surrogate", "new\nline", "esc\x1b[31m"]
NOT_MESSAGES = [None, 1, 1.5, bytearray(b"hi"), memoryview(b"hi"), ["hi"], {"hi": 1}]


@pytest.fixture
async def manager() -> AsyncIterator[ConnectionManager]:
    async with ConnectionManager() as manager:
        yield manager


def snapshot(manager: ConnectionManager) -> tuple[Any, ...]:
    """Everything observable about the fleet: equal snapshots mean nothing changed."""
    sockets = {
        ident: [
            (id(s), manager.get_connection_state(s), manager.get_state_timestamp(s))
            for s in manager.sockets_of(ident)
        ]
        for ident in sorted(manager.identifiers())
    }
    groups = {g: manager.get_group_members(g) for g in sorted(manager.groups())}
    memberships = {ident: manager.groups_of(ident) for ident in sorted(manager.identifiers())}
    in_state = {s: {id(x) for x in manager.connections_in_state(s)} for s in ConnectionState}
    return (manager.stats().as_dict(), len(manager), sockets, groups, memberships, in_state)


def populate(manager: ConnectionManager) -> dict[str, MemoryTransport]:
    """alice (two tabs) and bob in room:1, carol alone."""
    sockets = {name: MemoryTransport(name) for name in ("alice-1", "alice-2", "bob", "carol")}
    for name, socket in sockets.items():
        manager.register(socket, name.split("-")[0])
    manager.add_to_group("alice", "room:1")
    manager.add_to_group("bob", "room:1")
    return sockets


# -- register ---------------------------------------------------------------------------


async def test_register_returns_a_connected_connection(manager: ConnectionManager) -> None:
    socket = MemoryTransport()
    conn = manager.register(socket, "alice")
    assert conn.state is C
    assert conn.identifier == "alice"
    assert conn.socket is socket
    assert manager.connection(socket) is conn
    assert manager.get_connection_state(socket) is C
    assert manager.identifier_of(socket) == "alice"
    assert manager.count() == len(manager) == 1


async def test_an_identifier_may_hold_several_sockets(manager: ConnectionManager) -> None:
    tabs = [MemoryTransport(f"tab{i}") for i in range(3)]
    for tab in tabs:
        manager.register(tab, "alice")
    assert manager.sockets_of("alice") == tabs
    assert all(manager.identifier_of(tab) == "alice" for tab in tabs)
    assert manager.identifiers() == {"alice"}
    assert len(manager) == 3
    assert manager.stats().identifiers == 1


async def test_registering_the_same_socket_twice_raises_and_changes_nothing(
    manager: ConnectionManager,
) -> None:
    populate(manager)
    socket = MemoryTransport("dave")
    manager.register(socket, "dave")
    before = snapshot(manager)
    for identifier in ("dave", "someone-else"):
        with pytest.raises(AlreadyRegistered) as info:
            manager.register(socket, identifier)
        assert isinstance(info.value, ValueError)
        assert snapshot(manager) == before


@pytest.mark.parametrize("identifier", BAD_NAME_TYPES)
async def test_an_identifier_that_is_not_a_str_raises_type_error_and_changes_nothing(
    manager: ConnectionManager, identifier: object
) -> None:
    populate(manager)
    before = snapshot(manager)
    socket = MemoryTransport()
    with pytest.raises(WrongType) as info:
        manager.register(socket, identifier)  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)
    assert snapshot(manager) == before
    assert manager.get_connection_state(socket) is None
    assert socket.connection is None


@pytest.mark.parametrize(
    "identifier", BAD_NAME_VALUES, ids=["empty", "257-chars", "surrogate", "newline", "escape"]
)
async def test_an_empty_overlong_or_unencodable_identifier_raises_value_error_changing_nothing(
    manager: ConnectionManager, identifier: str
) -> None:
    populate(manager)
    before = snapshot(manager)
    socket = MemoryTransport()
    with pytest.raises(InvalidArgument) as info:
        manager.register(socket, identifier)
    assert isinstance(info.value, ValueError)
    assert snapshot(manager) == before
    assert manager.get_connection_state(socket) is None


async def test_an_identifier_of_exactly_256_characters_is_accepted(
    manager: ConnectionManager,
) -> None:
    socket = MemoryTransport()
    manager.register(socket, "x" * 256)
    assert manager.identifier_of(socket) == "x" * 256


async def test_a_socket_with_no_adapter_raises_wrong_type_and_changes_nothing(
    manager: ConnectionManager,
) -> None:
    populate(manager)
    before = snapshot(manager)
    with pytest.raises(WrongType, match="no transport adapter"):
        manager.register(object(), "alice")
    assert snapshot(manager) == before


async def test_a_native_socket_is_registered_through_its_adapter(
    manager: ConnectionManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wsfleet.transport, "_ADAPTERS", {})

    class NativeSocket:
        def __init__(self) -> None:
            self.transport = MemoryTransport("native")

    class SubclassedSocket(NativeSocket):
        pass

    wsfleet.register_adapter(NativeSocket, lambda native: native.transport)
    native = SubclassedSocket()  # the nearest registered base class is used
    conn = manager.register(native, "alice")
    assert conn.socket is native
    assert conn.transport is native.transport
    assert manager.sockets_of("alice") == [native]
    assert await manager.send_to_one("alice", "hello") == 1
    await eventually(lambda: native.transport.received == ["hello"])


# -- unregister -------------------------------------------------------------------------


async def test_unregister_moves_to_disconnected_fires_callbacks_and_forgets_the_socket(
    manager: ConnectionManager,
) -> None:
    seen: list[tuple[object, ConnectionState | None, ConnectionState]] = []
    manager.on_state_change(lambda socket, old, new: seen.append((socket, old, new)))
    socket = MemoryTransport()
    conn = manager.register(socket, "alice")
    assert manager.unregister(socket) is True
    assert conn.state is D
    assert not conn.registered
    assert manager.get_connection_state(socket) is None
    assert manager.identifier_of(socket) is None
    assert manager.sockets_of("alice") == []
    assert len(manager) == 0
    await eventually(lambda: len(seen) == 2)
    assert seen == [(socket, None, C), (socket, C, D)]


async def test_unregistering_a_socket_does_not_close_it(manager: ConnectionManager) -> None:
    socket = MemoryTransport()
    manager.register(socket, "alice")
    manager.unregister(socket)
    await checkpoint()
    assert socket.close_code is None


async def test_the_last_socket_of_an_identifier_takes_it_out_of_every_group(
    manager: ConnectionManager,
) -> None:
    sockets = populate(manager)
    manager.add_to_group("alice", "room:2")
    manager.unregister(sockets["alice-1"])
    assert manager.groups_of("alice") == {"room:1", "room:2"}  # alice-2 is still here
    assert manager.get_group_members("room:1") == {"alice", "bob"}
    manager.unregister(sockets["alice-2"])
    assert manager.groups_of("alice") == set()
    assert manager.get_group_members("room:1") == {"bob"}
    assert manager.get_group_members("room:2") == set()
    assert manager.groups() == {"room:1"}  # room:2 emptied, so it is gone
    assert manager.stats().groups == 1


async def test_a_new_socket_under_a_departed_identifier_starts_with_no_groups(
    manager: ConnectionManager,
) -> None:
    sockets = populate(manager)
    manager.unregister(sockets["bob"])
    manager.register(MemoryTransport("bob again"), "bob")
    assert manager.groups_of("bob") == set()
    assert manager.get_group_members("room:1") == {"alice"}


async def test_unregistering_an_unknown_socket_returns_false_and_changes_nothing(
    manager: ConnectionManager,
) -> None:
    sockets = populate(manager)
    manager.unregister(sockets["carol"])
    before = snapshot(manager)
    assert manager.unregister(MemoryTransport("stranger")) is False
    assert manager.unregister(sockets["carol"]) is False  # already gone
    assert manager.unregister("alice") is False  # an identifier is not a socket
    assert snapshot(manager) == before


async def test_sockets_that_compare_equal_are_still_different_connections(
    manager: ConnectionManager,
) -> None:
    class EqualTransport(MemoryTransport):
        def __eq__(self, other: object) -> bool:
            return isinstance(other, EqualTransport)

        __hash__ = MemoryTransport.__hash__

    first, second = EqualTransport("first"), EqualTransport("second")
    manager.register(first, "a")
    manager.register(second, "b")
    assert manager.identifier_of(first) == "a"
    assert manager.identifier_of(second) == "b"
    assert manager.unregister(first) is True
    assert manager.identifier_of(second) == "b"


# -- fan-out calls ----------------------------------------------------------------------


async def test_broadcast_queues_to_every_connection_and_returns_the_count(
    manager: ConnectionManager,
) -> None:
    sockets = populate(manager)
    assert await manager.broadcast("hello") == 4
    assert await manager.broadcast(b"\x00bin") == 4
    await eventually(lambda: all(len(s.received) == 2 for s in sockets.values()))
    assert all(s.received == ["hello", b"\x00bin"] for s in sockets.values())
    assert manager.stats().sent_messages == 8


async def test_broadcast_with_nobody_registered_returns_zero(manager: ConnectionManager) -> None:
    assert await manager.broadcast("hello") == 0


@pytest.mark.parametrize(
    ("exclude", "expected"),
    [
        pytest.param("alice", {"bob", "carol"}, id="identifier: all its sockets"),
        pytest.param(["bob", "carol"], {"alice-1", "alice-2"}, id="list of identifiers"),
        pytest.param({"nobody"}, {"alice-1", "alice-2", "bob", "carol"}, id="unknown identifier"),
    ],
)
async def test_broadcast_excludes_identifiers(
    manager: ConnectionManager, exclude: object, expected: set[str]
) -> None:
    sockets = populate(manager)
    assert await manager.broadcast("hi", exclude=exclude) == len(expected)
    await eventually(lambda: all(sockets[n].received == ["hi"] for n in expected))
    assert {n for n, s in sockets.items() if s.received} == expected


async def test_exclude_takes_the_connection_that_register_returned(
    manager: ConnectionManager,
) -> None:
    sockets = populate(manager)
    alice_1 = manager.connection(sockets["alice-1"])
    assert await manager.broadcast("not for alice-1", exclude=alice_1) == 3
    assert await manager.send_to_group("room:1", "neither", exclude=[alice_1, "bob"]) == 1
    await eventually(lambda: sockets["alice-2"].received == ["not for alice-1", "neither"])
    assert sockets["alice-1"].received == []


@pytest.mark.parametrize("exclude", [123, b"alice", [["alice"]], [None], 1.5, {"alice": 1}])
async def test_exclude_refuses_what_can_name_nobody_and_queues_nothing(
    manager: ConnectionManager, exclude: object
) -> None:
    populate(manager)
    before = snapshot(manager)
    for call in (
        manager.broadcast,
        lambda m, exclude: manager.send_to_group("room:1", m, exclude=exclude),
    ):
        with pytest.raises(WrongType, match="exclude takes"):
            await call("hi", exclude=exclude)
    assert snapshot(manager) == before


@pytest.mark.parametrize(
    ("code", "reason", "error"),
    [
        (5000, "", InvalidArgument),
        (1005, "", InvalidArgument),  # reserved: reported, never sent
        (1006, "", InvalidArgument),
        (999, "", InvalidArgument),
        (-1, "", InvalidArgument),
        (1000, "r" * 124, InvalidArgument),  # a close frame holds 123 bytes of reason
        (1000, "é" * 62, InvalidArgument),
        (1000, "\ud800", InvalidArgument),
        ("1000", "", WrongType),
        (True, "", WrongType),
        (1000, b"bytes", WrongType),
    ],
)
async def test_close_codes_and_reasons_a_close_frame_cannot_carry_are_refused(
    manager: ConnectionManager, code: Any, reason: Any, error: type[Exception]
) -> None:
    sockets = populate(manager)
    before = snapshot(manager)
    with pytest.raises(error):
        await manager.close(sockets["bob"], code, reason)
    with pytest.raises(error):
        await manager.disconnect_identifier("bob", code, reason)
    assert snapshot(manager) == before
    assert sockets["bob"].close_code is None
    await manager.close(sockets["bob"], 4000, "r" * 123)  # the largest that fits
    assert (sockets["bob"].close_code, sockets["bob"].close_reason) == (4000, "r" * 123)


async def test_lookups_refuse_a_name_of_the_wrong_type(manager: ConnectionManager) -> None:
    with pytest.raises(WrongType):
        manager.sockets_of(["alice"])  # type: ignore[arg-type]


async def test_broadcast_excludes_sockets_and_mixed_lists(manager: ConnectionManager) -> None:
    sockets = populate(manager)
    assert await manager.broadcast("one", exclude=sockets["alice-1"]) == 3
    assert await manager.broadcast("two", exclude=[sockets["alice-2"], "bob"]) == 2
    assert await manager.broadcast("three", exclude=(sockets["carol"],)) == 3
    assert await manager.broadcast("four", exclude=[MemoryTransport("stranger")]) == 4
    await eventually(lambda: len(sockets["carol"].received) == 3)
    await eventually(lambda: len(sockets["alice-1"].received) == 3)
    assert sockets["alice-1"].received == ["two", "three", "four"]
    assert sockets["alice-2"].received == ["one", "three", "four"]
    assert sockets["bob"].received == ["one", "three", "four"]
    assert sockets["carol"].received == ["one", "two", "four"]


async def test_send_to_one_reaches_every_socket_of_the_identifier(
    manager: ConnectionManager,
) -> None:
    sockets = populate(manager)
    assert await manager.send_to_one("alice", "hi alice") == 2
    assert await manager.send_to_one("nobody", "hello?") == 0
    await eventually(lambda: len(sockets["alice-2"].received) == 1)
    assert sockets["alice-1"].received == sockets["alice-2"].received == ["hi alice"]
    assert sockets["bob"].received == sockets["carol"].received == []


async def test_send_to_many_reaches_each_connection_once_even_if_named_twice(
    manager: ConnectionManager,
) -> None:
    sockets = populate(manager)
    count = await manager.send_to_many(["alice", "bob", "alice", "nobody", "bob"], "hi")
    assert count == 3
    assert await manager.send_to_many(iter(["carol"]), "generator") == 1
    assert await manager.send_to_many([], "nobody") == 0
    await eventually(lambda: len(sockets["carol"].received) == 1)
    await checkpoint()
    assert sockets["alice-1"].received == sockets["alice-2"].received == ["hi"]
    assert sockets["bob"].received == ["hi"]
    assert sockets["carol"].received == ["generator"]


@pytest.mark.parametrize("identifiers", ["alice", b"alice"])
async def test_send_to_many_refuses_a_single_name_and_queues_nothing(
    manager: ConnectionManager, identifiers: Any
) -> None:
    populate(manager)
    before = snapshot(manager)
    with pytest.raises(WrongType):
        await manager.send_to_many(identifiers, "hi")
    assert snapshot(manager) == before


async def test_send_to_many_with_one_bad_name_queues_nothing(manager: ConnectionManager) -> None:
    populate(manager)
    before = snapshot(manager)
    with pytest.raises(InvalidArgument):
        await manager.send_to_many(["alice", "", "bob"], "hi")
    with pytest.raises(WrongType):
        await manager.send_to_many(["alice", 7], "hi")  # type: ignore[list-item]
    assert snapshot(manager) == before


async def test_send_to_group_reaches_every_socket_of_every_member(
    manager: ConnectionManager,
) -> None:
    sockets = populate(manager)
    assert await manager.send_to_group("room:1", "news") == 3
    assert await manager.send_to_group("room:1", "not bob", exclude="bob") == 2
    assert await manager.send_to_group("room:1", "not tab 1", exclude=sockets["alice-1"]) == 2
    assert await manager.send_to_group("room:1", "bob", exclude=["alice"]) == 1
    assert await manager.send_to_group("no-such-room", "echo") == 0
    await eventually(lambda: len(sockets["alice-2"].received) == 3)
    await eventually(lambda: len(sockets["bob"].received) == 3)
    assert sockets["alice-1"].received == ["news", "not bob"]
    assert sockets["alice-2"].received == ["news", "not bob", "not tab 1"]
    assert sockets["bob"].received == ["news", "not tab 1", "bob"]
    assert sockets["carol"].received == []


@pytest.mark.parametrize("name", [*BAD_NAME_TYPES, *BAD_NAME_VALUES])
async def test_sends_to_a_bad_name_raise_and_queue_nothing(
    manager: ConnectionManager, name: Any
) -> None:
    populate(manager)
    before = snapshot(manager)
    with pytest.raises(WsfleetError):
        await manager.send_to_one(name, "hi")
    with pytest.raises(WsfleetError):
        await manager.send_to_group(name, "hi")
    assert snapshot(manager) == before


SEND_CALLS: dict[str, Callable[[ConnectionManager, Any], Any]] = {
    "broadcast": lambda m, msg: m.broadcast(msg),
    "send_to_one": lambda m, msg: m.send_to_one("alice", msg),
    "send_to_many": lambda m, msg: m.send_to_many(["alice", "bob"], msg),
    "send_to_group": lambda m, msg: m.send_to_group("room:1", msg),
    "Connection.send": lambda m, msg: m.connection(m.sockets_of("bob")[0]).send(msg),
}


@pytest.mark.parametrize("call", SEND_CALLS)
@pytest.mark.parametrize("message", NOT_MESSAGES, ids=lambda m: type(m).__name__)
async def test_a_message_that_is_not_str_or_bytes_raises_type_error_and_queues_nothing(
    manager: ConnectionManager, call: str, message: object
) -> None:
    populate(manager)
    before = snapshot(manager)
    with pytest.raises(WrongType) as info:
        await SEND_CALLS[call](manager, message)
    assert isinstance(info.value, TypeError)
    assert snapshot(manager) == before


@pytest.mark.parametrize("call", SEND_CALLS)
async def test_a_message_over_the_size_limit_raises_and_queues_nothing(call: str) -> None:
    async with ConnectionManager(overflow=OverflowPolicy(max_message_size=10)) as manager:
        sockets = populate(manager)
        before = snapshot(manager)
        for message in ("x" * 11, b"x" * 11, "é" * 6):  # é is two bytes in UTF-8
            with pytest.raises(MessageTooLarge) as info:
                await SEND_CALLS[call](manager, message)
            assert (info.value.size, info.value.limit) == (11 if len(message) == 11 else 12, 10)
            assert isinstance(info.value, ValueError)
            assert snapshot(manager) == before
        assert await SEND_CALLS[call](manager, "x" * 10) >= 1  # the limit itself is allowed
        await eventually(lambda: any(s.received for s in sockets.values()))


UNENCODABLE = [
    json.loads('"\\ud800"'),  # valid JSON, valid UTF-8 on the wire: a lone surrogate in Python
    "hello \udfff",
    "\ud83d" + "x" * 100,  # half an emoji, the other half lost
]


@pytest.mark.parametrize("call", SEND_CALLS)
@pytest.mark.parametrize("message", UNENCODABLE, ids=["json", "trailing", "leading"])
async def test_text_that_cannot_be_encoded_is_refused_by_the_call_and_queues_nothing(
    manager: ConnectionManager, call: str, message: str
) -> None:
    sockets = populate(manager)
    before = snapshot(manager)
    with pytest.raises(UnencodableMessage) as info:
        await SEND_CALLS[call](manager, message)
    assert isinstance(info.value, ValueError)
    assert message[info.value.position] in "\ud800\udfff\ud83d"
    assert snapshot(manager) == before
    assert await SEND_CALLS[call](manager, "after") >= 1  # nobody was harmed
    await eventually(lambda: any(s.received == ["after"] for s in sockets.values()))
    assert manager.stats().dropped == 0
    assert manager.connections_in_state(ConnectionState.CONNECTED) == list(sockets.values())


async def test_the_default_size_limit_is_one_mebibyte(manager: ConnectionManager) -> None:
    socket = MemoryTransport()
    manager.register(socket, "alice")
    mib = 1024 * 1024
    with pytest.raises(MessageTooLarge):
        await manager.broadcast(b"x" * (mib + 1))
    assert manager.stats().queued_messages == 0
    assert await manager.broadcast(b"x" * mib) == 1
    await eventually(lambda: len(socket.received) == 1)


# -- groups -----------------------------------------------------------------------------


async def test_add_to_group_and_remove_from_group_are_idempotent(
    manager: ConnectionManager,
) -> None:
    populate(manager)
    manager.add_to_group("carol", "room:2")
    manager.add_to_group("carol", "room:2")
    assert manager.get_group_members("room:2") == {"carol"}
    assert manager.groups_of("carol") == {"room:2"}
    manager.remove_from_group("carol", "room:2")
    manager.remove_from_group("carol", "room:2")
    manager.remove_from_group("carol", "never-joined")
    assert manager.groups_of("carol") == set()
    assert manager.get_group_members("room:2") == set()


async def test_group_membership_covers_sockets_registered_later(
    manager: ConnectionManager,
) -> None:
    populate(manager)
    late = MemoryTransport("alice-3")
    manager.register(late, "alice")
    assert await manager.send_to_group("room:1", "hi") == 4
    await eventually(lambda: late.received == ["hi"])


async def test_joining_a_group_with_an_unknown_identifier_raises_a_key_error_changing_nothing(
    manager: ConnectionManager,
) -> None:
    populate(manager)
    before = snapshot(manager)
    with pytest.raises(UnknownIdentifier) as info:
        manager.add_to_group("nobody", "room:1")
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, WsfleetError)
    assert "nobody" in str(info.value)
    assert snapshot(manager) == before


async def test_leaving_a_group_after_the_last_socket_left_is_a_no_op(
    manager: ConnectionManager,
) -> None:
    """The routine race: a socket's cleanup ran before the application's "leave room"."""
    sockets = populate(manager)
    manager.unregister(sockets["bob"])  # bob's only socket: he leaves room:1 with it
    before = snapshot(manager)
    manager.remove_from_group("bob", "room:1")
    manager.remove_from_group("nobody", "room:1")
    manager.remove_from_group("bob", "no-such-room")
    assert snapshot(manager) == before
    assert manager.get_group_members("room:1") == {"alice"}


@pytest.mark.parametrize("name", [*BAD_NAME_TYPES, *BAD_NAME_VALUES])
async def test_group_calls_with_a_bad_name_raise_and_change_nothing(
    manager: ConnectionManager, name: Any
) -> None:
    populate(manager)
    before = snapshot(manager)
    expected = WrongType if not isinstance(name, str) else InvalidArgument
    for call in (manager.add_to_group, manager.remove_from_group):
        with pytest.raises(expected):
            call("alice", name)  # a bad group name
        with pytest.raises(expected):
            call(name, "room:1")  # a bad identifier
    with pytest.raises(expected):
        manager.get_group_members(name)
    with pytest.raises(expected):
        manager.groups_of(name)
    assert snapshot(manager) == before


async def test_group_lookups_return_copies(manager: ConnectionManager) -> None:
    populate(manager)
    members = manager.get_group_members("room:1")
    members.add("mallory")
    groups = manager.groups_of("alice")
    groups.add("room:evil")
    tabs = manager.sockets_of("alice")
    tabs.clear()
    assert manager.get_group_members("room:1") == {"alice", "bob"}
    assert manager.groups_of("alice") == {"room:1"}
    assert len(manager.sockets_of("alice")) == 2


async def test_an_unknown_group_has_no_members_and_empty_groups_are_deleted(
    manager: ConnectionManager,
) -> None:
    populate(manager)
    assert manager.get_group_members("room:none") == set()
    assert "room:none" not in manager.groups()  # looking it up did not create it
    manager.remove_from_group("alice", "room:1")
    manager.remove_from_group("bob", "room:1")
    assert manager.groups() == set()
    assert manager.stats().groups == 0


async def test_lookups_of_unknown_things_are_empty_not_errors(manager: ConnectionManager) -> None:
    populate(manager)
    stranger = MemoryTransport()
    assert manager.groups_of("nobody") == set()
    assert manager.sockets_of("nobody") == []
    assert manager.identifier_of(stranger) is None
    assert manager.get_connection_state(stranger) is None
    assert manager.get_state_timestamp(stranger) is None
    with pytest.raises(UnknownSocket) as info:
        manager.connection(stranger)
    assert isinstance(info.value, KeyError)


# -- states -----------------------------------------------------------------------------


async def test_state_timestamps_are_aware_utc_and_move_only_on_real_changes(
    manager: ConnectionManager,
) -> None:
    socket = MemoryTransport()
    wall_before = datetime.now(UTC)
    manager.register(socket, "alice")
    registered = manager.get_state_timestamp(socket)
    assert registered is not None
    assert registered.tzinfo is not None
    assert registered.utcoffset() == timedelta(0)
    assert abs(registered - wall_before) < timedelta(seconds=5)

    manager.set_connection_state(socket, C)  # already there: nothing happens
    assert manager.get_state_timestamp(socket) == registered
    await anyio.sleep(0.01)
    manager.set_connection_state(socket, I)
    idle_since = manager.get_state_timestamp(socket)
    assert idle_since is not None
    assert idle_since > registered
    manager.set_connection_state(socket, I)
    assert manager.get_state_timestamp(socket) == idle_since
    assert manager.connection(socket).state_since == idle_since


async def test_connections_in_state_follows_every_change(manager: ConnectionManager) -> None:
    sockets = populate(manager)
    manager.set_connection_state(sockets["bob"], I)
    manager.set_connection_state(sockets["carol"], I)
    assert set(manager.connections_in_state(I)) == {sockets["bob"], sockets["carol"]}
    assert set(manager.connections_in_state(C)) == {sockets["alice-1"], sockets["alice-2"]}
    manager.set_connection_state(sockets["carol"], C)
    manager.unregister(sockets["bob"])
    assert manager.connections_in_state(I) == []
    assert manager.connections_in_state(D) == []  # unregistered sockets are not listed
    assert manager.stats().states == {"CONNECTED": 3, "IDLE": 0, "ERROR": 0,
                                      "RECONNECTING": 0, "DISCONNECTED": 0}  # fmt: skip
    with pytest.raises(WrongType):
        manager.connections_in_state("CONNECTED")  # type: ignore[arg-type]


async def test_set_connection_state_is_applied_at_once_and_callbacks_run_afterwards(
    manager: ConnectionManager,
) -> None:
    seen: list[tuple[ConnectionState | None, ConnectionState]] = []
    socket = MemoryTransport()
    manager.register(socket, "alice")
    manager.on_state_change(lambda _socket, old, new: seen.append((old, new)))
    manager.set_connection_state(socket, I)
    assert manager.get_connection_state(socket) is I  # readable at once
    assert seen == []  # the callback has not run inside the change
    await eventually(lambda: seen == [(C, I)])


async def test_set_connection_state_with_a_reason_reports_it(manager: ConnectionManager) -> None:
    changes: list[StateChange] = []
    manager.on_state_change(changes.append)
    socket = MemoryTransport()
    conn = manager.register(socket, "alice")
    manager.set_connection_state(socket, I, "user went quiet")
    assert conn.reason == "user went quiet"
    await eventually(lambda: len(changes) == 2)
    assert changes[1].reason == "user went quiet"


def _reach(manager: ConnectionManager, socket: MemoryTransport, state: ConnectionState) -> None:
    """Register ``socket`` (with a retry that never fires) and walk it to ``state``."""
    manager.register(socket, "walker")
    manager.set_retry_policy(socket, NEVER)
    path = {C: [], I: [I], E: [E], R: [E, R]}[state]
    for step in path:
        manager.set_connection_state(socket, step)
    assert manager.get_connection_state(socket) is state


PAIRS = [(source, target) for source in ConnectionState for target in ConnectionState]
ALLOWED = set(rules_by_pair())
#: DISCONNECTED is final and a connection that reaches it leaves the registry, so no
#: registered connection is ever in it (see the tests of DISCONNECTED below).
LIVE = [p for p in PAIRS if p[0] is not D]


def test_the_table_lets_nothing_leave_disconnected() -> None:
    assert [pair for pair in ALLOWED if pair[0] is D] == []


@pytest.mark.parametrize(
    ("source", "target"),
    [p for p in LIVE if p not in ALLOWED and p[0] is not p[1]],
    ids=lambda s: s.name,
)
async def test_every_pair_the_table_refuses_raises_invalid_transition_and_changes_nothing(
    manager: ConnectionManager, source: ConnectionState, target: ConnectionState
) -> None:
    populate(manager)
    socket = MemoryTransport()
    _reach(manager, socket, source)
    before = snapshot(manager)
    with pytest.raises(InvalidTransition) as info:
        manager.set_connection_state(socket, target)
    assert (info.value.state, info.value.target) == (source, target)
    assert isinstance(info.value, ValueError)
    assert snapshot(manager) == before


@pytest.mark.parametrize(("source", "target"), sorted(ALLOWED, key=str), ids=lambda s: s.name)
async def test_every_pair_the_table_allows_is_applied(
    manager: ConnectionManager, source: ConnectionState, target: ConnectionState
) -> None:
    socket = MemoryTransport()
    _reach(manager, socket, source)
    conn = manager.connection(socket)
    manager.set_connection_state(socket, target)
    assert conn.state is target
    assert socket not in manager.connections_in_state(source)
    if target is D:  # the end: the connection leaves the registry in the same change
        assert manager.get_connection_state(socket) is None
        assert not any(socket in manager.connections_in_state(s) for s in ConnectionState)
        assert manager.count() == manager.stats().connections == 0
    else:
        assert manager.get_connection_state(socket) is target
        assert socket in manager.connections_in_state(target)


@pytest.mark.parametrize("how", ["set_connection_state", "send failed", "peer closed"])
async def test_a_connection_that_reaches_disconnected_leaves_the_registry_at_once(
    manager: ConnectionManager, how: str
) -> None:
    """The seed's count() is "active connections": nothing holds a DISCONNECTED one."""
    changes: list[StateChange] = []
    manager.on_state_change(changes.append)
    sockets = populate(manager)
    alice_1 = sockets["alice-1"]
    bob = sockets["bob"]
    conn = manager.connection(bob)
    if how == "set_connection_state":
        manager.set_connection_state(bob, D)
    elif how == "send failed":
        bob.fail_with = wsfleet.TransportError("peer reset")
        await manager.send_to_one("bob", "lost")
        await eventually(lambda: conn.state is D)
    else:
        conn.closed(1000, "bye")
    assert conn.state is D
    assert not conn.registered
    assert manager.count() == len(manager) == manager.stats().connections == 3
    assert manager.identifiers() == {"alice", "carol"}
    assert manager.get_group_members("room:1") == {"alice"}
    assert manager.get_connection_state(bob) is None
    assert manager.unregister(bob) is False  # already gone: no error
    await eventually(lambda: [c.new for c in changes if c.connection is conn][-1:] == [D])
    manager.unregister(alice_1)  # one of two tabs: alice stays in her groups
    assert manager.get_group_members("room:1") == {"alice"}


async def test_a_disconnected_connection_refuses_every_request_and_changes_nothing(
    manager: ConnectionManager,
) -> None:
    populate(manager)
    socket = MemoryTransport()
    manager.register(socket, "walker")
    manager.set_connection_state(socket, D)
    before = snapshot(manager)
    for target in ConnectionState:
        with pytest.raises(UnknownSocket):
            manager.set_connection_state(socket, target)
    assert snapshot(manager) == before


async def test_a_guard_that_says_no_refuses_the_change_and_changes_nothing(
    manager: ConnectionManager,
) -> None:
    socket = MemoryTransport()
    manager.register(socket, "alice")
    manager.set_retry_policy(socket, NEVER)
    manager.set_connection_state(socket, E)  # held: a retry is scheduled
    manager.set_retry_policy(socket, None)  # no retry policy: RECONNECTING is not allowed
    before = snapshot(manager)
    with pytest.raises(InvalidTransition, match="no retry policy"):
        manager.set_connection_state(socket, R)
    assert snapshot(manager) == before


async def test_set_connection_state_refuses_bad_arguments_and_changes_nothing(
    manager: ConnectionManager,
) -> None:
    sockets = populate(manager)
    before = snapshot(manager)
    with pytest.raises(WrongType):
        manager.set_connection_state(sockets["bob"], "IDLE")  # type: ignore[arg-type]
    with pytest.raises(UnknownSocket):
        manager.set_connection_state(MemoryTransport(), I)
    assert snapshot(manager) == before


async def test_error_without_a_retry_policy_goes_on_to_disconnected(
    manager: ConnectionManager,
) -> None:
    changes: list[tuple[ConnectionState | None, ConnectionState]] = []
    manager.on_state_change(lambda _s, old, new: changes.append((old, new)))
    socket = MemoryTransport()
    conn = manager.register(socket, "alice")
    manager.set_connection_state(socket, E)
    assert conn.state is D  # in the same call
    assert manager.count() == 0
    await eventually(lambda: len(changes) == 3)
    assert changes == [(None, C), (C, E), (E, D)]


async def test_set_retry_policy_overrides_the_managers_default_per_connection(
    manager: ConnectionManager,
) -> None:
    kept, dropped = MemoryTransport("kept"), MemoryTransport("dropped")
    manager.register(kept, "a")
    manager.register(dropped, "b")
    manager.set_retry_policy(kept, NEVER)
    manager.set_connection_state(kept, E)
    manager.set_connection_state(dropped, E)
    assert manager.get_connection_state(kept) is E  # a retry is scheduled: held
    assert manager.get_connection_state(dropped) is None  # no policy: gave up, forgotten
    assert manager.stats().held == 1
    manager.set_retry_policy(kept, None)  # back to the manager's default (none)
    with pytest.raises(InvalidTransition):
        manager.set_connection_state(kept, R)


async def test_set_retry_policy_refuses_bad_arguments_and_changes_nothing(
    manager: ConnectionManager,
) -> None:
    sockets = populate(manager)
    before = snapshot(manager)
    with pytest.raises(WrongType):
        manager.set_retry_policy(sockets["bob"], {"max_attempts": 3})  # type: ignore[arg-type]
    with pytest.raises(UnknownSocket):
        manager.set_retry_policy(MemoryTransport(), NEVER)
    assert manager.connection(sockets["bob"]).retry_policy is None
    assert snapshot(manager) == before


async def test_the_managers_default_retry_policy_applies_to_every_connection() -> None:
    async with ConnectionManager(retry_policy=NEVER) as manager:
        socket = MemoryTransport()
        manager.register(socket, "alice")
        manager.set_connection_state(socket, E)
        assert manager.get_connection_state(socket) is E


# -- callbacks ----------------------------------------------------------------------------


async def test_on_state_change_works_as_a_decorator_with_none_for_new_connections(
    manager: ConnectionManager,
) -> None:
    seen: list[tuple[object, ConnectionState | None, ConnectionState]] = []

    @manager.on_state_change
    async def record(socket: object, old: ConnectionState | None, new: ConnectionState) -> None:
        seen.append((socket, old, new))

    socket = MemoryTransport()
    manager.register(socket, "alice")
    await eventually(lambda: seen == [(socket, None, C)])
    await record("direct", None, C)  # the decorated name still works as a function
    assert seen[-1] == ("direct", None, C)


async def test_a_callback_taking_one_argument_receives_the_state_change_record(
    manager: ConnectionManager,
) -> None:
    records: list[StateChange] = []

    @manager.on_state_change
    def record(change: StateChange) -> None:
        records.append(change)

    socket = MemoryTransport()
    conn = manager.register(socket, "alice")
    manager.set_connection_state(socket, I, "quiet")
    await eventually(lambda: len(records) == 2)
    born, idle = records
    assert (born.connection, born.old, born.new) == (conn, None, C)
    assert (idle.connection, idle.old, idle.new, idle.reason) == (conn, C, I, "quiet")
    assert idle.at == manager.get_state_timestamp(socket)


async def test_sync_and_async_callbacks_both_run(manager: ConnectionManager) -> None:
    sync_seen: list[ConnectionState] = []
    async_seen: list[ConnectionState] = []

    def sync_callback(_socket: object, _old: object, new: ConnectionState) -> None:
        sync_seen.append(new)

    async def async_callback(_socket: object, _old: object, new: ConnectionState) -> None:
        await checkpoint()
        async_seen.append(new)

    manager.on_state_change(sync_callback)
    manager.on_state_change(async_callback)
    socket = MemoryTransport()
    manager.register(socket, "alice")
    manager.unregister(socket)
    await eventually(lambda: len(async_seen) == 2)
    assert sync_seen == async_seen == [C, D]


async def test_a_removed_callback_is_not_called_again(manager: ConnectionManager) -> None:
    seen: list[ConnectionState] = []
    handle = manager.on_state_change(lambda _s, _o, new: seen.append(new))
    socket = MemoryTransport()
    manager.register(socket, "alice")
    await eventually(lambda: seen == [C])
    assert handle.remove() is True
    assert handle.remove() is False
    manager.set_connection_state(socket, I)
    manager.unregister(socket)
    await anyio.sleep(0.01)
    assert seen == [C]


async def test_on_state_change_refuses_what_cannot_be_called(manager: ConnectionManager) -> None:
    with pytest.raises(WrongType):
        manager.on_state_change("print")  # type: ignore[arg-type]


# -- count, clear, stats --------------------------------------------------------------------


async def test_count_and_len_are_the_number_of_registered_sockets(
    manager: ConnectionManager,
) -> None:
    assert manager.count() == len(manager) == 0
    sockets = populate(manager)
    assert manager.count() == len(manager) == 4
    manager.unregister(sockets["bob"])
    assert manager.count() == len(manager) == 3


async def test_clear_unregisters_everything_with_callbacks_and_empties_groups(
    manager: ConnectionManager,
) -> None:
    sockets = populate(manager)
    ends: list[object] = []
    manager.on_state_change(lambda socket, _old, new: ends.append(socket) if new is D else None)
    manager.clear()
    assert len(manager) == 0
    assert manager.groups() == set()
    assert manager.identifiers() == set()
    assert all(manager.get_connection_state(s) is None for s in sockets.values())
    stats = manager.stats()
    assert (stats.connections, stats.identifiers, stats.groups) == (0, 0, 0)
    assert set(stats.states.values()) == {0}
    await eventually(lambda: len(ends) == 4)
    assert set(map(id, ends)) == set(map(id, sockets.values()))
    manager.clear()  # clearing an empty manager is fine
    assert len(manager) == 0


async def test_stats_count_states_queues_drops_callback_errors_and_groups(
    manager: ConnectionManager,
) -> None:
    sockets = populate(manager)
    stalled = MemoryTransport("stalled", stalled=True)
    manager.register(stalled, "stalled")
    manager.set_connection_state(sockets["carol"], I)

    def broken(_socket: object, _old: object, _new: object) -> None:
        raise RuntimeError("callback bug")

    manager.on_state_change(broken)
    await manager.send_to_one("stalled", "in flight")  # taken by the writer, which waits
    await eventually(lambda: manager.stats().queued_messages == 0)
    await manager.send_to_one("stalled", "queued")
    await manager.send_to_one("stalled", b"also")
    manager.unregister(sockets["bob"])  # one callback error
    await eventually(lambda: manager.stats().callback_errors == 1)

    stats = manager.stats()
    assert stats.connections == len(manager) == 4
    assert stats.identifiers == 3
    assert stats.groups == 1
    assert stats.states == {"CONNECTED": 3, "IDLE": 1, "ERROR": 0,
                            "RECONNECTING": 0, "DISCONNECTED": 0}  # fmt: skip
    assert (stats.queued_messages, stats.queued_bytes) == (2, len("queued") + len(b"also"))
    assert stats.drops == {}
    assert stats.callback_errors == 1

    manager.unregister(stalled)
    stats = manager.stats()
    assert (stats.queued_messages, stats.queued_bytes) == (0, 0)
    assert stats.drops == {"unregistered": 2}
    # The writer holding the first message is cancelled: that message is counted too.
    await eventually(lambda: "connection lost" in manager.stats().drops)
    assert manager.stats().as_dict()["drops"] == {"unregistered": 2, "connection lost": 1}
    assert manager.stats().dropped == manager.stats().as_dict()["dropped"] == 3


# -- lifetime -------------------------------------------------------------------------------


async def test_the_manager_cannot_be_used_before_async_with() -> None:
    manager = ConnectionManager()
    with pytest.raises(ManagerClosed) as info:
        manager.register(MemoryTransport(), "alice")
    assert isinstance(info.value, RuntimeError)
    for call in SEND_CALLS:
        if call != "Connection.send":
            with pytest.raises(ManagerClosed):
                await SEND_CALLS[call](manager, "hi")
    assert len(manager) == 0
    assert "stopped" in repr(manager)


async def test_the_manager_cannot_be_used_after_async_with() -> None:
    socket = MemoryTransport()
    async with ConnectionManager() as manager:
        conn = manager.register(socket, "alice")
        assert "running" in repr(manager)
    assert "stopped" in repr(manager)
    assert len(manager) == 0
    assert not conn.registered
    with pytest.raises(ManagerClosed):
        manager.register(MemoryTransport(), "bob")
    for call in SEND_CALLS:
        if call != "Connection.send":
            with pytest.raises(ManagerClosed):
                await SEND_CALLS[call](manager, "hi")
    with pytest.raises(ManagerClosed):
        await conn.send("hi")
    with pytest.raises(ManagerClosed):
        async with manager:
            pass


async def _run(call: Callable[[], object]) -> object:
    """Call, and await what the call returns if it is awaitable."""
    result = call()
    return await result if isinstance(result, Awaitable) else result


def _mutating_calls(
    manager: ConnectionManager, socket: object, conn: wsfleet.Connection
) -> dict[str, Callable[[], object]]:
    """Every call that changes the fleet, on a socket that was registered once."""
    return {
        "register": lambda: manager.register(MemoryTransport(), "bob"),
        "unregister": lambda: manager.unregister(socket),
        "close": lambda: manager.close(socket),
        "clear": manager.clear,
        "add_to_group": lambda: manager.add_to_group("alice", "room"),
        "remove_from_group": lambda: manager.remove_from_group("alice", "room"),
        "set_connection_state": lambda: manager.set_connection_state(socket, I),
        "set_retry_policy": lambda: manager.set_retry_policy(socket, NEVER),
        "set_reconnector": lambda: manager.set_reconnector(socket, None),
        "on_state_change": lambda: manager.on_state_change(print),
        "touch": lambda: manager.touch(socket),
        "broadcast": lambda: manager.broadcast("hi"),
        "send_to_one": lambda: manager.send_to_one("alice", "hi"),
        "send_to_many": lambda: manager.send_to_many(["alice"], "hi"),
        "send_to_group": lambda: manager.send_to_group("room", "hi"),
        "disconnect_identifier": lambda: manager.disconnect_identifier("alice"),
        "connect": lambda: manager.connect("ws://127.0.0.1:9/", "upstream"),
        "session": lambda: manager.session(MemoryTransport(), "carol").__aenter__(),
        "Connection.send": lambda: conn.send("hi"),
        "Connection.touch": lambda: conn.touch(),
    }


async def test_after_the_block_every_mutating_call_raises_manager_closed() -> None:
    """One clear answer, not UnknownIdentifier here and a silent 0 there."""
    socket = MemoryTransport()
    async with ConnectionManager() as manager:
        conn = manager.register(socket, "alice")
        manager.add_to_group("alice", "room")
    calls = _mutating_calls(manager, socket, conn)
    for name, call in calls.items():
        if name == "Connection.touch":
            call()  # an adapter's late report of a socket that is gone: ignored, no error
            continue
        with pytest.raises(ManagerClosed, match="block has ended"):
            await _run(call)
    assert manager.count() == 0
    assert manager.stats().connections == 0


def _from_another_thread(call: Callable[[], object]) -> BaseException | None:
    """Run ``call`` in this (other) thread, its coroutine on an event loop of the thread's."""
    try:
        anyio.run(_run, call)
    except BaseException as exc:
        return exc
    return None


async def test_a_mutating_call_from_another_thread_names_anyio_from_thread() -> None:
    socket = MemoryTransport()
    async with ConnectionManager() as manager:
        conn = manager.register(socket, "alice")
        manager.add_to_group("alice", "room")
        before = snapshot(manager)
        calls = _mutating_calls(manager, socket, conn)
        del calls["Connection.touch"]  # reports go through the adapter's loop anyway
        for name, call in calls.items():
            error = await anyio.to_thread.run_sync(_from_another_thread, call)
            assert isinstance(error, WrongThread), (name, error)
            assert isinstance(error, RuntimeError)
            assert "anyio.from_thread" in str(error)
        assert snapshot(manager) == before
        # Reads are plain lookups; through the loop, a mutating call works from a thread.
        assert await anyio.to_thread.run_sync(manager.count) == 1

        def join_through_the_loop() -> None:
            anyio.from_thread.run_sync(manager.add_to_group, "alice", "lobby")

        await anyio.to_thread.run_sync(join_through_the_loop)
        assert manager.groups_of("alice") == {"room", "lobby"}


async def test_a_manager_can_be_entered_only_once_at_a_time(manager: ConnectionManager) -> None:
    with pytest.raises(ManagerClosed):
        await manager.__aenter__()
    manager.register(MemoryTransport(), "still works")
    assert len(manager) == 1


async def test_an_error_inside_async_with_propagates_unchanged_and_sockets_are_closed() -> None:
    socket = MemoryTransport()
    manager = ConnectionManager()

    async def application() -> None:
        async with manager:
            manager.register(socket, "alice")
            raise LookupError("application bug")

    with pytest.raises(LookupError, match="application bug"):  # not an ExceptionGroup
        await application()
    assert socket.close_code == 1001
    assert len(manager) == 0


async def test_a_cancelled_owner_still_closes_every_socket() -> None:
    socket = MemoryTransport()
    with anyio.CancelScope() as scope:
        async with ConnectionManager() as manager:
            manager.register(socket, "alice")
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert socket.close_code == 1001


@pytest.mark.parametrize(
    "error",
    [
        wsfleet.AlreadyRegistered,
        wsfleet.InvalidArgument,
        wsfleet.InvalidPolicy,
        wsfleet.InvalidTransition,
        wsfleet.ManagerClosed,
        wsfleet.MessageTooLarge,
        wsfleet.RetriesExhausted,
        wsfleet.TransportError,
        wsfleet.UnknownIdentifier,
        wsfleet.UnknownSocket,
        wsfleet.WrongType,
    ],
)
def test_every_error_derives_from_wsfleet_error(error: type[Exception]) -> None:
    assert issubclass(error, WsfleetError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"retry_policy": {"max_attempts": 3}},
        {"heartbeat": 20},
        {"overflow": "drop-oldest"},
        {"backplane": object()},
        {"callback_timeout": 0},
        {"shutdown_timeout": -1},
        {"close_timeout": True},
        {"callback_timeout": "5"},
        {"close_timeout": float("inf")},
        {"resume_window": float("inf")},
        {"shutdown_timeout": float("nan")},
    ],
    ids=lambda kw: next(iter(kw)),
)
def test_the_constructor_refuses_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(WsfleetError):
        ConnectionManager(**kwargs)
