"""The trio-websocket adapter, with a real trio-websocket server and real clients on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from trio_websocket import WebSocketConnection

from wsfleet import ConnectionManager, ConnectionState, HeartbeatPolicy, OverflowPolicy
from wsfleet._errors import TransportClosed
from wsfleet.adapters.trio_websocket import TrioWebsocketTransport

from .clients import client, raw_upgrade
from .harness_trio_websocket import serve

pytestmark = pytest.mark.anyio

C = ConnectionState.CONNECTED
I = ConnectionState.IDLE  # noqa: E741
E = ConnectionState.ERROR
D = ConnectionState.DISCONNECTED

CLOSE_TIMEOUT = 0.5  # a peer that never answers a close frame costs this much, not 2 s


@pytest.fixture
def anyio_backend() -> str:
    return "trio"  # trio-websocket runs on trio only


class App:
    """A server whose handler holds each socket in a wsfleet session and echoes to a group."""

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        self.changes: list[tuple[str, ConnectionState | None, ConnectionState, str | None]] = []
        self.ended: dict[str, int | None] = {}
        manager.on_state_change(self.record)

    def record(self, change: Any) -> None:
        who = change.connection.identifier
        self.changes.append((who, change.old, change.new, change.reason))

    async def handler(self, ws: WebSocketConnection, identifier: str) -> None:
        async with self.manager.session(ws, identifier) as session:
            self.manager.add_to_group(identifier, "room")
            async for message in session:
                await self.manager.send_to_group("room", f"{identifier}: {message}")
            self.ended[identifier] = session.close_code

    async def wait_for(self, who: str, state: ConnectionState, timeout: float = 5.0) -> str | None:
        with anyio.fail_after(timeout):
            while True:
                for name, _, new, reason in self.changes:
                    if name == who and new is state:
                        return reason
                await anyio.sleep(0.01)

    def state_of(self, who: str) -> ConnectionState | None:
        sockets = self.manager.sockets_of(who)
        return self.manager.get_connection_state(sockets[0]) if sockets else None


@pytest.fixture
async def app() -> AsyncIterator[App]:
    async with ConnectionManager(close_timeout=CLOSE_TIMEOUT) as manager:
        yield App(manager)


async def test_register_accepts_the_native_connection_and_close_reports_its_code() -> None:
    seen: list[object] = []

    async with ConnectionManager(close_timeout=CLOSE_TIMEOUT) as manager:

        async def handler(ws: WebSocketConnection, identifier: str) -> None:
            conn = manager.register(ws, identifier)
            transport = conn.transport
            assert isinstance(transport, TrioWebsocketTransport)
            await manager.send_to_one(identifier, "welcome")
            assert await ws.get_message() == "thanks"
            await manager.close(ws, 4000, "bye")
            assert manager.count() == 0
            await transport.close()  # twice, and on a closed socket: harmless
            with pytest.raises(TransportClosed) as closed:
                await transport.receive()
            seen.append((closed.value.code, closed.value.reason))
            with pytest.raises(TransportClosed):
                await transport.send(["too late"])

        async with serve(handler) as url, client(f"{url}?id=alice") as alice:
            assert await alice.recv() == "welcome"
            await alice.send("thanks")
            with anyio.fail_after(5):
                await alice.wait_closed()
            assert (alice.close_code, alice.close_reason) == (4000, "bye")
    assert seen == [(4000, "bye")]


async def test_fan_out_reaches_every_client_in_order(app: App) -> None:
    names = ["alice", "bob", "carol"]
    async with (
        serve(app.handler) as url,
        client(f"{url}?id=alice") as alice,
        client(f"{url}?id=bob") as bob,
        client(f"{url}?id=carol") as carol,
    ):
        for name in names:
            await app.wait_for(name, C)
        for i in range(100):
            await alice.send(f"m{i}")
        expected = [f"alice: m{i}" for i in range(100)]
        with anyio.fail_after(5):
            for ws in (alice, bob, carol):
                assert [await ws.recv() for _ in range(100)] == expected
        assert app.manager.get_group_members("room") == set(names)
        assert app.manager.stats().sent_messages == 300


async def test_a_message_moves_an_idle_connection_back_to_connected() -> None:
    policy = HeartbeatPolicy(ping_interval=None, ping_timeout=None, idle_after=0.2)
    async with ConnectionManager(heartbeat=policy, close_timeout=CLOSE_TIMEOUT) as manager:
        app = App(manager)
        async with serve(app.handler) as url, client(f"{url}?id=alice") as alice:
            await app.wait_for("alice", I)
            await alice.send("hello")
            with anyio.fail_after(5):
                assert await alice.recv() == "alice: hello"
            assert app.state_of("alice") is C
            assert ("alice", I, C, "activity") in app.changes


async def test_a_clean_close_ends_disconnected(app: App) -> None:
    async with serve(app.handler) as url:
        async with client(f"{url}?id=alice"):
            await app.wait_for("alice", C)
        reason = await app.wait_for("alice", D)
        assert reason is not None
        assert "1000" in reason
        assert E not in [new for _, _, new, _ in app.changes]
        with anyio.fail_after(5):
            while app.manager.count() or "alice" not in app.ended:
                await anyio.sleep(0.01)
        assert app.ended["alice"] == 1000


async def test_a_dropped_tcp_connection_is_an_abnormal_close(app: App) -> None:
    async with serve(app.handler) as url:
        async with await raw_upgrade(f"{url}?id=alice"):
            await app.wait_for("alice", C)
        # the stream is closed: no closing frame
        assert await app.wait_for("alice", E) == "abnormal close (1006)"
        await app.wait_for("alice", D)  # no retry policy: it gives up


async def test_an_oversize_inbound_message_is_closed_with_1009(app: App) -> None:
    async with serve(app.handler, max_message_size=1024) as url:
        async with client(f"{url}?id=alice") as alice:
            await app.wait_for("alice", C)
            await alice.send("x" * 4096)
            with anyio.fail_after(5):
                await alice.wait_closed()
            assert alice.close_code == 1009
        assert await app.wait_for("alice", E) == "abnormal close (1009)"


async def test_pongs_keep_a_quiet_client_alive_and_a_silent_peer_times_out() -> None:
    policy = HeartbeatPolicy(ping_interval=0.1, ping_timeout=0.2, idle_after=None)
    async with ConnectionManager(heartbeat=policy, close_timeout=CLOSE_TIMEOUT) as manager:
        app = App(manager)
        # "alive" sends nothing: only its pongs (answered by the client library) prove it alive.
        async with serve(app.handler) as url, client(f"{url}?id=alive"):
            await app.wait_for("alive", C)
            async with await raw_upgrade(f"{url}?id=silent"):
                started = anyio.current_time()
                assert await app.wait_for("silent", E) == "heartbeat timeout"
                assert anyio.current_time() - started >= 0.1 + 0.2 - 0.05
                await anyio.sleep(0.5)  # more than two ping_timeouts for the quiet client
            stats = manager.stats()
            assert stats.pings_sent >= 4
            assert stats.heartbeat_timeouts == 1
            assert app.state_of("alive") is C
            assert not [c for c in app.changes if c[0] == "alive" and c[2] is not C]


async def test_a_client_that_stops_reading_is_evicted_and_the_others_get_everything() -> None:
    overflow = OverflowPolicy(max_messages=64, max_bytes=4 * 1024 * 1024, action="disconnect")
    async with ConnectionManager(overflow=overflow, close_timeout=CLOSE_TIMEOUT) as manager:
        app = App(manager)
        async with (
            serve(app.handler) as url,
            client(f"{url}?id=fast", max_size=None) as fast,
            await raw_upgrade(f"{url}?id=stuck"),  # reads nothing after the handshake
        ):
            await app.wait_for("fast", C)
            await app.wait_for("stuck", C)
            fast_conn = manager.connection(manager.sockets_of("fast")[0])
            payload = "y" * 16384
            count = 1000  # 16 MB: far more than the loopback buffers of the stuck peer hold
            received: list[str] = []

            async def read_all() -> None:
                while len(received) < count:
                    received.append(await fast.recv())

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(read_all)
                    for _ in range(count):
                        await manager.broadcast(payload)
                        while fast_conn.queued > 32:  # pace the producer on the healthy peer
                            await anyio.sleep(0.001)
            assert len(received) == count
            assert await app.wait_for("stuck", E) == "slow consumer"
            assert app.state_of("fast") is C
            assert manager.stats().drops["slow consumer"] >= 1
            with anyio.fail_after(5):
                while "stuck" not in app.ended:
                    await anyio.sleep(0.01)
            assert app.ended["stuck"] == 1008  # the close wsfleet sent, not trio-websocket's 1000


def test_importing_the_adapter_without_trio_websocket_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['trio_websocket'] = None\n"
        "try:\n    import wsfleet.adapters.trio_websocket\n"
        "except ImportError as e:\n    print(e)\n"
        "else:\n    print('imported')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert "pip install 'wsfleet[trio]'" in out


def test_the_private_hooks_the_adapter_relies_on_exist() -> None:
    # Non-blocking pings use what WebSocketConnection.ping() uses: see the adapter's docstring.
    import inspect

    source = inspect.getsource(WebSocketConnection.ping)
    assert "self._pings[payload] = event" in source
    assert "await self._send(Ping(payload=payload))" in source
    assert "ping_event.set()" in inspect.getsource(WebSocketConnection._handle_pong_event)
