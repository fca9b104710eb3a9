"""A small chat server on ASGI: a Starlette app (FastAPI's WebSocket is the same) on hypercorn.

    python examples/asgi/chat.py --port 8765 [--backend asyncio|trio]

Clients connect to ws://127.0.0.1:<port>/ws?id=<name> and send JSON text:
{"op": "join", "group": g}, {"op": "leave", "group": g}, {"op": "say", "group": g,
"text": t} (to every socket of every member of g) and {"op": "tell", "to": name, "text": t}.
Anything else is answered with {"op": "error", "reason": ...}.

ASGI has no ping event, so wsfleet's heartbeat only tracks idleness here and keepalive is the
server's job: uvicorn pings by default; hypercorn does with websocket_ping_interval, left off
in this example because hypercorn keeps each connection's ping task (and so its shutdown)
waiting up to one interval after the socket closes. Ctrl-C (or SIGTERM) closes every socket
with 1001, then stops the server.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
from typing import Any

import anyio
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

import wsfleet.adapters.asgi  # noqa: F401  (lets the manager take Starlette's WebSocket)
from wsfleet import ConnectionManager, HeartbeatPolicy, InvalidArgument


async def handle(manager: ConnectionManager, me: str, request: Any) -> dict[str, str] | None:
    """Carry out one request; returns the reply for the sender, if any."""
    if not isinstance(request, dict):
        return {"op": "error", "reason": "expected a JSON object"}
    op, group, text, to = (request.get(key) for key in ("op", "group", "text", "to"))
    if op in ("join", "leave") and isinstance(group, str):
        if op == "join":
            manager.add_to_group(me, group)
            return {"op": "joined", "group": group}
        manager.remove_from_group(me, group)
        return {"op": "left", "group": group}
    if op == "say" and isinstance(group, str) and isinstance(text, str):
        said = {"op": "said", "group": group, "from": me, "text": text}
        await manager.send_to_group(group, json.dumps(said))
        return None
    if op == "tell" and isinstance(to, str) and isinstance(text, str):
        await manager.send_to_one(to, json.dumps({"op": "told", "from": me, "text": text}))
        return None
    return {"op": "error", "reason": f"unknown or incomplete request: {request!r}"}


def chat_app(manager: ConnectionManager) -> Starlette:
    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()  # the app accepts; wsfleet never does it behind its back
        me = websocket.query_params.get("id", "")
        try:
            async with manager.session(websocket, me) as session:
                async for message in session:
                    try:
                        reply = await handle(manager, me, json.loads(message))
                    except ValueError as exc:  # not JSON, or a bad group or identifier
                        reply = {"op": "error", "reason": str(exc)}
                    if reply is not None:
                        await session.send(json.dumps(reply))
        except InvalidArgument as exc:  # no or bad ?id=
            await websocket.close(1008, str(exc)[:120])

    return Starlette(routes=[WebSocketRoute("/ws", endpoint)])


async def until_signalled() -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


async def main(port: int, backend: str) -> None:
    if backend == "trio":
        from hypercorn.trio import serve
    else:
        from hypercorn.asyncio import serve
    listener = socket.create_server(("127.0.0.1", port))  # listening before we say so
    port = listener.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{listener.detach()}"]
    config.websocket_ping_interval = None  # see the docstring; set it in production
    config.graceful_timeout = 2.0
    heartbeat = HeartbeatPolicy(ping_interval=None, ping_timeout=None, idle_after=60.0)
    stopped = anyio.Event()
    async with anyio.create_task_group() as tg:
        async with ConnectionManager(heartbeat=heartbeat) as manager:
            tg.start_soon(lambda: serve(chat_app(manager), config, shutdown_trigger=stopped.wait))
            print(f"listening on ws://127.0.0.1:{port}/ws", flush=True)
            await until_signalled()
        stopped.set()  # every socket got 1001 when the manager closed; now stop the server


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    args = parser.parse_args()
    anyio.run(main, args.port, args.backend, backend=args.backend)
