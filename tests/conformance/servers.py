"""Every way wsfleet is served, as a user serves it: one real server per (adapter, server, loop).

Each server runs with its library's defaults. The only settings changed are those wsfleet's
documentation tells users to change (websockets' own keepalive off, since wsfleet pings:
``docs/howto/websockets.md``) and what a test harness must do to run a server in-process
(listen on a free loopback port; keep the server's log handlers off pytest's captured
streams). The ASGI combos run one FastAPI app, as ``docs/howto/fastapi.md`` shows;
their keepalive is the server's, so checks of keepalive pass ``keepalive=(interval,
timeout)`` to shorten the server's own pings; ``None`` keeps the server's defaults.

hypercorn is served exactly as released: it reports 1006 for closes the client starts
(pgjones/hypercorn#127) and has no pong timeout. The checks state where that shows.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import anyio
from anyio.abc import TaskStatus
from fastapi import FastAPI, WebSocket

import wsfleet.adapters.asgi
import wsfleet.adapters.trio_websocket
import wsfleet.adapters.websockets  # noqa: F401  (each import registers its adapter)
from wsfleet import HeartbeatPolicy

T = TypeVar("T")
Handler = Callable[[Any, str], Awaitable[None]]
Keepalive = tuple[float, float | None] | None


@dataclass(frozen=True)
class Combo:
    """One way of serving: adapter, server, event loop, and what that server does by default."""

    adapter: str
    server: str
    backend: str
    #: The largest message the server accepts by default; one byte more is closed with 1009.
    max_message_size: int

    @property
    def id(self) -> str:
        if self.adapter == "asgi":
            return f"asgi-{self.server}-{self.backend}"
        return f"{self.adapter}-{self.backend}"

    @property
    def wsfleet_pings(self) -> bool:
        """Whether wsfleet's heartbeat pings (ASGI has no ping event: the server does it)."""
        return self.adapter != "asgi"

    @property
    def detects_silent_peers(self) -> bool:
        """Whether a peer that never answers a ping is ever noticed.

        hypercorn sends pings (``websocket_ping_interval``) but never times out a pong, so
        behind hypercorn only a TCP error ends a dead connection (``docs/howto/fastapi.md``).
        """
        return self.server != "hypercorn"

    def reported(self, code: int) -> int:
        """The close code the application is told for a close it did not ask for.

        hypercorn says 1006 for every such close, the client's clean ones and its own 1009
        or 1007 alike (pgjones/hypercorn#127); the others pass on the code on the wire.
        """
        return 1006 if self.server == "hypercorn" else code

    @property
    def answers_protocol_errors(self) -> bool:
        """Whether a peer that breaks the protocol gets a close frame with the code.

        trio-websocket and hypercorn parse with wsproto, which turns a frame it cannot
        parse into a close *from the peer* and then has nothing left to send: the TCP
        connection is simply closed, and the peer sees 1006. (Only the offender is hit.)
        """
        return self.server not in ("trio-websocket", "hypercorn")

    def policy(
        self,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        idle_after: float | None = 60.0,
    ) -> HeartbeatPolicy:
        """The manager's heartbeat for this combo; the defaults are ``HeartbeatPolicy()``'s.

        Over ASGI wsfleet cannot ping, so the ping settings go to the server (``keepalive``)
        and the manager gets ``ping_interval=None, ping_timeout=None``, as documented.
        """
        if self.wsfleet_pings:
            return HeartbeatPolicy(
                ping_interval=ping_interval, ping_timeout=ping_timeout, idle_after=idle_after
            )
        return HeartbeatPolicy(ping_interval=None, ping_timeout=None, idle_after=idle_after)


MIB = 1024 * 1024

COMBOS = (
    Combo("websockets", "websockets", "asyncio", max_message_size=MIB),
    Combo("websockets", "websockets", "trio", max_message_size=MIB),
    Combo("trio_websocket", "trio-websocket", "trio", max_message_size=MIB),
    Combo("asgi", "uvicorn", "asyncio", max_message_size=16 * MIB),
    Combo("asgi", "hypercorn", "asyncio", max_message_size=16 * MIB),
    Combo("asgi", "hypercorn", "trio", max_message_size=16 * MIB),
)


def run_as_users_do(backend: str, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` on a loop started the way applications start theirs: ``asyncio.run``
    (what ``python app.py`` and uvicorn do) or ``trio.run``.

    Not ``anyio.run``, nor anyio's pytest plugin: both set sniffio's context variable for the
    whole run, so code that asks which library is running from outside any task (a
    library's callback) gets an answer there that it never gets in an application. That is
    how a pong lost on websockets/asyncio (issue #11) hid from 1,084 passing tests.
    """
    if backend == "trio":
        import trio

        return trio.run(main)
    return asyncio.run(main())


def identifier_of(path: str) -> str:
    return parse_qs(urlsplit(path).query).get("id", ["anonymous"])[0]


def listening_socket() -> socket.socket:
    """A socket listening on a free loopback port, bound before the server runs."""
    return socket.create_server(("127.0.0.1", 0), backlog=128)


@asynccontextmanager
async def serve(
    combo: Combo, handler: Handler, *, keepalive: Keepalive = None
) -> AsyncIterator[str]:
    """Serve ``handler(socket, identifier)`` the way ``combo`` says; yields the URL.

    ``keepalive`` (ASGI only) sets the server's ping interval and pong timeout.
    """
    if keepalive is not None and combo.wsfleet_pings:
        raise ValueError(f"{combo.id}: wsfleet pings here; set the manager's HeartbeatPolicy")
    serving = {
        "websockets": _websockets,
        "trio-websocket": _trio_websocket,
        "uvicorn": _uvicorn,
        "hypercorn": _hypercorn,
    }[combo.server]
    async with serving(handler, keepalive) as url:
        yield url


@asynccontextmanager
async def _websockets(handler: Handler, keepalive: Keepalive) -> AsyncIterator[str]:
    async def on_connection(ws: Any) -> None:
        await handler(ws, identifier_of(ws.request.path))

    if _running_trio():
        import trio
        from websockets.trio.server import serve as trio_serve

        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(trio_serve, on_connection, 0, host="127.0.0.1", ping_interval=None)
            )
            port = server.listeners[0].socket.getsockname()[1]
            async with server:  # as websockets documents: leaving closes clients with 1001
                yield f"ws://127.0.0.1:{port}/ws"
    else:
        from websockets.asyncio.server import serve as asyncio_serve

        async with asyncio_serve(on_connection, "127.0.0.1", 0, ping_interval=None) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            yield f"ws://127.0.0.1:{port}/ws"


@asynccontextmanager
async def _trio_websocket(handler: Handler, keepalive: Keepalive) -> AsyncIterator[str]:
    import trio
    from trio_websocket import WebSocketRequest, serve_websocket

    async def on_request(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await handler(ws, identifier_of(request.path))

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(serve_websocket, on_request, "127.0.0.1", 0, ssl_context=None)
        )
        try:
            yield f"ws://127.0.0.1:{server.port}/ws"
        finally:
            nursery.cancel_scope.cancel()


def fastapi_app(handler: Handler) -> FastAPI:
    """The FastAPI app of ``docs/howto/fastapi.md``: accept, then hand over to wsfleet."""
    app = FastAPI()

    @app.websocket("/ws")
    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        await handler(websocket, websocket.query_params.get("id", "anonymous"))

    return app


@asynccontextmanager
async def _uvicorn(handler: Handler, keepalive: Keepalive) -> AsyncIterator[str]:
    import uvicorn

    options: dict[str, Any] = {}
    if keepalive is not None:
        options["ws_ping_interval"], options["ws_ping_timeout"] = keepalive
    # log_config=None: uvicorn would otherwise reconfigure the whole process's logging.
    config = uvicorn.Config(fastapi_app(handler), log_config=None, **options)
    server = uvicorn.Server(config)
    sock = listening_socket()
    port = sock.getsockname()[1]
    stopped = anyio.Event()

    async def run() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            stopped.set()

    with sock:  # uvicorn closes it when it shuts down, but not when it is cancelled
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            try:
                with anyio.fail_after(10):
                    while not server.started:
                        await anyio.sleep(0.01)
                yield f"ws://127.0.0.1:{port}/ws"
            finally:
                server.should_exit = True  # what Ctrl-C does
                await _stopped(stopped)


@asynccontextmanager
async def _hypercorn(handler: Handler, keepalive: Keepalive) -> AsyncIterator[str]:
    from hypercorn.config import Config

    sock = listening_socket()
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    # hypercorn's default error log is a handler on the stderr of the moment, which pytest
    # swaps per test; a plain logger keeps its records in pytest's log capture instead.
    config.errorlog = logging.getLogger("hypercorn.error")
    if keepalive is not None:
        config.websocket_ping_interval = keepalive[0]
    app = fastapi_app(handler)
    stop = anyio.Event()
    stopped = anyio.Event()

    async def run(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            if _running_trio():
                from hypercorn.trio import serve as trio_serve

                await trio_serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)
            else:
                from hypercorn.asyncio import serve as asyncio_serve

                # The socket already listens: connections wait in its backlog until it accepts.
                task_status.started()
                await asyncio_serve(app, config, shutdown_trigger=stop.wait)
        finally:
            stopped.set()

    async with anyio.create_task_group() as tg:
        await tg.start(run)
        try:
            yield f"ws://127.0.0.1:{port}/ws"
        finally:
            stop.set()
            await _stopped(stopped)


async def _stopped(stopped: anyio.Event) -> None:
    """Let the server shut down as it does when asked to, even when a check failed.

    Cancelled instead (which is what leaving a task group with an error does), hypercorn
    raises errors of its own on asyncio that would bury the check's.
    """
    with anyio.move_on_after(15, shield=True):
        await stopped.wait()


def _running_trio() -> bool:
    import sniffio

    return sniffio.current_async_library() == "trio"
