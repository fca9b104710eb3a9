"""A small chat server on ASGI: a Starlette app (FastAPI's WebSocket is the same) on hypercorn.

    python examples/asgi/chat.py --port 8765 [--backend asyncio|trio]

Clients connect to ws://127.0.0.1:<port>/ws?id=<name> and send JSON text:
{"op": "join", "group": g}, {"op": "leave", "group": g}, {"op": "say", "group": g,
"text": t} (to every socket of every member of g) and {"op": "tell", "to": name, "text": t}.
Anything else is answered with {"op": "error", "reason": ...}; a missing or bad ?id= closes
the socket with 1008. One line is logged per connection and per disconnection.

ASGI has no ping event, so wsfleet's heartbeat only tracks idleness here and keepalive is the
server's job: uvicorn pings by default; hypercorn does with websocket_ping_interval, left off
in this example because hypercorn keeps each connection's ping task (and so its shutdown)
waiting up to one interval after the socket closes. Ctrl-C (or SIGTERM) closes every socket
with 1001, then stops the server.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket

import anyio
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from wsfleet import ConnectionManager, HeartbeatPolicy

log = logging.getLogger("chat")


#: The requests a client may send, and the string fields each one needs.
REQUESTS = {
    "join": ("group",),
    "leave": ("group",),
    "say": ("group", "text"),
    "tell": ("to", "text"),
}


def error(reason: str) -> dict[str, str]:
    return {"op": "error", "reason": reason}


async def handle(
    manager: ConnectionManager, me: str, message: str | bytes
) -> dict[str, str] | None:
    """Carry out one request; returns the reply for the sender, if it gets one.

    Whatever a client sends gets an answer it can read, never a Python exception's name.
    """
    try:
        request = json.loads(message)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested absurdly deep
        return error('not JSON: send a JSON object such as {"op": "join", "group": "g"}')
    op = request.get("op") if isinstance(request, dict) else None
    if not isinstance(op, str) or op not in REQUESTS:
        return error("expected a JSON object whose op is join, leave, say or tell")
    missing = [name for name in REQUESTS[op] if not isinstance(request.get(name), str)]
    if missing:
        return error(f"{op} needs {' and '.join(missing)} (a string)")
    try:
        if op == "join":
            manager.add_to_group(me, request["group"])
            return {"op": "joined", "group": request["group"]}
        if op == "leave":
            manager.remove_from_group(me, request["group"])
            return {"op": "left", "group": request["group"]}
        if op == "say":
            said = {"op": "said", "group": request["group"], "from": me, "text": request["text"]}
            await manager.send_to_group(request["group"], json.dumps(said))
            return None
        told = {"op": "told", "from": me, "text": request["text"]}
        await manager.send_to_one(request["to"], json.dumps(told))
        return None
    except (ValueError, KeyError) as exc:  # wsfleet refused it: a bad name, a message too large
        return error(str(exc))


def chat_app(manager: ConnectionManager) -> Starlette:
    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()  # the app accepts; wsfleet never does it behind its back
        who = websocket.query_params.get("id", "")
        async with manager.session(websocket, who) as session:  # a bad id: 1008, nothing runs
            if session.refused:
                return
            log.info("%s connected from %s", who, websocket.client)
            async for message in session:
                reply = await handle(manager, who, message)
                if reply is not None:
                    await session.send(json.dumps(reply))  # to this socket only
        log.info("%s disconnected: %s %s", who, session.close_code, session.close_reason)

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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    anyio.run(main, args.port, args.backend, backend=args.backend)
