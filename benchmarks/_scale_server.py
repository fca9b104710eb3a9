"""One node of the scale benchmark's fleet, in a process of its own, driven by scale_bench.py.

    python benchmarks/_scale_server.py <port> <redis url> <namespace> <group every>
        [--standby] [--redis-timeout <seconds>]

A websockets (asyncio) server on ``127.0.0.1:<port>`` (a fixed port: the driver restarts
the node on the same one, and the clients come back to it) whose manager is
``ConnectionManager(heartbeat=HeartbeatPolicy(), backplane=RedisBackplane(url))``: the
default heartbeat (a ping every 20 s) and one node of a fleet joined through Redis. Each
socket is held as an application holds it (``async with manager.session(ws, id)``); a client
whose identifier's number is a multiple of ``group every`` joins the group ``room`` on
arrival (``--`` for none). ``--redis-timeout``: the backplane's ``connect_timeout`` and
``command_timeout`` (1 s each by default). ``--standby``: a replacement made ready ahead of
a restart; it loads, prints ``loaded`` and waits for a ``listen`` line before it starts its
manager and binds the port (which the process it replaces still holds). Prints ``port
<port>`` once it accepts connections at ``/ws?id=<name>``, then answers one line per command
read from stdin:

    wait <n> <timeout>       -> ready <connections>   (at least n held, or the timeout)
    members <n> <timeout>    -> members <count>       (``room`` has n members fleet-wide here)
    sample                   -> sample <json>         (the manager's stats(), this node's view)
    broadcast <serial>       -> sent <local> <published>   (a stamped message to the fleet)
    group <serial>           -> sent <local> <published>   (a stamped message to ``room``)
    quit                     (exits at once: the clients see their server go, as in a crash)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import suppress
from typing import Any

import anyio
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

import wsfleet.adapters.websockets  # noqa: F401  (registers the adapter)
from _fanout_server import AsyncExit, identifier_of
from _harness.process import commands, count_reaches, raise_nofile, say
from wsfleet import ConnectionManager, HeartbeatPolicy
from wsfleet.adapters.redis import RedisBackplane

GROUP = "room"


def member(identifier: str, every: int | None) -> bool:
    """``c3-120`` joins the group when 120 is a multiple of ``every``."""
    if every is None:
        return False
    number = identifier.rpartition("-")[2]
    return number.isdigit() and int(number) % every == 0


def stamped(serial: int) -> str:
    """A message that carries the moment it is handed over (``time.monotonic_ns()``: one
    clock for every process on the machine), for the clients to read back on arrival."""
    return f"{serial} {time.monotonic_ns()}"


def sample(manager: ConnectionManager) -> dict[str, Any]:
    stats = manager.stats()
    return {
        "t": time.monotonic(),
        "connections": stats.connections,
        "states": {name: count for name, count in stats.states.items() if count},
        "pings_sent": stats.pings_sent,
        "heartbeat_timeouts": stats.heartbeat_timeouts,
        "sent_messages": stats.sent_messages,
        "drops": dict(stats.drops),
        "backplane_state": stats.backplane_state,
        "backplane": stats.as_dict().get("backplane"),
        "online_count": manager.online_count(),
        "room_members": len(manager.get_group_members(GROUP)),
    }


async def serve(
    port: int, url: str, namespace: str, every: int | None, redis_timeout: float | None
) -> None:
    if redis_timeout is None:
        backplane = RedisBackplane(url, namespace=namespace)
    else:
        backplane = RedisBackplane(
            url, namespace=namespace, connect_timeout=redis_timeout, command_timeout=redis_timeout
        )
    manager = ConnectionManager(heartbeat=HeartbeatPolicy(), backplane=backplane)

    async def handler(ws: ServerConnection) -> None:
        identifier = identifier_of(ws.request.path if ws.request else "")
        with suppress(ConnectionClosed):
            async with manager.session(ws, identifier) as session:
                if member(identifier, every):
                    manager.add_to_group(identifier, GROUP)
                async for _ in session:
                    pass

    async with (
        AsyncExit(manager),
        ws_serve(
            handler,
            "127.0.0.1",
            port,
            compression=None,
            ping_interval=None,  # every ping on the wire is wsfleet's heartbeat
            close_timeout=1,
            backlog=4096,
        ),
    ):
        say(f"port {port}")
        async for words in commands():
            command, args = words[0], words[1:]
            if command == "wait":
                count = manager.count
                say(f"ready {await count_reaches(count, int(args[0]), float(args[1]), 0.1)}")
            elif command == "members":

                def members() -> int:
                    return len(manager.get_group_members(GROUP))

                say(f"members {await count_reaches(members, int(args[0]), float(args[1]), 0.1)}")
            elif command == "sample":
                say("sample " + json.dumps(sample(manager)))
            elif command in ("broadcast", "group"):
                text = stamped(int(args[0]))
                if command == "broadcast":
                    delivery = await manager.broadcast(text)
                else:
                    delivery = await manager.send_to_group(GROUP, text)
                say(f"sent {int(delivery)} {getattr(delivery, 'published', None)}")
        sys.stdout.flush()
        os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("url")
    parser.add_argument("namespace")
    parser.add_argument("every", help="a member of the group every this many clients, or --")
    parser.add_argument("--standby", action="store_true", help="wait for 'listen' to start")
    parser.add_argument("--redis-timeout", type=float, default=None, help="seconds (1)")
    args = parser.parse_args()
    raise_nofile()
    if args.standby:
        say("loaded")
        if sys.stdin.readline().strip() != "listen":
            return
    every = None if args.every == "--" else int(args.every)
    anyio.run(
        serve, args.port, args.url, args.namespace, every, args.redis_timeout, backend="asyncio"
    )


if __name__ == "__main__":
    main()
