"""Outbound connections: ``manager.connect(url, ...)`` dials, keeps the socket up, redials.

Real servers on 127.0.0.1: one that echoes, a port where nothing listens, one that accepts
then drops at once, one that never answers the handshake, one that answers it with HTTP 403
and one that closes with a "do not come back" code. Every client backend runs on every loop
it supports: websockets on asyncio and trio, trio-websocket on trio.

Timing is real (trio's mock clock cannot drive real sockets): delays are tens of
milliseconds, and each is checked against the seeded policy within a generous bound.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
import sniffio

from support import LATE, MICROSECOND, C, D, E, R, free_port, pairs, wait_for
from wsfleet import (
    Connection,
    ConnectionManager,
    InvalidArgument,
    RetryPolicy,
    StateChange,
)

pytestmark = pytest.mark.anyio


#: Client options per backend: a dial that gets no handshake answer gives up after 0.2 s.
OPEN_TIMEOUT: dict[str, dict[str, Any]] = {
    "websockets": {"open_timeout": 0.2},
    "trio-websocket": {"connect_timeout": 0.2},
}


@pytest.fixture(
    params=[("asyncio", "websockets"), ("trio", "websockets"), ("trio", "trio-websocket")],
    ids=["asyncio-websockets", "trio-websockets", "trio-trio_websocket"],
)
def flavour(request: pytest.FixtureRequest) -> tuple[str, str]:
    combo: tuple[str, str] = request.param
    return combo


@pytest.fixture
def anyio_backend(flavour: tuple[str, str]) -> str:
    return flavour[0]  # trio-websocket runs on trio only, so it has no asyncio flavour


@pytest.fixture
def backend(flavour: tuple[str, str]) -> str:
    return flavour[1]


def policy(**kwargs: Any) -> RetryPolicy:
    """Deterministic (no jitter, seeded) and quick: 0.05 s, 0.1 s, 0.2 s ..."""
    settings: dict[str, Any] = {
        "max_attempts": 3,
        "base_delay": 0.05,
        "max_delay": 1.0,
        "jitter": 0.0,
        "seed": 1,
    }
    settings.update(kwargs)
    return RetryPolicy(**settings)


def waits_before_retries(changes: list[StateChange]) -> list[float]:
    """Seconds between each ERROR and the RECONNECTING that follows it."""
    waits = []
    for before, after in itertools.pairwise(changes):
        if before.new is E and after.new is R:
            waits.append((after.at - before.at).total_seconds() + MICROSECOND)
    return waits


def assert_waits_follow(waits: list[float], expected: list[float]) -> None:
    assert len(waits) == len(expected), (waits, expected)
    for waited, delay in zip(waits, expected, strict=True):
        assert delay <= waited <= delay + LATE, (waits, expected)


# -- servers ---------------------------------------------------------------------------------


async def close_ws(ws: Any, code: int, reason: str = "") -> None:
    if sniffio.current_async_library() == "trio":
        await ws.aclose(code, reason)
    else:
        await ws.close(code, reason)


@asynccontextmanager
async def ws_server(
    handler: Callable[[Any], Awaitable[None]],
    *,
    port: int = 0,
    process_request: Callable[[Any, Any], Any] | None = None,
) -> AsyncIterator[str]:
    """A websockets server on 127.0.0.1 on the running loop; yields its URL."""
    options: dict[str, Any] = {"ping_interval": None, "compression": None}
    if process_request is not None:
        options["process_request"] = process_request
    if sniffio.current_async_library() == "trio":
        import trio
        from websockets.trio.server import serve as trio_serve

        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(trio_serve, handler, port, host="127.0.0.1", **options)
            )
            bound = server.listeners[0].socket.getsockname()[1]
            try:
                yield f"ws://127.0.0.1:{bound}/ws"
            finally:
                with anyio.move_on_after(2, shield=True):
                    await server.aclose()
                nursery.cancel_scope.cancel()
    else:
        from websockets.asyncio.server import serve as asyncio_serve

        async with asyncio_serve(handler, "127.0.0.1", port, **options) as server:
            bound = next(iter(server.sockets)).getsockname()[1]
            yield f"ws://127.0.0.1:{bound}/ws"


class Recorder:
    """An echo server's memory: every message it got, and how many sockets it accepted."""

    def __init__(self) -> None:
        self.received: list[str | bytes] = []
        self.accepted = 0

    async def echo(self, ws: Any) -> None:
        self.accepted += 1
        async for message in ws:
            self.received.append(message)
            await ws.send(f"echo: {message}")


@asynccontextmanager
async def stalling_server() -> AsyncIterator[tuple[str, list[int]]]:
    """Accepts TCP connections and never answers the handshake; counts the accepts."""
    accepted: list[int] = []

    async def hold(stream: anyio.abc.SocketStream) -> None:
        accepted.append(1)
        async with stream:
            await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, hold)
        try:
            yield f"ws://127.0.0.1:{port}/ws", accepted
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def fleet() -> AsyncIterator[tuple[ConnectionManager, list[StateChange]]]:
    changes: list[StateChange] = []
    async with ConnectionManager(close_timeout=0.5) as manager:
        manager.on_state_change(changes.append)
        yield manager, changes


# -- dialling ------------------------------------------------------------------------------


async def test_the_first_dial_happens_in_reconnecting_and_success_means_connected(
    backend: str,
) -> None:
    recorder = Recorder()
    async with ws_server(recorder.echo) as url, fleet() as (manager, changes):
        conn = await manager.connect(url, "upstream", retry_policy=policy(), backend=backend)
        assert conn.state is R
        assert manager.get_connection_state(conn.socket) is R
        assert manager.sockets_of("upstream") == [conn.socket]
        await wait_for(lambda: conn.state is C)
        await wait_for(lambda: len(changes) == 2)
        assert pairs(changes) == [(None, R), (R, C)]
        assert changes[0].reason == "dialling"
        assert recorder.accepted == 1
    # Leaving the manager hangs up: no error, no retry.
    assert pairs(changes) == [(None, R), (R, C), (C, D)]
    assert changes[-1].reason == "manager closed"


async def test_on_message_receives_what_the_server_sends(backend: str) -> None:
    recorder = Recorder()
    got: list[tuple[Connection, str | bytes]] = []
    async_got: list[str | bytes] = []

    async def greet_then_echo(ws: Any) -> None:
        await ws.send("welcome")
        await ws.send(b"\x00binary")
        await recorder.echo(ws)

    async def on_message_async(conn: Connection, message: str | bytes) -> None:
        await anyio.lowlevel.checkpoint()
        async_got.append(message)

    async with ws_server(greet_then_echo) as url, fleet() as (manager, _):
        conn = await manager.connect(
            url,
            "upstream",
            retry_policy=policy(),
            backend=backend,
            on_message=lambda conn, message: got.append((conn, message)),
        )
        other = await manager.connect(
            url, "second", retry_policy=policy(), backend=backend, on_message=on_message_async
        )
        await wait_for(lambda: conn.state is C and other.state is C)
        await conn.send("ping 1")
        await manager.send_to_one("upstream", "ping 2")
        await wait_for(lambda: len(got) == 4)
        assert got == [
            (conn, "welcome"),
            (conn, b"\x00binary"),
            (conn, "echo: ping 1"),
            (conn, "echo: ping 2"),
        ]
        await wait_for(lambda: len(async_got) == 2)
        assert async_got == ["welcome", b"\x00binary"]


async def test_a_refused_dial_retries_by_the_policy_then_gives_up(backend: str) -> None:
    retry = policy()
    expected = list(policy().delays())  # an equal, equally seeded twin draws the same delays
    url = f"ws://127.0.0.1:{free_port()}/ws"
    async with fleet() as (manager, changes):
        conn = await manager.connect(url, "upstream", retry_policy=retry, backend=backend)
        assert conn.state is R
        await wait_for(lambda: conn.state is D)
        await wait_for(lambda: len(changes) == 3 + 2 * retry.max_attempts)
        assert len(manager) == 0  # gave up: DISCONNECTED, and forgotten
    assert pairs(changes) == [(None, R), (R, E), *[(E, R), (R, E)] * 3, (E, D)]
    assert all("attempt failed" in (c.reason or "") for c in changes if c.new is E)
    assert changes[-1].reason == "retries exhausted (3 of 3 attempts)"
    assert_waits_follow(waits_before_retries(changes), expected)


async def test_a_stalled_handshake_times_out_and_counts_as_a_failed_attempt(
    backend: str,
) -> None:
    retry = policy(max_attempts=2)
    async with stalling_server() as (url, accepted), fleet() as (manager, changes):
        conn = await manager.connect(
            url, "upstream", retry_policy=retry, backend=backend, **OPEN_TIMEOUT[backend]
        )
        await wait_for(lambda: conn.state is D)
        await wait_for(lambda: len(changes) == 3 + 2 * retry.max_attempts)
        assert len(accepted) == 1 + retry.max_attempts  # the first dial, then each retry
    assert pairs(changes) == [(None, R), (R, E), *[(E, R), (R, E)] * 2, (E, D)]
    dials = [(e.at - r.at).total_seconds() for r, e in itertools.pairwise(changes) if r.new is R]
    assert all(0.2 - 0.05 <= seconds <= 0.2 + LATE for seconds in dials), dials
    assert_waits_follow(waits_before_retries(changes), [0.05, 0.1])


async def test_http_403_to_the_handshake_ends_it_without_retrying(backend: str) -> None:
    handshakes: list[str] = []

    def forbid(connection: Any, request: Any) -> Any:
        handshakes.append(request.path)
        return connection.respond(403, "go away\n")

    async def never(ws: Any) -> None:  # pragma: no cover - the handshake never succeeds
        raise AssertionError("the handshake was refused")

    async with ws_server(never, process_request=forbid) as url, fleet() as (manager, changes):
        conn = await manager.connect(url, "upstream", retry_policy=policy(), backend=backend)
        await wait_for(lambda: conn.state is D)
        await anyio.sleep(0.3)  # longer than the first two delays: no retry comes
        assert handshakes == ["/ws"]
        await wait_for(lambda: len(changes) == 2)
    assert pairs(changes) == [(None, R), (R, D)]
    assert "403" in (changes[-1].reason or "")


@pytest.mark.parametrize("code", [1008, 4001])
async def test_a_do_not_come_back_close_ends_it_without_retrying(backend: str, code: int) -> None:
    accepted: list[int] = []

    async def refuse_after_accepting(ws: Any) -> None:
        accepted.append(1)
        await close_ws(ws, code, "not welcome")

    async with ws_server(refuse_after_accepting) as url, fleet() as (manager, changes):
        conn = await manager.connect(url, "upstream", retry_policy=policy(), backend=backend)
        await wait_for(lambda: conn.state is D)
        await anyio.sleep(0.3)
        assert accepted == [1]
        await wait_for(lambda: len(changes) == 3)
    assert pairs(changes) == [(None, R), (R, C), (C, D)]
    assert changes[-1].reason == f"closed by the server ({code}: not welcome)"


# -- while it is down ----------------------------------------------------------------------


async def test_messages_sent_while_down_arrive_in_order_once_it_is_back(backend: str) -> None:
    port = free_port()
    recorder = Recorder()
    retry = policy(max_attempts=100, backoff_multiplier=1.0)  # every 0.05 s, for long enough
    async with fleet() as (manager, changes):
        conn = await manager.connect(
            f"ws://127.0.0.1:{port}/ws", "upstream", retry_policy=retry, backend=backend
        )
        await wait_for(lambda: conn.attempts >= 1)  # nothing listens yet: dials fail
        for i in range(3):
            assert await conn.send(f"first {i}") == 1
            assert await manager.send_to_one("upstream", f"first {i}b") == 1
        assert recorder.received == []

        async with ws_server(recorder.echo, port=port):
            await wait_for(lambda: len(recorder.received) == 6)
            assert conn.state is C
            assert recorder.received == [f"first {i}{s}" for i in range(3) for s in ("", "b")]
        # The server went away (and closed with 1001): it is down again.
        await wait_for(lambda: conn.state is not C)
        for i in range(3):
            await manager.send_to_one("upstream", f"second {i}")
        async with ws_server(recorder.echo, port=port):
            await wait_for(lambda: len(recorder.received) == 9)
            await manager.send_to_one("upstream", "after")
            await wait_for(lambda: len(recorder.received) == 10)
        assert recorder.received[6:] == ["second 0", "second 1", "second 2", "after"]
        assert recorder.accepted == 2
        assert manager.stats().drops == {}
    assert pairs(changes)[:2] == [(None, R), (R, E)]
    assert (R, C) in pairs(changes)
    assert changes[0].connection is conn


# -- reset_after ---------------------------------------------------------------------------


def dropping_server(stay_up: dict[int, float]) -> tuple[Recorder, Callable[[Any], Any]]:
    """Accepts every socket and drops it at once, except those numbered in ``stay_up``."""
    recorder = Recorder()

    async def handler(ws: Any) -> None:
        number = recorder.accepted
        recorder.accepted += 1
        await anyio.sleep(stay_up.get(number, 0.0))
        # Returning closes the socket (1000): a server that accepts, then drops.

    return recorder, handler


async def test_a_server_that_accepts_then_drops_at_once_does_not_reset_the_backoff(
    backend: str,
) -> None:
    recorder, handler = dropping_server({})
    retry = policy(reset_after=5.0)
    async with ws_server(handler) as url, fleet() as (manager, changes):
        conn = await manager.connect(url, "upstream", retry_policy=retry, backend=backend)
        await wait_for(lambda: conn.state is D)
        await wait_for(lambda: changes[-1].new is D)
        assert recorder.accepted == 1 + retry.max_attempts
    cycle = [(E, R), (R, C), (C, E)]
    assert pairs(changes) == [(None, R), (R, C), (C, E), *cycle * 3, (E, D)]
    assert changes[-1].reason == "retries exhausted (3 of 3 attempts)"
    assert_waits_follow(waits_before_retries(changes), [0.05, 0.1, 0.2])  # kept growing


async def test_a_connection_up_longer_than_reset_after_starts_the_backoff_afresh(
    backend: str,
) -> None:
    recorder, handler = dropping_server({2: 0.4})  # the third socket stays up 0.4 s
    retry = policy(reset_after=0.2)
    async with ws_server(handler) as url, fleet() as (manager, changes):
        conn = await manager.connect(url, "upstream", retry_policy=retry, backend=backend)
        await wait_for(lambda: conn.state is D)
        await wait_for(lambda: changes[-1].new is D)
        assert recorder.accepted == 6  # 3 dials before the long one's end, then 3 attempts
    assert_waits_follow(waits_before_retries(changes), [0.05, 0.1, 0.05, 0.1, 0.2])


# -- letting go ----------------------------------------------------------------------------


async def test_unregistering_an_outbound_connection_closes_its_socket(backend: str) -> None:
    closed = anyio.Event()
    got: list[str | bytes] = []

    async def talk_until_closed(ws: Any) -> None:
        await ws.send("hello")
        with anyio.move_on_after(5):
            async for _ in ws:
                pass
        closed.set()

    async with ws_server(talk_until_closed) as url, fleet() as (manager, changes):
        conn = await manager.connect(
            url,
            "upstream",
            retry_policy=policy(),
            backend=backend,
            on_message=lambda conn, message: got.append(message),
        )
        await wait_for(lambda: got == ["hello"])
        assert manager.unregister(conn.socket)
        with anyio.fail_after(2):
            await closed.wait()  # the manager dialled it, so the manager hangs up
        await anyio.sleep(0.2)
        assert len(manager) == 0
        assert conn.state is D
        await wait_for(lambda: len(changes) == 3)
    assert pairs(changes) == [(None, R), (R, C), (C, D)]  # no error, no retry
    assert changes[-1].reason == "unregistered"


# -- refused at once -----------------------------------------------------------------------


async def test_a_bad_url_or_backend_raises_and_registers_nothing(backend: str) -> None:
    async with fleet() as (manager, changes):
        bad_urls = [
            "http://127.0.0.1:1/ws",
            "127.0.0.1:1",
            "",
            "ws://",
            "ws://127.0.0.1:port/ws",
            "ws://127.0.0.1:70000/ws",
            b"ws://127.0.0.1:1/ws",
        ]
        for url in bad_urls:
            with pytest.raises(InvalidArgument):
                await manager.connect(url, "upstream", backend=backend)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="backend"):
            await manager.connect("ws://127.0.0.1:1/ws", "upstream", backend="aiohttp")
        with pytest.raises(InvalidArgument):
            await manager.connect("ws://127.0.0.1:1/ws", "", backend=backend)
        assert len(manager) == 0
        assert manager.identifiers() == set()
        await anyio.sleep(0.05)
    assert changes == []


@pytest.mark.parametrize("flavour", [("asyncio", "websockets")], ids=["asyncio"], indirect=True)
async def test_trio_websocket_on_asyncio_is_refused_up_front() -> None:
    async with fleet() as (manager, changes):
        with pytest.raises(InvalidArgument, match="trio"):
            await manager.connect("ws://127.0.0.1:1/ws", "upstream", backend="trio-websocket")
        assert len(manager) == 0
    assert changes == []
