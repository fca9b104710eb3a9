"""A chat server on asyncio with the websockets library, its sockets held by wsfleet.

    python examples/asyncio/chat.py --port 8765

Connect to ws://127.0.0.1:8765/ws?id=<name> and send JSON: {"op": "join", "group": "g"},
{"op": "leave", "group": "g"}, {"op": "say", "group": "g", "text": "..."},
{"op": "tell", "to": "bob", "text": "..."}. The same server exists for trio
(examples/trio/chat.py) and for ASGI (examples/asgi/chat.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve

import wsfleet.adapters.websockets  # noqa: F401  (lets the manager take websockets' sockets)
from wsfleet import ConnectionManager, HeartbeatPolicy


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


async def main(port: int) -> None:
    heartbeat = HeartbeatPolicy(ping_interval=20, ping_timeout=20, idle_after=300)
    async with ConnectionManager(heartbeat=heartbeat) as manager:

        async def on_connection(ws: ServerConnection) -> None:
            assert ws.request is not None
            who = parse_qs(urlsplit(ws.request.path).query).get("id", ["anonymous"])[0]
            async with manager.session(ws, who) as session:
                async for message in session:
                    try:
                        reply = await handle(manager, who, json.loads(message))
                    except (ValueError, KeyError, TypeError) as exc:
                        reply = {"op": "error", "reason": f"{type(exc).__name__}: {exc}"}
                    if reply is not None:
                        await session.send(json.dumps(reply))  # to this socket only

        # wsfleet pings (HeartbeatPolicy), so websockets' own keepalive is off.
        async with serve(on_connection, "127.0.0.1", port, ping_interval=None) as server:
            bound = next(iter(server.sockets)).getsockname()[1]
            print(f"listening on ws://127.0.0.1:{bound}/ws", flush=True)
            await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parser.parse_args().port))
