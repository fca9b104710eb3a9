"""A chat server on trio with trio-websocket, its sockets held by wsfleet.

    python examples/trio/chat.py --port 8765

Connect to ws://127.0.0.1:8765/ws?id=<name> and send JSON: {"op": "join", "group": "g"},
{"op": "leave", "group": "g"}, {"op": "say", "group": "g", "text": "..."},
{"op": "tell", "to": "bob", "text": "..."}. The same server exists for asyncio
(examples/asyncio/chat.py) and for ASGI (examples/asgi/chat.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio
from trio_websocket import WebSocketRequest, serve_websocket

import wsfleet.adapters.trio_websocket  # noqa: F401  (lets the manager take trio-websocket's sockets)
from wsfleet import ConnectionManager, HeartbeatPolicy, ManagerClosed


async def handle(manager: ConnectionManager, who: str, request: Any) -> dict[str, str] | None:
    """Carry out one request; return the reply for the sender, if it gets one."""
    op = request.get("op") if isinstance(request, dict) else None
    if op == "join":
        manager.add_to_group(who, request["group"])
        return {"op": "joined", "group": request["group"]}
    if op == "leave":
        manager.remove_from_group(who, request["group"])
        return {"op": "left", "group": request["group"]}
    if op == "say":
        said = {"op": "said", "group": request["group"], "from": who, "text": request["text"]}
        await manager.send_to_group(request["group"], json.dumps(said))
        return None
    if op == "tell":
        told = {"op": "told", "from": who, "text": request["text"]}
        await manager.send_to_one(request["to"], json.dumps(told))
        return None
    raise ValueError(f"unknown op {op!r}")


async def serve_client(manager: ConnectionManager, request: WebSocketRequest) -> None:
    """One client for its whole life: a wsfleet session around trio-websocket's socket."""
    who = parse_qs(urlsplit(request.path).query).get("id", ["anonymous"])[0]
    ws = await request.accept()
    with contextlib.suppress(ManagerClosed):  # a client arriving while the server shuts down
        async with manager.session(ws, who) as session:
            async for message in session:
                try:
                    reply = await handle(manager, who, json.loads(message))
                except (ValueError, KeyError, TypeError) as exc:
                    reply = {"op": "error", "reason": f"{type(exc).__name__}: {exc}"}
                if reply is not None:
                    await session.send(json.dumps(reply))  # to this socket only


async def main(port: int) -> None:
    heartbeat = HeartbeatPolicy(ping_interval=20, ping_timeout=20, idle_after=300)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        # The server's nursery outlives the manager: on exit the manager closes every socket
        # with 1001 while trio-websocket's reader tasks still run to complete the handshakes.
        async with trio.open_nursery() as nursery:
            async with ConnectionManager(heartbeat=heartbeat) as manager:
                # trio-websocket has no keepalive of its own: wsfleet pings (HeartbeatPolicy).
                handler = partial(serve_client, manager)
                server = await nursery.start(serve_websocket, handler, "127.0.0.1", port, None)
                print(f"listening on ws://127.0.0.1:{server.port}/ws", flush=True)
                async for _ in signals:  # serve until interrupted
                    break
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    trio.run(main, parser.parse_args().port)
