"""One idle-fleet server in a process of its own, driven over stdin by idle_bench.py.

    python benchmarks/_idle_server.py <variant> <policy>

``variant`` is ``asyncio`` (websockets on asyncio), ``trio`` (websockets' trio
implementation) or ``trio-websocket``. ``policy`` is one of

* ``default``: ``ConnectionManager(heartbeat=HeartbeatPolicy())``;
* ``<ping_interval>,<ping_timeout>,<idle_after>``: the same with that policy (seconds);
* ``off``: ``ConnectionManager(heartbeat=None)``, the baseline;
* ``library:<ping_interval>,<ping_timeout>``: no wsfleet at all; websockets' own keepalive
  (``serve(..., ping_interval=..., ping_timeout=...)``) pings the plain handler's sockets.
  A peer for comparison; trio-websocket has no keepalive of its own.

Under wsfleet, every socket is held the way an application holds it: ``async with
manager.session(ws, id)`` around ``async for message in session`` (``_fanout_server``'s
``Fleet.hold``), and the libraries' own keepalives are off (``_fanout_server``'s servers), so
every ping on the wire is wsfleet's.

Prints ``port <port>`` once it accepts WebSocket connections at ``/ws?id=<name>`` on
127.0.0.1, then answers one line per command read from stdin:

    wait <n> <timeout>  -> ready <connections>   (at least n held, or the timeout)
    sample              -> sample <json>         (CPU, memory, the manager's stats())
    quit                (exits at once: closing thousands of sockets politely costs time)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any

import anyio

from _fanout_server import AsyncExit, Fleet, trio_websocket, websockets_asyncio, websockets_trio
from _harness.process import commands, count_reaches, raise_nofile, rss, say
from wsfleet import ConnectionManager, HeartbeatPolicy

Serving = Callable[[Fleet], AbstractAsyncContextManager[int]]

#: variant -> (event loop, the server that hands each socket to ``Fleet.hold``)
VARIANTS: dict[str, tuple[str, Serving]] = {
    "asyncio": ("asyncio", websockets_asyncio),
    "trio": ("trio", websockets_trio),
    "trio-websocket": ("trio", trio_websocket),
}


#: websockets pinging by itself, no wsfleet: the handler only reads.
KEEPALIVE = {"asyncio": websockets_asyncio, "trio": websockets_trio}


def configure(variant: str, policy: str) -> tuple[ConnectionManager | None, Serving]:
    """The manager (None for the library's keepalive) and the server, from the arguments."""
    if policy.startswith("library:"):
        if variant not in KEEPALIVE:
            raise SystemExit(f"{variant} has no keepalive of its own")
        interval, timeout = (float(part) for part in policy.removeprefix("library:").split(","))
        return None, partial(KEEPALIVE[variant], ping_interval=interval, ping_timeout=timeout)
    heartbeat: HeartbeatPolicy | None
    if policy == "off":
        heartbeat = None
    elif policy == "default":
        heartbeat = HeartbeatPolicy()
    else:
        interval, timeout, idle = (float(part) for part in policy.split(","))
        heartbeat = HeartbeatPolicy(ping_interval=interval, ping_timeout=timeout, idle_after=idle)
    return ConnectionManager(heartbeat=heartbeat), VARIANTS[variant][1]


def held(manager: ConnectionManager | None, fleet: Fleet) -> int:
    return len(fleet.sockets) if manager is None else manager.stats().connections


def sample(manager: ConnectionManager | None, fleet: Fleet) -> dict[str, Any]:
    """What the driver reads at the edges of its window, and every few seconds between."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    info: dict[str, Any] = {
        "t": time.monotonic(),
        "cpu": time.process_time(),
        "user": usage.ru_utime,
        "system": usage.ru_stime,
        "rss": rss(),
        "sockets": len(fleet.sockets),
        "connections": held(manager, fleet),
        "gc_collections": [generation["collections"] for generation in gc.get_stats()],
    }
    if manager is not None:
        stats = manager.stats()
        info.update(
            states={name: count for name, count in stats.states.items() if count},
            pings_sent=stats.pings_sent,
            heartbeat_timeouts=stats.heartbeat_timeouts,
            sent_messages=stats.sent_messages,
            drops=dict(stats.drops),
            callback_errors=stats.callback_errors,
        )
    return info


async def serve(variant: str, policy: str) -> None:
    manager, serving = configure(variant, policy)
    fleet = Fleet(manager)
    async with AsyncExit(manager), serving(fleet) as port:
        say(f"port {port}")
        async for words in commands():
            command, args = words[0], words[1:]
            if command == "wait":
                count = partial(held, manager, fleet)
                say(f"ready {await count_reaches(count, int(args[0]), float(args[1]), 0.05)}")
            elif command == "sample":
                say("sample " + json.dumps(sample(manager, fleet)))
        # Closing thousands of sockets politely only costs the driver time; it is done with
        # us. (AsyncExit does the same when the server fails: it prints why and leaves.)
        sys.stdout.flush()
        os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("policy", help="default | off | i,t,idle | library:i,t (seconds)")
    args = parser.parse_args()
    configure(args.variant, args.policy)  # bad arguments fail here, before the port is said
    raise_nofile()
    anyio.run(serve, args.variant, args.policy, backend=VARIANTS[args.variant][0])


if __name__ == "__main__":
    main()
