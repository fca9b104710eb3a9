"""Serving the demo: one websockets server, on asyncio or trio, for the pages and the sockets.

websockets has a server for each event loop with the same ``process_request`` hook, so the
demo needs no ASGI server for trio: ``websockets.asyncio.server.serve`` or
``websockets.trio.server.serve`` is chosen by the loop that runs ``open_demo``. wsfleet's
``HeartbeatPolicy`` does the pinging, so websockets' own keepalive is off.

Lifetime, outermost first: the manager (it owns every connection), the board's pusher and
the simulated clients (they use the manager), the listening server (its handlers use all of
the above). Leaving ``open_demo`` closes them in the reverse order: the server says 1001 to
every browser, then the tasks stop, then the manager closes what is left.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import sniffio

from .._manager import ConnectionManager
from .._runtime.history import HistoryStore
from ..adapters import websockets as _websockets_adapter  # noqa: F401  (registers the sockets)
from ..backplane import Backplane
from ..errors import InvalidArgument
from ..framing import json_frame
from ._board import Board
from ._chat import check_identity, serve_chat
from ._controls import Controls, serve_dashboard
from ._metrics import exposition
from ._origins import OriginCheck
from ._pages import Pages
from ._policies import HEARTBEAT, OVERFLOW, RETRY

__all__ = ["Demo", "open_demo", "run"]

Handler = Callable[[Any], Awaitable[None]]

#: The largest message a page may send (a chat line is at most 500 characters).
MAX_INBOUND = 64 * 1024


@dataclass(frozen=True, slots=True)
class Demo:
    """A running demo: where it listens and what it is made of."""

    manager: ConnectionManager
    board: Board
    controls: Controls
    origins: OriginCheck
    host: str
    port: int
    backend: str

    @property
    def url(self) -> str:
        """The chat page; the dashboard is at ``url + "dashboard"``, the metrics at
        ``url + "metrics"``."""
        return f"http://{self.host}:{self.port}/"

    @property
    def ws_url(self) -> str:
        """The base of the WebSocket endpoints: ``ws_url + "/ws?id=alice"``, ``+ "/admin"``."""
        return f"ws://{self.host}:{self.port}"


def _backplane(redis: str | None) -> Backplane | None:
    if redis is None:
        return None
    from ..adapters.redis import RedisBackplane  # ImportError without wsfleet[redis]

    return RedisBackplane(redis)


def _history(redis: str | None) -> HistoryStore | None:
    """The chat rooms' history: in Redis with a backplane (a page recovers on any node),
    in this process's memory without one."""
    if redis is None:
        return None
    from ..adapters.redis_history import RedisHistory  # ImportError without wsfleet[redis]

    return RedisHistory(redis)


def _router(manager: ConnectionManager, board: Board, controls: Controls) -> Handler:
    """The connection handler: ``/ws`` is a chat page, ``/admin`` a dashboard.

    ``process_request`` has already refused other paths and bad names.
    """

    async def handler(ws: Any) -> None:
        parts = urlsplit(ws.request.path)
        query = parse_qs(parts.query)
        if parts.path == "/admin":
            resume = query.get("resume", [None])[0] or None
            await serve_dashboard(manager, board, controls, ws, resume)
        else:
            who, resume = check_identity(query)
            await serve_chat(manager, ws, who, resume)

    return handler


@asynccontextmanager
async def _listen(
    handler: Handler, process_request: Callable[..., Any], host: str, port: int
) -> AsyncIterator[int]:
    """Serve on the running loop's websockets server; yield the port it is bound to."""
    options: dict[str, Any] = {
        "process_request": process_request,
        "ping_interval": None,
        "max_size": MAX_INBOUND,
    }
    if sniffio.current_async_library() == "trio":
        import trio
        from websockets.trio.server import serve as trio_serve

        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(trio_serve, handler, port, host=host, **options))
            try:
                yield int(server.listeners[0].socket.getsockname()[1])
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await server.aclose()
                nursery.cancel_scope.cancel()
    else:
        from websockets.asyncio.server import serve as asyncio_serve

        async with asyncio_serve(handler, host, port, **options) as server:
            yield int(next(iter(server.sockets)).getsockname()[1])


@asynccontextmanager
async def open_demo(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    redis: str | None = None,
    allow_origins: Iterable[str] = (),
) -> AsyncIterator[Demo]:
    """Run the demo for the duration of the block, on the running loop (asyncio or trio).

    ``port=0`` takes a free port (``demo.port`` says which). ``redis`` is a Redis URL for
    the backplane (needs ``wsfleet[redis]``); without it the fleet is this process alone.
    The WebSockets accept pages of the demo's own origin and of ``allow_origins``
    (``"https://chat.example"``; ``InvalidArgument`` for anything else, before anything
    starts), and clients that send no Origin: programs, since browsers always send one
    (see ``_origins``).
    """
    origins = OriginCheck(host, allow_origins)
    backend = sniffio.current_async_library()
    pages = Pages(origins)
    manager = ConnectionManager(
        heartbeat=HEARTBEAT,
        retry_policy=RETRY,
        overflow=OVERFLOW,
        backplane=_backplane(redis),
        history_store=_history(redis),
        frame=json_frame,
    )
    async with manager, anyio.create_task_group() as tg:
        board = Board(manager, backend)
        controls = Controls(manager, board, tg)
        manager.on_state_change(board.changed)
        tg.start_soon(board.run, name="demo board")
        with exposition(manager) as pages.metrics:  # /metrics, for Prometheus
            async with _listen(
                _router(manager, board, controls), pages.hook(), host, port
            ) as bound:
                yield Demo(manager, board, controls, origins, host, bound, backend)
        tg.cancel_scope.cancel()


async def _serve_until_stopped(
    host: str, port: int, redis: str | None, allow_origins: Sequence[str]
) -> None:
    async with open_demo(host, port, redis=redis, allow_origins=allow_origins) as demo:
        # One line a script can wait for; the URLs end with a space so they can be cut out.
        print(
            f"wsfleet demo ({demo.backend}): chat at {demo.url} dashboard at {demo.url}dashboard ",
            flush=True,
        )
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break


def run(
    host: str,
    port: int,
    backend: str = "asyncio",
    redis: str | None = None,
    allow_origins: Sequence[str] = (),
) -> int:
    """Serve until SIGINT or SIGTERM (what ``wsfleet demo`` calls); returns an exit status."""
    try:
        OriginCheck(host, allow_origins)  # a bad origin is reported before anything starts
    except InvalidArgument as exc:
        print(f"wsfleet demo: --allow-origin: {exc}", file=sys.stderr)
        return 2
    try:
        anyio.run(_serve_until_stopped, host, port, redis, allow_origins, backend=backend)
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        error = _os_error(exc)
        if error is None:
            raise
        print(f"wsfleet demo: cannot listen on {host}:{port}: {error}", file=sys.stderr)
        return 1
    return 0


def _os_error(exc: BaseException) -> OSError | None:
    """The ``OSError`` (port taken, address not ours) behind a failure, if that is what it is.

    It may come wrapped in the task groups' exception groups.
    """
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _os_error(inner)
            if found is not None:
                return found
    return None
