"""A library's own socket registers without importing an adapter first.

Each case runs in a fresh interpreter, so no adapter is imported beforehand by another test:
a real server of the library hands its socket to ``manager.register`` (or ``session``), and
the manager finds the adapter from the socket's class and imports it on first use.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import wsfleet
from wsfleet import ConnectionManager, WrongType

pytestmark = pytest.mark.anyio

_CHECK = """
def check(manager, ws, module):
    assert module not in sys.modules, module + " imported before first use"
    conn = manager.register(ws, "alice")
    assert module in sys.modules
    assert manager.count() == 1 and conn.identifier == "alice"
    manager.unregister(ws)
    print("registered through", module, flush=True)
"""

WEBSOCKETS = """
import sys, anyio, sniffio
from functools import partial
from wsfleet import ConnectionManager
{check}
async def main():
    async with ConnectionManager() as manager:
        done = anyio.Event()
        async def handler(ws):
            check(manager, ws, "wsfleet.adapters.websockets")
            done.set()
        if sniffio.current_async_library() == "trio":
            import trio
            from websockets.trio.server import serve
            from websockets.trio.client import connect
            async with trio.open_nursery() as nursery:
                server = await nursery.start(partial(serve, handler, 0, host="127.0.0.1"))
                port = server.listeners[0].socket.getsockname()[1]
                async with connect(f"ws://127.0.0.1:{{port}}/"):
                    await done.wait()
                nursery.cancel_scope.cancel()
        else:
            from websockets.asyncio.server import serve
            from websockets.asyncio.client import connect
            async with serve(handler, "127.0.0.1", 0) as server:
                port = next(iter(server.sockets)).getsockname()[1]
                async with connect(f"ws://127.0.0.1:{{port}}/"):
                    await done.wait()
anyio.run(main, backend={backend!r})
"""

TRIO_WEBSOCKET = """
import sys, trio
from trio_websocket import serve_websocket, open_websocket_url
from wsfleet import ConnectionManager
{check}
async def main():
    async with ConnectionManager() as manager:
        done = trio.Event()
        async def handler(request):
            ws = await request.accept()
            check(manager, ws, "wsfleet.adapters.trio_websocket")
            done.set()
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
            async with open_websocket_url(f"ws://127.0.0.1:{{server.port}}/"):
                await done.wait()
            nursery.cancel_scope.cancel()
trio.run(main)
"""

STARLETTE = """
import asyncio, sys, socket
import uvicorn
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import connect
from wsfleet import ConnectionManager
{check}
async def main():
    async with ConnectionManager() as manager:
        done = asyncio.Event()
        app = FastAPI()
        @app.websocket("/ws")
        async def endpoint(ws: WebSocket):
            await ws.accept()
            check(manager, ws, "wsfleet.adapters.asgi")
            done.set()
            await ws.close()
        sock = socket.create_server(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        async with connect(f"ws://127.0.0.1:{{port}}/ws"):
            await asyncio.wait_for(done.wait(), 10)
        server.should_exit = True
        await task
asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("script", "module"),
    [
        pytest.param(WEBSOCKETS.format(check=_CHECK, backend="asyncio"), "websockets", id="ws"),
        pytest.param(WEBSOCKETS.format(check=_CHECK, backend="trio"), "websockets", id="ws-trio"),
        pytest.param(TRIO_WEBSOCKET.format(check=_CHECK), "trio_websocket", id="trio-websocket"),
        pytest.param(STARLETTE.format(check=_CHECK), "asgi", id="fastapi"),
    ],
)
def test_a_native_socket_registers_without_importing_its_adapter_first(
    script: str, module: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"registered through wsfleet.adapters.{module}" in result.stdout


async def test_a_socket_no_adapter_takes_names_every_adapter_and_its_extra() -> None:
    class Socket:
        pass

    async with ConnectionManager() as manager:
        with pytest.raises(WrongType) as info:
            manager.register(Socket(), "alice")
        text = str(info.value)
        assert f"{__name__}.{Socket.__qualname__}" in text
        for extra in ("websockets", "trio", "asgi"):
            assert f"pip install 'wsfleet[{extra}]'" in text
        assert "wsfleet.Transport" in text
        assert "wsfleet.register_adapter" in text
        assert manager.count() == 0


def test_a_known_librarys_socket_whose_adapter_cannot_import_names_the_extra() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["wsfleet.adapters.trio_websocket"] = None  # as if the extra were missing
        import anyio
        from wsfleet import ConnectionManager

        class WebSocketConnection:  # stands for trio-websocket's class
            __module__ = "trio_websocket._impl"

        async def main():
            async with ConnectionManager() as manager:
                try:
                    manager.register(WebSocketConnection(), "alice")
                except ImportError as exc:
                    print(exc)
        anyio.run(main)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "wsfleet.adapters.trio_websocket cannot be imported" in out
    assert "pip install 'wsfleet[trio]'" in out


def test_the_known_adapters_are_the_shipped_modules() -> None:
    import importlib

    for module, _, _ in wsfleet.transport.KNOWN_ADAPTERS.values():
        importlib.import_module(module)
