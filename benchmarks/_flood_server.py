"""One server for flood_bench.py, in a process of its own.

    python benchmarks/_flood_server.py <variant> <policy>

``variant``: ``asyncio`` (websockets on asyncio) or ``trio`` (websockets' trio
implementation). ``policy``: ``none`` (``ConnectionManager()``, no rate limit), ``drop`` or
``close`` (``ConnectionManager(rate_limit=RateLimitPolicy(messages_per_second=RATE,
action=...))``).

Every socket is held as an application holds it: ``async with manager.session(...)`` around
``async for message in session``. A message starting with ``p`` is a probe: it is echoed to
its sender alone (the quiet clients time the round trip). Anything else is an application
event (a client telling the room it is typing, say): parsed and counted, no reply.

Prints ``port <port>`` once it accepts connections at ``/ws?id=<name>`` on 127.0.0.1, then
answers one line per command on stdin: ``stats`` -> ``stats <json>``; ``quit`` exits.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.to_thread

from wsfleet import ConnectionManager, RateLimitPolicy

#: The limit under test: far above what a person types, far below what a loop can send.
RATE = 50.0
#: websockets' closing handshake (10 s by default) reads on until the peer's close frame; a
#: flooder cut off under "close" sends its flood first, so the server sets a short one.
CLOSE_TIMEOUT = 1.0


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Counts:
    events = 0
    probes = 0


def identifier_of(target: str) -> str:
    return parse_qs(urlsplit(target).query).get("id", ["anonymous"])[0]


async def hold(manager: ConnectionManager, ws: Any, identifier: str) -> None:
    async with manager.session(ws, identifier) as session:
        async for message in session:
            if isinstance(message, str) and message.startswith("p"):
                Counts.probes += 1
                await session.send(message)
            else:
                with suppress(ValueError):
                    json.loads(message)
                Counts.events += 1


@asynccontextmanager
async def websockets_asyncio(manager: ConnectionManager) -> AsyncIterator[int]:
    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosed

    async def handler(ws: Any) -> None:
        with suppress(ConnectionClosed):
            await hold(manager, ws, identifier_of(ws.request.path))

    async with serve(
        handler,
        "127.0.0.1",
        0,
        compression=None,
        ping_interval=None,
        close_timeout=CLOSE_TIMEOUT,
        backlog=1024,
    ) as server:
        yield next(iter(server.sockets)).getsockname()[1]


@asynccontextmanager
async def websockets_trio(manager: ConnectionManager) -> AsyncIterator[int]:
    from websockets.exceptions import ConnectionClosed
    from websockets.trio.server import serve

    async def handler(ws: Any) -> None:
        with suppress(ConnectionClosed):
            await hold(manager, ws, identifier_of(ws.request.path))

    async with anyio.create_task_group() as tg:
        server = await tg.start(
            partial(
                serve,
                handler,
                0,
                host="127.0.0.1",
                compression=None,
                ping_interval=None,
                close_timeout=CLOSE_TIMEOUT,
            )
        )
        yield server.listeners[0].socket.getsockname()[1]
        tg.cancel_scope.cancel()


VARIANTS: dict[str, tuple[str, Callable[[ConnectionManager], AbstractAsyncContextManager[int]]]] = {
    "asyncio": ("asyncio", websockets_asyncio),
    "trio": ("trio", websockets_trio),
}


def manager_for(policy: str) -> ConnectionManager:
    if policy == "none":
        return ConnectionManager()
    return ConnectionManager(rate_limit=RateLimitPolicy(messages_per_second=RATE, action=policy))


async def main(variant: str, policy: str) -> None:
    import wsfleet.adapters.websockets  # noqa: F401  (registers the adapter)

    _, serving = VARIANTS[variant]
    async with manager_for(policy) as manager, serving(manager) as port:
        say(f"port {port}")
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            command = line.strip()
            if command == "stats":
                stats = manager.stats()
                say(
                    "stats "
                    + json.dumps(
                        {
                            "cpu": time.process_time(),
                            "connections": stats.connections,
                            "received": stats.received_messages,
                            "inbound_drops": dict(stats.inbound_drops),
                            "events": Counts.events,
                            "probes": Counts.probes,
                        }
                    )
                )
            else:  # "quit", or stdin closed
                return


if __name__ == "__main__":
    variant, policy = sys.argv[1], sys.argv[2]
    anyio.run(main, variant, policy, backend=VARIANTS[variant][0])
