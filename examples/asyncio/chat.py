"""A chat server on asyncio with the websockets library, its sockets held by wsfleet.

    python examples/asyncio/chat.py --port 8765

Connect to ws://127.0.0.1:8765/ws?id=<name> and send JSON: {"op": "join", "group": "g"},
{"op": "leave", "group": "g"}, {"op": "say", "group": "g", "text": "..."},
{"op": "tell", "to": "bob", "text": "..."}. Anything else is answered with
{"op": "error", "reason": "..."}; a missing or bad ?id= closes the socket with 1008. One line
is logged per connection and per disconnection. The same server exists for trio
(examples/trio/chat.py) and for ASGI (examples/asgi/chat.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve

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


async def main(port: int) -> None:
    heartbeat = HeartbeatPolicy(ping_interval=20, ping_timeout=20, idle_after=300)
    async with ConnectionManager(heartbeat=heartbeat) as manager:

        async def on_connection(ws: ServerConnection) -> None:
            assert ws.request is not None
            who = parse_qs(urlsplit(ws.request.path).query).get("id", [""])[0]
            async with manager.session(ws, who) as session:  # a bad id: 1008, nothing runs
                if session.refused:
                    return
                log.info("%s connected from %s", who, ws.remote_address)
                async for message in session:
                    reply = await handle(manager, who, message)
                    if reply is not None:
                        await session.send(json.dumps(reply))  # to this socket only
            log.info("%s disconnected: %s %s", who, session.close_code, session.close_reason)

        # wsfleet pings (HeartbeatPolicy), so websockets' own keepalive is off.
        async with serve(on_connection, "127.0.0.1", port, ping_interval=None) as server:
            bound = next(iter(server.sockets)).getsockname()[1]
            print(f"listening on ws://127.0.0.1:{bound}/ws", flush=True)
            await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parser.parse_args().port))
