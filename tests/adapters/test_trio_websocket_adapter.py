"""The trio-websocket adapter, with a real trio-websocket server and real clients on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from trio_websocket import WebSocketConnection

from wsfleet import ConnectionManager, ConnectionState
from wsfleet.adapters.trio_websocket import TrioWebsocketTransport
from wsfleet.errors import TransportClosed

from .app import App
from .clients import client
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


def test_the_private_hooks_the_adapter_relies_on_exist() -> None:
    # Non-blocking pings use what WebSocketConnection.ping() uses: see the adapter's docstring.
    import inspect

    source = inspect.getsource(WebSocketConnection.ping)
    assert "self._pings[payload] = event" in source
    assert "await self._send(Ping(payload=payload))" in source
    assert "ping_event.set()" in inspect.getsource(WebSocketConnection._handle_pong_event)
