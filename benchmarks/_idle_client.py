"""Idle WebSocket clients for idle_bench.py: websockets' asyncio client, in a process of its own.

    python benchmarks/_idle_client.py <port>

Each client is what an idle browser tab or device is to the server: it opens, then never
sends a message. Its own keepalive is off (``ping_interval=None``), so every ping on the
wire is the server's; websockets' protocol answers each ping with a pong as the frame is
read, without the application calling ``recv()``. The process raises its open-files soft
limit to the hard limit; the driver keeps each process well below it. Commands on stdin,
one answer line each:

    connect <n> <prefix>  -> connected <open> <seconds>   (ids <prefix>0 ... <prefix><n-1>)
    check                 -> check <json>                 (how many are open, closes by code)
    quit
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake
from websockets.protocol import State

from _harness.process import commands, raise_nofile, say

CONCURRENT_HANDSHAKES = 64
ATTEMPTS = 5


async def open_one(port: int, identifier: str) -> ClientConnection:
    uri = f"ws://127.0.0.1:{port}/ws?id={identifier}"
    for attempt in range(ATTEMPTS):
        try:
            return await connect(
                uri,
                ping_interval=None,
                ping_timeout=None,
                compression=None,
                open_timeout=30,
                close_timeout=1,
            )
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            if attempt == ATTEMPTS - 1:
                raise ConnectionError(f"{identifier}: {exc!r}") from exc
            await asyncio.sleep(0.2)
    raise AssertionError("unreachable")


async def open_many(port: int, n: int, prefix: str) -> list[ClientConnection]:
    gate = asyncio.Semaphore(CONCURRENT_HANDSHAKES)

    async def one(i: int) -> ClientConnection:
        async with gate:
            return await open_one(port, f"{prefix}{i}")

    return await asyncio.gather(*(one(i) for i in range(n)))


def check(clients: list[ClientConnection]) -> dict[str, object]:
    """Open connections, and the close codes of the others (a server timeout shows here)."""
    codes = Counter(str(ws.close_code) for ws in clients if ws.protocol.state is not State.OPEN)
    return {
        "connections": len(clients),
        "open": sum(ws.protocol.state is State.OPEN for ws in clients),
        "closed_by_code": dict(codes),
    }


async def main(port: int) -> None:
    clients: list[ClientConnection] = []
    async for words in commands():
        command, args = words[0], words[1:]
        if command == "connect":
            t0 = time.monotonic()
            try:
                clients += await open_many(port, int(args[0]), args[1])
            except ConnectionError as exc:
                say(f"failed {exc}")
                continue
            opened = check(clients)["open"]
            say(f"connected {opened} {time.monotonic() - t0:.3f}")
        elif command == "check":
            say("check " + json.dumps(check(clients)))
    sys.stdout.flush()
    os._exit(0)  # thousands of sockets die with the process; no need to close them one by one


def cli() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    args = parser.parse_args()
    raise_nofile()
    asyncio.run(main(args.port))


if __name__ == "__main__":
    cli()
