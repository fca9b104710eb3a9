"""A chat server on trio with trio-websocket, its sockets held by wsfleet.

    python examples/trio/chat.py --port 8765

Connect to ws://127.0.0.1:8765/ws?id=<name> and send JSON: {"op": "join", "group": "g"},
{"op": "leave", "group": "g"}, {"op": "say", "group": "g", "text": "..."},
{"op": "tell", "to": "bob", "text": "..."}. Anything else is answered with
{"op": "error", "reason": "..."}; a missing or bad ?id= closes the socket with 1008. One line
is logged per connection and per disconnection. The same server exists for asyncio
(examples/asyncio/chat.py) and for ASGI (examples/asgi/chat.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
from functools import partial
from urllib.parse import parse_qs, urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from wsfleet import ConnectionManager, HeartbeatPolicy, ManagerClosed

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


async def serve_client(manager: ConnectionManager, request: WebSocketRequest) -> None:
    """One client for its whole life, and nothing escapes from it.

    On trio an exception in one handler ends ``serve_websocket``'s nursery, and with it the
    whole server: a client that resets its TCP connection during the handshake makes
    ``accept()`` raise, and so would a bug here. So this wrapper logs what the handler
    raised and lets only that client go.
    """
    try:
        await chat(manager, request)
    except ConnectionClosed:
        log.info("a client went away during its handshake")
    except Exception:
        log.exception("a client's handler failed; the server goes on")


async def chat(manager: ConnectionManager, request: WebSocketRequest) -> None:
    """A wsfleet session around trio-websocket's socket."""
    who = parse_qs(urlsplit(request.path).query).get("id", [""])[0]
    ws = await request.accept()
    with contextlib.suppress(ManagerClosed):  # a client arriving while the server shuts down
        async with manager.session(ws, who) as session:  # a bad id: 1008, nothing runs
            if session.refused:
                return
            log.info("%s connected", who)
            async for message in session:
                reply = await handle(manager, who, message)
                if reply is not None:
                    await session.send(json.dumps(reply))  # to this socket only
        log.info("%s disconnected: %s %s", who, session.close_code, session.close_reason)


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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    trio.run(main, parser.parse_args().port)
