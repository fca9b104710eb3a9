"""The trio-websocket adapter, with a real trio-websocket server and real clients on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from trio_websocket import WebSocketConnection

import wsfleet.adapters.trio_websocket as adapter
from wsfleet import ConnectionManager
from wsfleet.adapters.trio_websocket import TrioWebsocketTransport
from wsfleet.errors import TransportClosed

from .app import App
from .clients import client
from .harness_trio_websocket import serve

pytestmark = pytest.mark.anyio

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


def test_the_private_hooks_the_adapter_pings_with_exist() -> None:
    # Non-blocking pings use what WebSocketConnection.ping() uses: see the adapter's docstring.
    import inspect

    source = inspect.getsource(WebSocketConnection.ping)
    assert "self._pings[payload] = event" in source
    assert "await self._send(Ping(payload=payload))" in source
    assert "ping_event.set()" in inspect.getsource(WebSocketConnection._handle_pong_event)


def test_the_private_write_path_the_batches_take_is_the_one_checked() -> None:
    """What the batch path copies from ``WebSocketConnection._send``, and what it relies on:
    see the adapter's docstring. A new trio-websocket that changes any of it fails here."""
    import inspect

    assert adapter._library_refusal() is None  # the installed releases are tested ones
    send = inspect.getsource(WebSocketConnection._send)
    # serialized, then the lock taken without a yield in between; the stream written under it
    assert "data = self._wsproto.send(event)\n        async with self._stream_lock:" in send
    assert "await self._stream.send_all(data)" in send
    assert "except (trio.BrokenResourceError, trio.ClosedResourceError):" in send
    assert "await self._abort_web_socket()" in send
    # every write takes the lock through this attribute, looked up at each write
    cls = inspect.getsource(WebSocketConnection)
    assert cls.count("_stream_lock") == 2  # set in __init__, entered in _send
    assert "self._stream_lock = trio.StrictFIFOLock()" in cls
    assert "await self._close_web_socket(" in inspect.getsource(
        WebSocketConnection._abort_web_socket
    )
    # no extension is ever negotiated, so server frames are the same for every connection
    accept = inspect.getsource(WebSocketConnection._accept)
    assert "AcceptConnection(subprotocol=" in accept
    assert "extensions" not in accept


async def test_a_shared_frame_is_what_the_connection_s_own_wsproto_would_send() -> None:
    from wsproto.events import BytesMessage, TextMessage

    messages: list[str | bytes] = ["", "a" * 125, "é" * 63, "b" * 126, "c" * 65535, "d" * 65536]
    messages += [b"", b"\x00" * 200, b"\xff" * 70000]
    checked: list[bool] = []

    async def handler(ws: WebSocketConnection, identifier: str) -> None:
        transport = TrioWebsocketTransport(ws)
        assert transport.batched
        assert transport._shared
        assert adapter._extensions(ws._wsproto) == []
        for m in messages:
            event = TextMessage(data=m) if isinstance(m, str) else BytesMessage(data=m)
            checked.append(ws._wsproto.send(event) == adapter._shared_frame(m))

    async with serve(handler) as url, client(f"{url}?id=alice"):
        with anyio.fail_after(5):
            while len(checked) < len(messages):
                await anyio.sleep(0.01)
    assert checked == [True] * len(messages)


async def test_an_untested_release_or_an_unexpected_attribute_takes_the_public_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(adapter.TESTED, "trio-websocket", ("0.1",))
    assert "is not a tested release" in (adapter._library_refusal() or "")
    monkeypatch.undo()
    monkeypatch.setattr(WebSocketConnection, "_abort_web_socket", lambda self: None)
    assert "_abort_web_socket is not a coroutine" in (adapter._library_refusal() or "")
    monkeypatch.undo()
    refusals: list[str | None] = []

    async def handler(ws: WebSocketConnection, identifier: str) -> None:
        refusals.append(adapter._refusal_for(ws))
        lock = ws._stream_lock
        ws._stream_lock = object()  # type: ignore[assignment]
        refusals.append(adapter._refusal_for(ws))
        transport = TrioWebsocketTransport(ws)
        ws._stream_lock = lock
        refusals.append(None if transport.batched else "public")

    async with serve(handler) as url, client(f"{url}?id=alice"):
        with anyio.fail_after(5):
            while len(refusals) < 3:
                await anyio.sleep(0.01)
    assert refusals[0] is None
    assert "_stream_lock" in (refusals[1] or "")
    assert refusals[2] == "public"
