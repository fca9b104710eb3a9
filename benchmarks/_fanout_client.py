"""The cheapest WebSocket clients there are, for fanout_bench.py: count bytes, nothing else.

    python benchmarks/_fanout_client.py <port> [--cpu <n>] [--socketio]

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
    latency <0|1>                       -> latency <0|1>
        from the next "arm" on, the healthy connections also parse frame headers and note,
        for every message, the receive time minus the send time the server wrote into it
        (``time.monotonic_ns()`` after the serial number); "done" then carries their
        distribution
    quit

With ``--socketio`` every connection speaks Engine.IO v4 / Socket.IO v5 over WebSocket:
``/socket.io/?EIO=4&transport=websocket``, the open packet ``0{...}`` is answered with ``40``
(connect to the default namespace), ``40{"sid":...}`` completes the handshake (a ping ``2``
met on the way is answered with ``3``); from then on bytes are counted as before: the driver
knows an event ``42["m","<text>"]`` is 10 bytes longer than the text.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import statistics
import sys
import time
from functools import partial

from _harness.process import commands, pin, raise_nofile, say

BUFFER = bytearray(256 * 1024)  # every read lands here; the data is only counted
CONCURRENT_HANDSHAKES = 64
#: A stamped message starts ``<serial:8> <monotonic_ns:19> ``.
STAMP_END = 28
#: Quantiles of the latency distribution reported in "done", in steps of 0.5 %.
QUANTILES = 200


class Client:
    def __init__(self) -> None:
        self.healthy: list[Conn] = []
        self.stalled: list[Conn] = []
        self.remaining = 0
        self.all_done: asyncio.Event | None = None
        self.socketio = False
        self.record = False
        #: where the stamp starts in a payload: 0, or 8 after Socket.IO's ``42["m","``
        self.stamp_at = 0


class Conn(asyncio.BufferedProtocol):
    __slots__ = (
        "client",
        "done_at",
        "gap",
        "handshake",
        "hdr",
        "head",
        "last",
        "latencies",
        "lost",
        "open",
        "received",
        "request",
        "skip",
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
        # latency mode: the frame being read (header and stamp so far, payload bytes left)
        self.hdr = bytearray()
        self.skip = 0
        self.latencies: list[int] = []

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
                if self.client.record:
                    self.note_latencies(nbytes)
                if self.received >= self.target:
                    self.finished(now)
            return
        self.head += bytes(BUFFER[:nbytes])
        if self.handshake.done():  # Socket.IO: HTTP done, Engine.IO packets under way
            self.socketio_handshake()
            return
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return
        status = self.head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            self.handshake.set_exception(ConnectionError(f"handshake refused: {status!r}"))
            assert self.transport is not None
            self.transport.close()
            return
        self.head = self.head[end + 4 :]  # frames sent right after the response
        if self.client.socketio:
            self.handshake.set_result(None)  # HTTP part; open_one waits on ``opened``
            self.socketio_handshake()
            return
        self.opened()

    def opened(self) -> None:
        self.open = True
        self.received = len(self.head)
        self.head = b""
        if self.stall:
            assert self.transport is not None
            self.transport.pause_reading()
        if not self.handshake.done():
            self.handshake.set_result(None)

    def socketio_handshake(self) -> None:
        """Engine.IO open, Socket.IO connect: whole frames from ``head``, until ``40{``."""
        assert self.transport is not None
        while len(self.head) >= 2:
            length = self.head[1] & 0x7F
            start = 2 if length < 126 else 4
            if length == 126:
                length = int.from_bytes(self.head[2:4], "big")
            if len(self.head) < start + length:
                return
            payload = self.head[start : start + length]
            self.head = self.head[start + length :]
            if payload.startswith(b"0{"):
                self.transport.write(masked(b"40"))
            elif payload == b"2":
                self.transport.write(masked(b"3"))
            elif payload.startswith(b"40"):
                self.opened()
                return

    def note_latencies(self, nbytes: int) -> None:
        """Walk the frames in the bytes just read; note each message's delay at its end."""
        data = memoryview(BUFFER)[:nbytes]
        pos = 0
        stamp_end = self.client.stamp_at + STAMP_END
        while pos < nbytes:
            if self.skip:
                take = min(self.skip, nbytes - pos)
                self.skip -= take
                pos += take
                if not self.skip and self.hdr:
                    at = len(self.hdr) - STAMP_END + 9
                    sent = int(self.hdr[at : at + 19])
                    self.latencies.append(time.monotonic_ns() - sent)
                    self.hdr.clear()
                continue
            hdr = self.hdr
            if len(hdr) < 2:
                take = min(2 - len(hdr), nbytes - pos)
                hdr += data[pos : pos + take]
                pos += take
                continue
            length = hdr[1] & 0x7F
            start = 2 if length < 126 else 4 if length == 126 else 10
            text = hdr[0] & 0x0F == 1
            want = start + (stamp_end if text else 0)
            if len(hdr) < want:
                take = min(want - len(hdr), nbytes - pos)
                hdr += data[pos : pos + take]
                pos += take
                if len(hdr) < want:
                    continue
            if length >= 126:
                length = int.from_bytes(hdr[2:start], "big")
            self.skip = length - (want - start)
            if not text:
                hdr.clear()
            elif not self.skip:
                at = len(hdr) - STAMP_END + 9
                self.latencies.append(time.monotonic_ns() - int(hdr[at : at + 19]))
                hdr.clear()

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


def masked(payload: bytes) -> bytes:
    """A client's text frame: masked, as a client's must be."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x81, 0x80 | len(payload))) + mask + body


def upgrade_request(port: int, identifier: str, socketio: bool = False) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    path = f"/socket.io/?EIO=4&transport=websocket&id={identifier}" if socketio else "/ws"
    if not socketio:
        path += f"?id={identifier}"
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def same(conn: Conn) -> Conn:
    """The protocol factory of one connection: the Conn made for it."""
    return conn


async def open_one(client: Client, port: int, identifier: str, stall: bool) -> Conn:
    loop = asyncio.get_running_loop()
    for attempt in range(5):
        conn = Conn(client, upgrade_request(port, identifier, client.socketio), stall)
        try:
            await asyncio.wait_for(
                loop.create_connection(partial(same, conn), "127.0.0.1", port), 10
            )
            await asyncio.wait_for(conn.handshake, 10)
            if client.socketio:
                async with asyncio.timeout(10):
                    while not conn.open:
                        if conn.lost:
                            raise ConnectionError("lost during the Socket.IO handshake")
                        await asyncio.sleep(0.005)
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
        conn.latencies = []
        conn.hdr.clear()
        conn.skip = 0
    say("armed")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(client.all_done.wait(), limit)
    times = sorted(c.done_at for c in conns if c.done_at is not None)
    short = [c.target - c.received for c in conns if c.done_at is None]
    report: dict[str, object] = {
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
    if client.record:
        report["latency"] = distribution([x for c in conns for x in c.latencies])
    say("done " + json.dumps(report))


def distribution(samples_ns: list[int]) -> dict[str, object]:
    """Quantiles in ms (0, 0.5, 1 ... 100 %) of the delays noted, and how many there were."""
    samples_ns.sort()
    n = len(samples_ns)
    if not n:
        return {"count": 0, "quantiles_ms": []}
    quantiles = [
        samples_ns[min(n - 1, round(i / QUANTILES * (n - 1)))] / 1e6 for i in range(QUANTILES + 1)
    ]
    return {"count": n, "quantiles_ms": quantiles}


async def main(port: int, socketio: bool) -> None:
    client = Client()
    client.socketio = socketio
    client.stamp_at = 8 if socketio else 0
    watcher: asyncio.Task[None] | None = None
    async for words in commands():
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
        elif command == "latency":
            client.record = args[0] == "1"
            say(f"latency {int(client.record)}")
    sys.stdout.flush()
    os._exit(0)  # thousands of sockets die with the process; no need to close them one by one


def cli() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU")
    parser.add_argument("--socketio", action="store_true", help="speak Engine.IO v4 on top")
    args = parser.parse_args()
    raise_nofile()
    pin(args.cpu)
    asyncio.run(main(args.port, args.socketio))


if __name__ == "__main__":
    cli()
