"""The cheapest WebSocket clients there are, for fanout_bench.py: count bytes, nothing else.

    python benchmarks/_fanout_client.py <port> [--cpu <n>]

Each connection is a raw TCP socket that performs the WebSocket opening handshake by hand and
from then on only adds up how many bytes arrive (an asyncio ``BufferedProtocol`` reading into
one shared buffer: no parsing, no allocation per read). A server-to-client text frame of 64
bytes is 66 bytes on the wire, one of 16 KiB 16,388 bytes, so "every message arrived" is a
byte count. Commands on stdin, one answer line each:

    connect <n> <prefix> <stalled 0|1>  -> connected <count> <seconds>
        opens n connections with ids <prefix><i>; with stalled=1 each of them handshakes and
        then stops reading (its kernel buffers fill, the server's writes to it stop)
    arm <bytes> <timeout>               -> armed, later: done <json>
        every healthy connection must receive <bytes> more; "done" reports how many did and
        when (time.monotonic(), the system-wide clock the driver also reads) each finished
    quit
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import statistics
import sys
import time

BUFFER = bytearray(256 * 1024)  # every read lands here; the data is only counted
CONCURRENT_HANDSHAKES = 64


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Client:
    def __init__(self) -> None:
        self.healthy: list[Conn] = []
        self.stalled: list[Conn] = []
        self.remaining = 0
        self.all_done: asyncio.Event | None = None


class Conn(asyncio.BufferedProtocol):
    __slots__ = (
        "client",
        "done_at",
        "gap",
        "handshake",
        "head",
        "last",
        "lost",
        "open",
        "received",
        "request",
        "stall",
        "target",
        "transport",
    )

    def __init__(self, client: Client, request: bytes, stall: bool) -> None:
        self.client = client
        self.request = request
        self.stall = stall
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.head = b""
        self.open = False
        self.lost = False
        self.received = 0
        self.target = 1 << 62
        self.done_at: float | None = 0.0  # not armed: nothing to wait for
        self.last = 0.0  # when this connection last received bytes (0: not yet this round)
        self.gap = 0.0  # the longest wait between two reads (while armed)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(BUFFER)

    def buffer_updated(self, nbytes: int) -> None:
        if self.open:
            self.received += nbytes
            if self.done_at is None:
                now = time.monotonic()
                if self.last and now - self.last > self.gap:
                    self.gap = now - self.last
                self.last = now
                if self.received >= self.target:
                    self.finished(now)
            return
        self.head += bytes(BUFFER[:nbytes])
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return
        status = self.head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            self.handshake.set_exception(ConnectionError(f"handshake refused: {status!r}"))
            assert self.transport is not None
            self.transport.close()
            return
        self.open = True
        self.received = len(self.head) - end - 4  # frames sent right after the response
        self.head = b""
        if self.stall:
            assert self.transport is not None
            self.transport.pause_reading()
        if not self.handshake.done():
            self.handshake.set_result(None)

    def finished(self, now: float) -> None:
        self.done_at = now
        client = self.client
        client.remaining -= 1
        if client.remaining == 0 and client.all_done is not None:
            client.all_done.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError(f"connection lost: {exc!r}"))


def upgrade_request(port: int, identifier: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws?id={identifier} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def open_one(client: Client, port: int, identifier: str, stall: bool) -> Conn:
    loop = asyncio.get_running_loop()
    for attempt in range(5):
        conn = Conn(client, upgrade_request(port, identifier), stall)
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda conn=conn: conn, "127.0.0.1", port), 10
            )
            await asyncio.wait_for(conn.handshake, 10)
        except (OSError, TimeoutError) as exc:
            if conn.transport is not None:
                conn.transport.abort()
            if attempt == 4:
                raise ConnectionError(f"{identifier}: {exc!r}") from exc
            await asyncio.sleep(0.2)
            continue
        return conn
    raise AssertionError("unreachable")


async def connect(client: Client, port: int, n: int, prefix: str, stall: bool) -> float:
    t0 = time.monotonic()
    gate = asyncio.Semaphore(CONCURRENT_HANDSHAKES)

    async def one(i: int) -> Conn:
        async with gate:
            return await open_one(client, port, f"{prefix}{i}", stall)

    conns = await asyncio.gather(*(one(i) for i in range(n)))
    (client.stalled if stall else client.healthy).extend(conns)
    return time.monotonic() - t0


async def watch(client: Client, nbytes: int, limit: float) -> None:
    conns = client.healthy
    client.all_done = asyncio.Event()
    client.remaining = len(conns)
    armed = time.monotonic()
    for conn in conns:
        conn.done_at = None
        conn.target = conn.received + nbytes
        conn.last = 0.0
        conn.gap = 0.0
    say("armed")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(client.all_done.wait(), limit)
    times = sorted(c.done_at for c in conns if c.done_at is not None)
    short = [c.target - c.received for c in conns if c.done_at is None]
    report = {
        "connections": len(conns),
        "complete": len(times),
        "first": times[0] if times else None,
        "median": statistics.median(times) if times else None,
        "last": times[-1] if times else None,
        "lost": sum(c.lost for c in conns),
        "stalled_lost": sum(c.lost for c in client.stalled),
        "bytes_missing": sum(short),
        # the longest pause of a healthy connection, counted from its first byte of the round
        # on; one that never finished is counted as waiting until now
        "longest_pause": max(
            (
                max(c.gap, time.monotonic() - (c.last or armed)) if c.done_at is None else c.gap
                for c in conns
            ),
            default=None,
        ),
        "now": time.monotonic(),
    }
    say("done " + json.dumps(report))


async def main(port: int) -> None:
    client = Client()
    loop = asyncio.get_running_loop()
    watcher: asyncio.Task[None] | None = None
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        words = line.split()
        if not words or words[0] == "quit":
            break
        command, args = words[0], words[1:]
        if command == "connect":
            n, prefix, stall = int(args[0]), args[1], args[2] == "1"
            try:
                seconds = await connect(client, port, n, prefix, stall)
            except ConnectionError as exc:
                say(f"failed {exc}")
                continue
            say(f"connected {len(client.healthy) + len(client.stalled)} {seconds:.3f}")
        elif command == "arm":
            if watcher is not None:
                await watcher
            watcher = asyncio.create_task(watch(client, int(args[0]), float(args[1])))
            await asyncio.sleep(0)  # "armed" is said before the next command is read
    sys.stdout.flush()
    os._exit(0)  # thousands of sockets die with the process; no need to close them one by one


def cli() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    asyncio.run(main(args.port))


if __name__ == "__main__":
    cli()
