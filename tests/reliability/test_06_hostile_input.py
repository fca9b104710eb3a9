"""Check 6: hostile input. Each attempt is refused with one of wsfleet's own errors (or,
for inbound frames, the socket is closed with the code RFC 6455 names), and leaves the
manager exactly as it was: the same connections in the same states since the same instants,
the same groups, the same counters.

* arguments: identifiers and group names that are not ``str``, empty or 10 MB long;
  messages that are neither ``str`` nor ``bytes``; outbound messages over the size limit
  (refused before any byte is sent);
* sockets: objects the manager does not hold, in every call that takes a socket;
* states: every (state, target) pair the transition table refuses, from a real connection
  in each state, and a pair refused by its guard;
* inbound: an oversize message (closed 1009, whole or fragmented), invalid UTF-8 in a text
  frame (closed 1007), and a permessage-deflate bomb (closed 1009, the memory it makes the
  server hold bounded by 2 x the size limit + 10 MiB, measured with tracemalloc).

Real websockets servers and peers on 127.0.0.1, asyncio and trio. The bomb goes to the
websockets adapter, the one whose library offers compression.
"""

from __future__ import annotations

import itertools
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, suppress
from typing import Any

import anyio
import pytest
from anyio.lowlevel import checkpoint

from support import C, D, E, I, R, wait_until
from wsfleet import (
    AlreadyRegistered,
    ConnectionManager,
    ConnectionState,
    InvalidArgument,
    InvalidTransition,
    MessageTooLarge,
    OverflowPolicy,
    RetryPolicy,
    UnknownIdentifier,
    UnknownSocket,
    WrongType,
    WsfleetError,
)
from wsfleet.fsm.table import rules_by_pair

from .conftest import (
    Figure,
    FrameReader,
    client,
    close_client,
    frame,
    full_form,
    raw_connect,
    serve,
)

pytestmark = [pytest.mark.reliability, pytest.mark.anyio]

LIMIT = 64 * 1024  # outbound: OverflowPolicy.max_message_size
MAX_SIZE = 1024 * 1024  # inbound: the websockets server's max_size
TEN_MB = "x" * 10_000_000


class Server:
    """Sessions for ``?id=...``; ``?id=bare-...`` sockets are accepted but never registered."""

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        self.sockets: dict[str, Any] = {}

    async def handler(self, ws: Any, identifier: str) -> None:
        self.sockets[identifier] = ws
        if identifier.startswith("bare"):
            with suppress(Exception):
                async for _ in ws:
                    pass
            return
        async with self.manager.session(ws, identifier) as session:
            async for _ in session:
                pass


def snapshot(manager: ConnectionManager) -> tuple[Any, ...]:
    """Everything an application can read of the manager (sockets by identity)."""
    sockets = [s for state in ConnectionState for s in manager.connections_in_state(state)]
    registry = sorted(
        (
            id(s),
            manager.identifier_of(s),
            manager.get_connection_state(s),
            manager.get_state_timestamp(s),
        )
        for s in sockets
    )
    groups = {group: manager.get_group_members(group) for group in sorted(manager.groups())}
    return (manager.stats().as_dict(), registry, groups, manager.identifiers(), manager.count())


async def refused(
    manager: ConnectionManager,
    call: Callable[[], object],
    expected: type[WsfleetError],
) -> WsfleetError:
    """Run ``call`` (awaiting what it returns); it must raise ``expected`` changing nothing."""
    before = snapshot(manager)
    try:
        result = call()
        if isinstance(result, Awaitable):
            await result
    except WsfleetError as exc:  # anything else goes on up, failing the test
        error = exc
    else:
        pytest.fail(f"accepted, where {expected.__name__} was expected")
    await checkpoint()  # anything it queued would now be under way
    assert isinstance(error, expected), repr(error)
    assert snapshot(manager) == before, f"{error!r} changed the manager"
    return error


async def unchanged(manager: ConnectionManager, call: Callable[[], object]) -> object:
    """Run ``call`` (awaiting what it returns); it must change nothing and raise nothing."""
    before = snapshot(manager)
    result = call()
    if isinstance(result, Awaitable):
        result = await result
    await checkpoint()
    assert snapshot(manager) == before
    return result


@pytest.fixture
async def fleet() -> AsyncIterator[tuple[Server, Server, str, Any]]:
    """A manager with alice (in "room") and bob connected, a second manager, and the url."""
    overflow = OverflowPolicy(max_message_size=LIMIT)
    async with AsyncExitStack() as stack:
        manager = await stack.enter_async_context(ConnectionManager(overflow=overflow))
        other = await stack.enter_async_context(ConnectionManager())
        server, elsewhere = Server(manager), Server(other)
        url = await stack.enter_async_context(serve(server.handler))
        other_url = await stack.enter_async_context(serve(elsewhere.handler))
        alice = await stack.enter_async_context(client(f"{url}?id=alice"))
        await stack.enter_async_context(client(f"{url}?id=bob"))
        await stack.enter_async_context(client(f"{url}?id=bare-1"))
        await stack.enter_async_context(client(f"{other_url}?id=carol"))
        async with client(f"{url}?id=gone"):
            await wait_until(lambda: "gone" in server.sockets, "gone connected")
        await wait_until(
            lambda: manager.count() == 2 and "bare-1" in server.sockets and other.count() == 1,
            "everyone in place",
        )
        manager.add_to_group("alice", "room")
        server.sockets["carol"] = elsewhere.sockets["carol"]
        yield server, elsewhere, url, alice


BAD_TYPES: list[object] = [123, None, b"alice", ["alice"], 1.5, object()]
BAD_NAMES: list[str] = ["", TEN_MB]
BAD_MESSAGES: list[object] = [123, None, bytearray(b"x"), memoryview(b"x"), ["x"], {"x": 1}, 1.5]


def oversize() -> Iterator[str | bytes]:
    yield "x" * (LIMIT + 1)
    yield b"\x00" * (LIMIT + 1)
    yield "\u00e9" * (LIMIT // 2 + 1)  # fewer characters than the limit, more bytes


async def test_bad_arguments_are_refused_and_change_nothing(
    fleet: tuple[Server, Server, str, Any], figure: Figure
) -> None:
    server, _, _, alice = fleet
    manager = server.manager
    bare = server.sockets["bare-1"]
    alice_conn = manager.connection(server.sockets["alice"])
    sent_before = manager.stats().sent_messages
    attempts = 0

    def name_calls(bad: Any) -> list[Callable[[], object]]:
        return [
            lambda: manager.register(bare, bad),
            # manager.session() answers a bad identifier by closing that socket with 1008
            # instead (it comes from the client): tests/adapters/test_adapter_suite.py.
            lambda: manager.add_to_group(bad, "room"),
            lambda: manager.add_to_group("alice", bad),
            lambda: manager.remove_from_group(bad, "room"),
            lambda: manager.remove_from_group("alice", bad),
            lambda: manager.send_to_one(bad, "m"),
            *(
                # An unhashable identifier in send_to_many: test_unhashable_identifiers_...
                []
                if isinstance(bad, list)
                else [
                    lambda: manager.send_to_many([bad], "m"),
                    lambda: manager.send_to_many(["alice", bad], "m"),
                ]
            ),
            lambda: manager.send_to_group(bad, "m"),
            lambda: manager.get_group_members(bad),
            lambda: manager.groups_of(bad),
            lambda: manager.nodes_of(bad),
            lambda: manager.disconnect_identifier(bad),
        ]

    for bad_type in BAD_TYPES:
        for call in name_calls(bad_type):
            await refused(manager, call, WrongType)
            attempts += 1
    for bad_name in BAD_NAMES:
        for call in name_calls(bad_name):
            await refused(manager, call, InvalidArgument)
            attempts += 1
    for call in [
        lambda: manager.send_to_many("alice", "m"),  # one str, not an iterable of them
        lambda: manager.send_to_many(b"alice", "m"),
    ]:
        await refused(manager, call, WrongType)
        attempts += 1
    await refused(manager, lambda: manager.add_to_group("nobody", "room"), UnknownIdentifier)
    attempts += 1
    # Leaving is idempotent: an identifier with no socket is in no group.
    await unchanged(manager, lambda: manager.remove_from_group("nobody", "room"))
    await refused(
        manager, lambda: manager.register(server.sockets["alice"], "again"), AlreadyRegistered
    )
    attempts += 1

    def message_calls(message: Any) -> list[Callable[[], object]]:
        return [
            lambda: manager.broadcast(message),
            lambda: manager.broadcast(message, exclude="bob"),
            lambda: manager.send_to_one("alice", message),
            lambda: manager.send_to_many(["alice", "bob"], message),
            lambda: manager.send_to_group("room", message),
            lambda: alice_conn.send(message),
        ]

    for bad_message in BAD_MESSAGES:
        for call in message_calls(bad_message):
            await refused(manager, call, WrongType)
            attempts += 1
    for big in oversize():
        for call in message_calls(big):
            error = await refused(manager, call, MessageTooLarge)
            assert isinstance(error, MessageTooLarge)
            assert error.limit == LIMIT
            assert error.size > LIMIT
            attempts += 1

    # Not one byte of any of it reached a client: the next thing alice reads is this.
    assert manager.stats().sent_messages == sent_before
    await manager.send_to_one("alice", "after")
    with anyio.fail_after(5):
        assert await alice.recv() == "after"
    figure("hostile calls refused, manager unchanged", attempts)


@pytest.mark.parametrize("bad", [["alice"], {"alice": 1}, {"alice"}], ids=["list", "dict", "set"])
async def test_unhashable_identifiers_in_send_to_many_raise_wrong_type(
    fleet: tuple[Server, Server, str, Any], bad: object
) -> None:
    manager = fleet[0].manager
    await refused(manager, lambda: manager.send_to_many([bad], "m"), WrongType)
    await refused(manager, lambda: manager.send_to_many(["alice", bad], "m"), WrongType)


async def test_unknown_sockets_are_refused_everywhere(
    fleet: tuple[Server, Server, str, Any], figure: Figure
) -> None:
    server, elsewhere, _, _ = fleet
    manager = server.manager
    unknown: dict[str, object] = {
        "object()": object(),
        "unregistered socket": server.sockets["bare-1"],
        "socket whose session ended": server.sockets["gone"],
        "socket of another manager": elsewhere.sockets["carol"],
        "None": None,
        "int": 42,
        "Connection of another manager": elsewhere.manager.connection(elsewhere.sockets["carol"]),
    }
    checks = 0
    for label, socket in unknown.items():
        for call in [
            lambda s=socket: manager.close(s),
            lambda s=socket: manager.connection(s),
            lambda s=socket: manager.set_connection_state(s, I),
            lambda s=socket: manager.set_retry_policy(s, None),
            lambda s=socket: manager.set_reconnector(s, None),
            lambda s=socket: manager.touch(s),
        ]:
            await refused(manager, call, UnknownSocket)
            checks += 1
        assert await unchanged(manager, lambda s=socket: manager.unregister(s)) is False, label
        for query in (
            manager.identifier_of,
            manager.get_connection_state,
            manager.get_state_timestamp,
        ):
            assert await unchanged(manager, lambda s=socket, q=query: q(s)) is None, label
        checks += 4
        if label == "int":  # names nobody at all: a mistake, refused
            await refused(manager, lambda s=socket: manager.broadcast("m", exclude=s), WrongType)
            checks += 1
            continue
        # Excluding a socket the manager does not hold excludes nobody.
        sent = manager.stats().sent_messages
        assert await manager.broadcast("to all", exclude=socket) == manager.count(), label
        assert await manager.send_to_group("room", "to the room", exclude=socket) == 1, label
        checks += 2
        await wait_until(lambda s=sent: manager.stats().sent_messages == s + 3, "written")  # type: ignore[misc]
    # Registering something that is not a socket of any adapter: refused, changing nothing.
    for thing in [object(), None, 42, "ws"]:
        await refused(manager, lambda t=thing: manager.register(t, "intruder"), WrongType)
        await refused(
            manager, lambda t=thing: manager.session(t, "intruder").__aenter__(), WrongType
        )
        checks += 2
    assert elsewhere.manager.count() == 1  # the other manager was not touched either
    figure("unknown-socket calls checked", checks)


async def test_every_refused_state_request_changes_nothing(figure: Figure) -> None:
    # A retry policy keeps ERROR an ERROR (no give-up) for the length of the test.
    patient = RetryPolicy(base_delay=3600, max_delay=3600)
    allowed = set(rules_by_pair())
    refused_pairs = [
        (source, target)
        for source, target in itertools.product(ConnectionState, repeat=2)
        if source is not target and (source, target) not in allowed
    ]
    assert refused_pairs  # the table does refuse some
    assert len(refused_pairs) + len(allowed) == len(ConnectionState) * (len(ConnectionState) - 1)
    # DISCONNECTED is final and forgotten: every request on such a socket is UnknownSocket.
    live_refused = [(source, target) for source, target in refused_pairs if source is not D]
    route = {  # how to bring a CONNECTED connection to each state, by allowed changes
        C: [],
        I: [I],
        E: [E],
        R: [E, R],
        D: [D],
    }
    async with ConnectionManager(retry_policy=patient) as manager:
        server = Server(manager)
        async with AsyncExitStack() as stack:
            url = await stack.enter_async_context(serve(server.handler))
            sockets = {}
            for state in ConnectionState:
                name = f"in-{state.name.lower()}"
                await stack.enter_async_context(client(f"{url}?id={name}"))
                await wait_until(lambda n=name: n in server.sockets, f"{name} registered")  # type: ignore[misc]
                socket = sockets[state] = server.sockets[name]
                for step in route[state]:
                    manager.set_connection_state(socket, step, "test setup")
                assert manager.get_connection_state(socket) is (None if state is D else state)
            for source, target in live_refused:
                error = await refused(
                    manager,
                    lambda s=source, t=target: manager.set_connection_state(sockets[s], t),
                    InvalidTransition,
                )
                assert isinstance(error, InvalidTransition)
                assert (error.state, error.target) == (source, target)
                assert error.reason == "not in the transition table"
            for target in ConnectionState:
                await refused(
                    manager,
                    lambda t=target: manager.set_connection_state(sockets[D], t),
                    UnknownSocket,
                )
            # Allowed by the table, refused by its guard: no retry left for this connection.
            manager.set_retry_policy(sockets[E], RetryPolicy(max_attempts=0))
            error = await refused(
                manager, lambda: manager.set_connection_state(sockets[E], R), InvalidTransition
            )
            assert isinstance(error, InvalidTransition)
            assert error.reason == "no retry policy"  # max_attempts=0 allows no attempt
            # Not a state at all.
            for bad in ["CONNECTED", 1, None, ConnectionState]:
                await refused(
                    manager, lambda b=bad: manager.set_connection_state(sockets[C], b), WrongType
                )
    figure(
        "refused state requests checked",
        len(live_refused) + len(ConnectionState) + 1,
        "",
        "every (state, target) pair absent from the table, every request on a DISCONNECTED "
        "(forgotten) socket, and one guard's refusal",
    )


@pytest.fixture(scope="module")
def bomb() -> tuple[int, bytes]:
    """A permessage-deflate payload inflating to 256 MiB (512 MiB in the full form) of zeros."""
    inflated = (512 if full_form() else 256) << 20
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1 << 20)
    parts = [compressor.compress(zeros) for _ in range(inflated >> 20)]
    parts.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    data = b"".join(parts)
    assert data.endswith(b"\x00\x00\xff\xff")
    return inflated, data[:-4]  # RFC 7692 7.2.1: the sender drops the flush marker


async def attack(url: str, name: str, frames: list[bytes], extensions: str | None = None) -> int:
    """Connect as ``name``, write ``frames``, return the close code the server answers with."""
    stream, headers = await raw_connect(f"{url}?id={name}", extensions=extensions)
    if extensions is not None:
        assert "permessage-deflate" in headers, headers
    reader = FrameReader(stream)
    try:
        async with anyio.create_task_group() as tg:

            async def write() -> None:
                with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    for data in frames:
                        await stream.send(data)

            tg.start_soon(write)
            code = await reader.close_code(timeout=10)
            tg.cancel_scope.cancel()
    finally:
        await stream.aclose()
    return code


async def test_hostile_inbound_frames_are_closed_and_change_nothing(
    bomb: tuple[int, bytes], figure: Figure
) -> None:
    inflated, compressed = bomb
    async with ConnectionManager() as manager:
        server = Server(manager)
        async with (
            serve(server.handler, max_size=MAX_SIZE, compression="deflate") as url,
            client(f"{url}?id=bystander") as bystander,
        ):
            await wait_until(lambda: manager.count() == 1, "bystander registered")
            manager.add_to_group("bystander", "room")
            await anyio.sleep(0.05)

            async def attempt(name: str, frames: list[bytes], code: int, **options: Any) -> None:
                before = snapshot(manager)
                assert await attack(url, name, frames, **options) == code, name
                await wait_until(
                    lambda: name in server.sockets and manager.count() == 1, f"{name} gone"
                )
                await anyio.sleep(0.01)  # callbacks and counters settle
                assert snapshot(manager) == before, name

            big = b"x" * (MAX_SIZE + 1)
            await attempt("oversize", [frame(0x2, big)], 1009)
            chunk = b"y" * (MAX_SIZE // 4)
            fragments = [frame(0x2, chunk, fin=False)]
            fragments += [frame(0x0, chunk, fin=False) for _ in range(4)]
            fragments.append(frame(0x0, chunk))
            await attempt("oversize-fragments", fragments, 1009)
            await attempt("bad-utf8", [frame(0x1, b"caf\xc3 \xff\xfe")], 1007)
            await attempt(
                "bad-utf8-fragments", [frame(0x1, b"caf\xc3", fin=False), frame(0x0, b"(")], 1007
            )

            # The bomb: memory is traced from the moment it is sent until it is refused.
            tracemalloc.start()
            try:
                tracemalloc.reset_peak()
                baseline = tracemalloc.get_traced_memory()[0]
                await attempt(
                    "bomb",
                    [frame(0x2, compressed, rsv1=True)],
                    1009,
                    extensions="permessage-deflate",
                )
                peak = tracemalloc.get_traced_memory()[1] - baseline
            finally:
                tracemalloc.stop()

            await manager.send_to_group("room", "still here")
            with anyio.fail_after(5):
                assert await bystander.recv() == "still here"
            # Its session ends before the server goes (a cancelled handler would wait out
            # close_timeout for a closing handshake the cancelled connection cannot finish).
            await close_client(bystander)
            await wait_until(lambda: manager.count() == 0, "bystander gone")
    bound = 2 * MAX_SIZE + 10 * 2**20
    figure("bomb", f"{len(compressed) / 1024:.0f} KiB inflating to {inflated >> 20} MiB")
    figure(
        "memory held while refusing the bomb (peak)",
        peak / 2**20,
        "MiB",
        f"<= {bound / 2**20:g} MiB",
    )
    assert peak <= bound
