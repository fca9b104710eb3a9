"""One contract, every adapter: the same tests against a real server of each library.

Each adapter runs on the event loops its library supports (trio-websocket on trio only; the
websockets and ASGI adapters on asyncio and trio); clients are real websockets clients or raw
TCP peers on 127.0.0.1. What only one adapter does is tested in its own file.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import AsyncIterator
from types import ModuleType

import anyio
import pytest

from support import C, D, E, I, wait_until
from wsfleet import ConnectionManager, HeartbeatPolicy, OverflowPolicy

from .app import App
from .clients import client, raw_upgrade

ADAPTERS = ("websockets", "trio_websocket", "asgi")
COMBOS = [
    (name, backend)
    for name in ADAPTERS
    for backend in importlib.import_module(f"adapters.harness_{name}").BACKENDS
]

pytestmark = pytest.mark.anyio


@pytest.fixture(params=COMBOS, ids=[f"{name}-{backend}" for name, backend in COMBOS])
def combo(request: pytest.FixtureRequest) -> tuple[str, str]:
    value: tuple[str, str] = request.param
    return value


@pytest.fixture
def anyio_backend(combo: tuple[str, str]) -> str:
    return combo[1]


@pytest.fixture
def harness(combo: tuple[str, str]) -> ModuleType:
    return importlib.import_module(f"adapters.harness_{combo[0]}")


@pytest.fixture
async def app() -> AsyncIterator[App]:
    async with ConnectionManager(close_timeout=1.0) as manager:
        yield App(manager)


async def test_fan_out_reaches_every_client_in_order(harness: ModuleType, app: App) -> None:
    async with (
        harness.serve(app.handler) as url,
        client(f"{url}?id=alice") as alice,
        client(f"{url}?id=bob") as bob,
    ):
        await app.wait_for("alice", C)
        await app.wait_for("bob", C)
        for i in range(50):
            await alice.send(f"m{i}")
        expected = [f"alice: m{i}" for i in range(50)]
        with anyio.fail_after(5):
            assert [await alice.recv() for _ in range(50)] == expected
            assert [await bob.recv() for _ in range(50)] == expected
        assert app.manager.get_group_members("room") == {"alice", "bob"}


async def test_a_clean_close_ends_disconnected_and_unregisters(
    harness: ModuleType, app: App
) -> None:
    async with harness.serve(app.handler) as url:
        async with client(f"{url}?id=alice"):
            await app.wait_for("alice", C)
        reason = await app.wait_for("alice", D)
        assert reason is not None
        assert "1000" in reason
        assert ("alice", C, E) not in [(who, old, new) for who, old, new, _ in app.changes]
        with anyio.fail_after(5):
            while app.manager.count():
                await anyio.sleep(0.01)
        assert app.manager.get_group_members("room") == set()


async def test_a_dropped_tcp_connection_is_an_abnormal_close(harness: ModuleType, app: App) -> None:
    async with harness.serve(app.handler) as url:
        stream = await raw_upgrade(f"{url}?id=alice")
        await app.wait_for("alice", C)
        await stream.aclose()  # no closing frame
        assert await app.wait_for("alice", E) == "abnormal close (1006)"
        await app.wait_for("alice", D)  # no retry policy: it gives up


@pytest.mark.parametrize("name", ["x" * 300, "y" * 257], ids=["300-chars", "257-chars"])
async def test_a_bad_identifier_from_a_client_closes_only_that_socket_with_1008(
    harness: ModuleType, app: App, name: str
) -> None:
    """The identifier comes from the client: a bad one is refused on its socket, and the
    server (whose task group an escaping error would end, on trio) goes on serving."""
    async with harness.serve(app.handler) as url, client(f"{url}?id=alice") as alice:
        await app.wait_for("alice", C)
        for _ in range(3):
            async with client(f"{url}?id={name}") as bad:
                with anyio.fail_after(5):
                    await bad.wait_closed()
                assert bad.close_code == 1008
                assert bad.close_reason.startswith("invalid identifier: identifier must")
        async with client(f"{url}?id=bob") as bob:  # still serving, new clients included
            await app.wait_for("bob", C)
            await bob.send("hi")
            with anyio.fail_after(5):
                assert await alice.recv() == "bob: hi"
                assert await bob.recv() == "bob: hi"
        assert app.manager.identifiers() <= {"alice", "bob"}
        assert app.manager.stats().connections <= 2


async def test_an_oversize_inbound_message_is_closed_with_1009(
    harness: ModuleType, app: App
) -> None:
    async with (
        harness.serve(app.handler, max_message_size=1024) as url,
        client(f"{url}?id=alice") as alice,
    ):
        await app.wait_for("alice", C)
        await alice.send("x" * 4096)
        with anyio.fail_after(5):
            await alice.wait_closed()
        assert alice.close_code == 1009
        assert await app.wait_for("alice", E) == "abnormal close (1009)"


async def test_a_message_moves_an_idle_connection_back_to_connected(harness: ModuleType) -> None:
    policy = HeartbeatPolicy(ping_interval=None, ping_timeout=None, idle_after=0.2)
    async with ConnectionManager(heartbeat=policy) as manager:
        app = App(manager)
        async with harness.serve(app.handler) as url, client(f"{url}?id=alice") as alice:
            await app.wait_for("alice", I)
            await alice.send("hello")
            with anyio.fail_after(5):
                assert await alice.recv() == "alice: hello"
            assert app.state_of("alice") is C
            assert ("alice", I, C, "activity") in app.changes


async def test_pongs_keep_a_client_alive_and_a_silent_peer_times_out(
    harness: ModuleType, combo: tuple[str, str]
) -> None:
    if combo[0] == "asgi":
        pytest.skip("ASGI has no ping event: the ASGI server's keepalive does this job")
    policy = HeartbeatPolicy(ping_interval=0.1, ping_timeout=0.2, idle_after=None)
    async with ConnectionManager(heartbeat=policy) as manager:
        app = App(manager)
        async with harness.serve(app.handler) as url, client(f"{url}?id=alive"):
            await app.wait_for("alive", C)
            silent = await raw_upgrade(f"{url}?id=silent")
            started = anyio.current_time()
            assert await app.wait_for("silent", E) == "heartbeat timeout"
            assert anyio.current_time() - started >= 0.1 + 0.2 - 0.05  # not before its time
            await wait_until(lambda: manager.stats().pings_sent >= 4, "more rounds for the alive")
            stats = manager.stats()
            assert stats.heartbeat_timeouts == 1
            assert app.state_of("alive") is C
            await silent.aclose()


async def test_a_client_that_stops_reading_is_evicted_and_the_others_get_everything(
    harness: ModuleType,
) -> None:
    overflow = OverflowPolicy(max_messages=64, max_bytes=4 * 1024 * 1024, action="disconnect")
    async with ConnectionManager(overflow=overflow, close_timeout=1.0) as manager:
        app = App(manager)
        async with (
            harness.serve(app.handler) as url,
            client(f"{url}?id=fast", max_size=None) as fast,
            await raw_upgrade(f"{url}?id=stuck"),  # reads nothing after the handshake
        ):
            await app.wait_for("fast", C)
            await app.wait_for("stuck", C)
            fast_conn = manager.connection(manager.sockets_of("fast")[0])
            payload = "y" * 16384
            count = 1000  # 16 MB: far more than the loopback buffers of the stuck peer hold
            received = 0

            async def read_all() -> None:
                nonlocal received
                while received < count:
                    await fast.recv()
                    received += 1

            with anyio.fail_after(15):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(read_all)
                    for _ in range(count):
                        await manager.broadcast(payload)
                        while fast_conn.queued > 32:  # pace the producer on the healthy peer
                            await anyio.sleep(0.001)
            assert received == count
            assert await app.wait_for("stuck", E) == "slow consumer"
            assert app.state_of("fast") is C
            assert manager.stats().drops["slow consumer"] >= 1
            # The evicted peer reads nothing, so no closing handshake can finish: its
            # connection is cut after close_timeout and its handler ends.
            await app.wait_ended("stuck", seconds=5)


@pytest.mark.parametrize(
    ("module", "library", "extra"),
    [
        ("websockets", "websockets", "websockets"),
        ("trio_websocket", "trio_websocket", "trio"),
        ("asgi", "starlette", "asgi"),
    ],
)
def test_importing_an_adapter_without_its_library_names_the_extra(
    module: str, library: str, extra: str
) -> None:
    code = (
        f"import sys; sys.modules[{library!r}] = None\n"
        f"try:\n    import wsfleet.adapters.{module}\n"
        "except ImportError as e:\n    print(e)\n"
        "else:\n    print('imported')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert f"pip install 'wsfleet[{extra}]'" in out
