"""Real servers for the authentication tests: every adapter, authenticating at the handshake
(``mode="handshake"``: the adapter's helper, before any WebSocket exists; for ASGI,
``"handshake-no-denial"`` hides the server's ``websocket.http.response`` extension) or after it
(``mode="session"``: the server accepts every socket and ``manager.session(ws)`` asks).

Each server hands its sockets to ``App.handle``, which opens ``manager.session(ws,
resume=...)`` without an identifier (the hook's answer is the identity) and greets the
client with ``"hello <identifier> resumed=<bool> token=<resume token>"``, then echoes.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import sniffio
from anyio.abc import TaskStatus
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

import wsfleet.adapters.asgi
import wsfleet.adapters.trio_websocket
import wsfleet.adapters.websockets  # noqa: F401  (each import registers its adapter)
from wsfleet import ConnectionManager, Session
from wsfleet.adapters import asgi_auth
from wsfleet.handshake import handshake_of


@dataclass(frozen=True)
class Combo:
    adapter: str
    server: str
    backend: str

    @property
    def id(self) -> str:
        return f"{self.server}-{self.backend}"


COMBOS = (
    Combo("websockets", "websockets", "asyncio"),
    Combo("websockets", "websockets", "trio"),
    Combo("trio_websocket", "trio-websocket", "trio"),
    Combo("asgi", "uvicorn", "asyncio"),
    Combo("asgi", "hypercorn", "asyncio"),
    Combo("asgi", "hypercorn", "trio"),
)


class App:
    """The application behind every server: one manager, sessions named by the hook."""

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        self.sessions: list[Session] = []
        #: Exceptions that reached the handler (a hook's bug), recorded, then re-raised
        #: where the server handles them (ASGI) or swallowed where one would end the
        #: server (trio-websocket's handlers run in the server's nursery).
        self.errors: list[BaseException] = []
        self.handled = 0

    async def handle(self, ws: Any) -> None:
        self.handled += 1
        query = handshake_of(ws).query
        resume = query.get("resume")
        # ``as``: an identifier the application takes from the URL, as examples written
        # before authentication do; the hook's answer must agree with it.
        async with self.manager.session(ws, query.get("as"), resume=resume) as session:
            self.sessions.append(session)
            if session.refused is not None:
                return
            await session.send(
                f"hello {session.identifier} resumed={session.resumed} token={session.resume_token}"
            )
            async for message in session:
                await session.send(f"echo {message}")


Serve = Callable[[App, str], Awaitable[None]]


@asynccontextmanager
async def serve(combo: Combo, app: App, mode: str) -> AsyncIterator[str]:
    """Serve ``app`` as ``combo`` says; yields the base URL (``ws://127.0.0.1:port``)."""
    serving = {
        "websockets": _websockets,
        "trio-websocket": _trio_websocket,
        "uvicorn": _uvicorn,
        "hypercorn": _hypercorn,
    }[combo.server]
    async with serving(app, mode) as url:
        yield url


@asynccontextmanager
async def _websockets(app: App, mode: str) -> AsyncIterator[str]:
    from wsfleet.adapters.websockets import authenticate

    options: dict[str, Any] = {"ping_interval": None}
    if mode == "handshake":
        options["process_request"] = authenticate(app.manager)
    if sniffio.current_async_library() == "trio":
        import trio
        from websockets.trio.server import serve as trio_serve

        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(trio_serve, app.handle, 0, host="127.0.0.1", **options)
            )
            port = server.listeners[0].socket.getsockname()[1]
            try:
                yield f"ws://127.0.0.1:{port}"
            finally:
                nursery.cancel_scope.cancel()
    else:
        from websockets.asyncio.server import serve as asyncio_serve

        async with asyncio_serve(app.handle, "127.0.0.1", 0, **options) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            yield f"ws://127.0.0.1:{port}"


@asynccontextmanager
async def _trio_websocket(app: App, mode: str) -> AsyncIterator[str]:
    import trio
    from trio_websocket import WebSocketRequest, serve_websocket

    from wsfleet.adapters.trio_websocket import accept

    async def on_request(request: WebSocketRequest) -> None:
        try:
            if mode == "handshake":
                accepted = await accept(app.manager, request)
                if accepted is None:
                    return
                ws, _ = accepted
            else:
                ws = await request.accept()
            await app.handle(ws)
        except Exception as exc:  # an error here would end the whole server
            app.errors.append(exc)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(serve_websocket, on_request, "127.0.0.1", 0, None, disconnect_timeout=1)
        )
        try:
            yield f"ws://127.0.0.1:{server.port}"
        finally:
            nursery.cancel_scope.cancel()


def starlette_app(app: App, mode: str) -> Starlette:
    async def endpoint(websocket: WebSocket) -> None:
        if mode == "handshake-no-denial":
            # a server without ASGI's websocket.http.response (daphne, older uvicorn)
            websocket.scope["extensions"] = {}
        try:
            if mode.startswith("handshake"):
                if await asgi_auth.accept(app.manager, websocket) is None:
                    return
            else:
                await websocket.accept()
        except Exception as exc:
            app.errors.append(exc)
            raise  # the server's to answer (500, or 403 for a socket never accepted)
        await app.handle(websocket)

    return Starlette(routes=[WebSocketRoute("/{rest:path}", endpoint)])


def _listening() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0), backlog=128)


@asynccontextmanager
async def _uvicorn(app: App, mode: str) -> AsyncIterator[str]:
    import uvicorn

    config = uvicorn.Config(starlette_app(app, mode), log_config=None, ws_ping_interval=None)
    server = uvicorn.Server(config)
    sock = _listening()
    port = sock.getsockname()[1]
    stopped = anyio.Event()

    async def run() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            stopped.set()

    with sock:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            try:
                with anyio.fail_after(10):
                    while not server.started:
                        await anyio.sleep(0.01)
                yield f"ws://127.0.0.1:{port}"
            finally:
                server.should_exit = True
                with anyio.move_on_after(15, shield=True):
                    await stopped.wait()


@asynccontextmanager
async def _hypercorn(app: App, mode: str) -> AsyncIterator[str]:
    from hypercorn.config import Config

    sock = _listening()
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.errorlog = logging.getLogger("hypercorn.error")
    config.accesslog = None
    config.graceful_timeout = 1.0
    asgi = starlette_app(app, mode)
    stop = anyio.Event()
    stopped = anyio.Event()

    async def run(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            if sniffio.current_async_library() == "trio":
                from hypercorn.trio import serve as trio_serve

                await trio_serve(asgi, config, shutdown_trigger=stop.wait, task_status=task_status)
            else:
                from hypercorn.asyncio import serve as asyncio_serve

                task_status.started()
                await asyncio_serve(asgi, config, shutdown_trigger=stop.wait)
        finally:
            stopped.set()

    async with anyio.create_task_group() as tg:
        await tg.start(run)
        try:
            yield f"ws://127.0.0.1:{port}"
        finally:
            stop.set()
            with anyio.move_on_after(15, shield=True):
                await stopped.wait()
