"""The scale benchmark's clients: thousands of cheap WebSocket clients in a process of their own.

    python benchmarks/_scale_client.py <source address>

Each client is a raw asyncio protocol that opens the WebSocket by hand (the request of
``_fanout_client.upgrade_request``) from ``<source address>`` (127.0.0.2, 127.0.0.3, ...: a
source address has about 28,000 ephemeral ports, so a fleet of 100,000 needs several), then
reads frames: it answers each ping with a pong (the servers' heartbeat), times each text
message ``<serial> <monotonic ns>`` against its stamp on arrival (``time.monotonic_ns()`` is
one clock for every process on the machine), and never sends anything else.

When its connection is lost, or a dial fails, a client comes back the way wsfleet's own
outbound connections do: the delay before each attempt is ``RetryPolicy().delay(attempt,
previous)``, the default policy and jitter that ``manager.connect()`` uses (the call the
connection's state machine makes), until ``can_retry`` says no; a connection that is up
again starts its count afresh. They are not ``manager.connect()`` connections themselves:
on this machine that costs the client several milliseconds of CPU per dial, which 100,000
clients on the same two CPUs as the servers cannot afford; here the clients' CPU is a small
part of the whole, and what is measured is the servers'. A dial, handshake included, must
finish within 10 s (websockets' ``open_timeout``).

The process raises its open-files soft limit to the hard one and prints ``loaded``; then
one answer line per command:

    connect <n> <prefix> <first> <ports> <in flight> <timeout>  -> started
        (ids <prefix><first> ... ; client i dials the i-th port of the comma-separated
        list, round robin; at most <in flight> dials at once; in the background)
    counts                            -> counts <json>     (clients per state, and dialled)
    received <serial> <n> <timeout>   -> received <json>   (arrival delays in µs, once n came)
    mark                              -> marked            (the state changes from now on)
    policy <first delay spread>       -> policy <repr>     (``RetryPolicy(first_delay_spread=..)``
                                                            from now on; ``default``: the default)
    revive                            -> revived <n>       (the clients that gave up start a new
                                                            outage: the policy's first delay)
    storm <n> <timeout>               -> storm <json>      (n CONNECTED again, every client
                                                            connected or given up, or the timeout)
    quit
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter, defaultdict
from functools import partial
from typing import Any

from _fanout_client import upgrade_request
from _harness.process import commands, count_reaches, raise_nofile, say
from wsfleet import RetryPolicy

OPEN_TIMEOUT = 10.0
#: A client's frames must be masked; the key may be any four bytes, and zeros leave the
#: payload as it is.
MASK = b"\x00\x00\x00\x00"
PING, PONG, TEXT, CLOSE = 0x9, 0xA, 0x1, 0x8


def frame(opcode: int, payload: bytes) -> bytes:
    """A client's frame of a control-sized payload (at most 125 bytes)."""
    return bytes((0x80 | opcode, 0x80 | len(payload))) + MASK + payload


class Clients:
    """Every client of this process, their states counted, the messages' arrival delays."""

    def __init__(self, source: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.source = source
        self.policy = RetryPolicy()
        self.states: Counter[str] = Counter()
        self.delays: defaultdict[int, list[int]] = defaultdict(list)
        #: since ``mark``: (monotonic ns, new state) of every change
        self.changes: list[tuple[int, str]] | None = None
        #: why attempts failed and clients gave up, since ``mark``
        self.reasons: Counter[str] = Counter()
        self.conns: list[Conn] = []

    def change(self, old: str | None, new: str, reason: str | None = None) -> None:
        if old is not None:
            self.states[old] -= 1
        self.states[new] += 1
        if self.changes is not None:
            self.changes.append((time.monotonic_ns(), new))
        if reason is not None:
            self.reasons[f"{new}: {reason}"] += 1

    async def connect(
        self, n: int, prefix: str, first: int, ports: list[int], in_flight: int, limit: float
    ) -> tuple[int, float]:
        t0 = time.monotonic()
        end = t0 + limit
        shown = t0
        for i in range(first, first + n):
            while self.states["RECONNECTING"] >= in_flight and time.monotonic() < end:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            if time.monotonic() - shown > 10:  # progress, in the log the driver shows on failure
                shown = time.monotonic()
                print(f"{shown - t0:.0f} s: {i - first} dialled, {self.counts()}", file=sys.stderr)
            if time.monotonic() >= end:
                break  # the rest are not dialled: the driver sees it in ``counts``
            conn = Conn(self, f"{prefix}{i}", ports[i % len(ports)])
            self.conns.append(conn)
            conn.dial()
        connected = await count_reaches(
            partial(self.states.__getitem__, "CONNECTED"), n, end - time.monotonic(), 0.05
        )
        return connected, time.monotonic() - t0

    def revive(self) -> int:
        gone = [conn for conn in self.conns if conn.state == "DISCONNECTED"]
        for conn in gone:
            conn.attempts, conn.previous = 0, None
            conn.failed("revived")
        return len(gone)

    def settled(self, want: int) -> bool:
        """``want`` connected, or nobody is connecting or waiting to."""
        states = self.states
        return states["CONNECTED"] >= want or states["RECONNECTING"] + states["ERROR"] == 0

    def counts(self) -> dict[str, int]:
        return {state: count for state, count in self.states.items() if count}

    def storm(self) -> dict[str, Any]:
        """Since ``mark``: when each connection came back, and how many dials it took."""
        changes = self.changes or []
        return {
            "connected_ns": [t for t, state in changes if state == "CONNECTED"],
            "lost_ns": [t for t, state in changes if state == "ERROR"],
            "attempts": sum(state == "RECONNECTING" for _, state in changes),
            "gave_up": sum(state == "DISCONNECTED" for _, state in changes),
            "counts": self.counts(),
            "reasons": dict(self.reasons.most_common(10)),
        }


class Conn(asyncio.Protocol):
    """One client: dial, handshake, frames; on a loss, the retry policy's next delay."""

    __slots__ = (
        "attempts",
        "buffer",
        "clients",
        "identifier",
        "open",
        "port",
        "previous",
        "state",
        "task",
        "timer",
        "transport",
    )

    def __init__(self, clients: Clients, identifier: str, port: int) -> None:
        self.clients = clients
        self.identifier = identifier
        self.port = port
        self.state: str | None = None
        self.attempts = 0  # failed attempts in the current outage
        self.previous: float | None = None  # the delay drawn before the last attempt
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.open = False
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None

    def to(self, new: str, reason: str | None = None) -> None:
        self.clients.change(self.state, new, reason)
        self.state = new

    def dial(self) -> None:
        self.to("RECONNECTING")
        self.buffer.clear()
        self.open = False
        self.timer = self.clients.loop.call_later(OPEN_TIMEOUT, self.timed_out)
        self.task = self.clients.loop.create_task(self._dial())
        self.task.add_done_callback(self._dialled)

    async def _dial(self) -> None:
        await self.clients.loop.create_connection(
            partial(same, self), "127.0.0.1", self.port, local_addr=(self.clients.source, 0)
        )

    def _dialled(self, task: asyncio.Task[None]) -> None:
        if task is not self.task or task.cancelled():
            return  # a dial the timeout gave up on
        self.task = None
        exc = task.exception()
        if exc is not None and self.state == "RECONNECTING":
            what = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
            self.failed(f"cannot connect: {what}")

    def timed_out(self) -> None:
        self.timer = None
        if self.state == "RECONNECTING":
            if self.task is not None:
                self.task.cancel()  # still connecting (a full listen backlog drops SYNs)
                self.task = None
            if self.transport is not None:
                self.transport.abort()
            self.failed("timed out during the opening handshake")

    def failed(self, reason: str) -> None:
        """ERROR, then the next attempt after the policy's delay, or give up."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.transport = None
        self.open = False
        self.to("ERROR", reason)
        policy = self.clients.policy
        if not policy.can_retry(self.attempts):
            self.to("DISCONNECTED", "retries exhausted")
            return
        self.attempts += 1
        self.previous = policy.delay(self.attempts, self.previous)
        self.clients.loop.call_later(self.previous, self.dial)

    # -- the protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(upgrade_request(self.port, self.identifier))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[: buffer.find(b"\r\n")])
            del buffer[: end + 4]
            if b" 101 " not in status + b" ":
                assert self.transport is not None
                self.transport.abort()
                self.failed(f"handshake refused: {status.decode(errors='replace')}")
                return
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.open = True
            self.attempts = 0
            self.previous = None
            self.to("CONNECTED")
        self.frames()

    def frames(self) -> None:
        buffer = self.buffer
        while len(buffer) >= 2:
            opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
            start = 2
            if length == 126:
                start, length = 4, int.from_bytes(buffer[2:4], "big")
            elif length == 127:
                start, length = 10, int.from_bytes(buffer[2:10], "big")
            if len(buffer) < start + length:
                return
            payload = bytes(buffer[start : start + length])
            del buffer[: start + length]
            transport = self.transport
            if opcode == TEXT:
                serial, _, stamp = payload.partition(b" ")
                delay = (time.monotonic_ns() - int(stamp)) // 1000
                self.clients.delays[int(serial)].append(delay)
            elif opcode == PING and transport is not None:
                transport.write(frame(PONG, payload))
            elif opcode == CLOSE and transport is not None:
                transport.write(frame(CLOSE, payload[:2]))
                transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == "CONNECTED":
            self.failed("connection lost")
        elif self.state == "RECONNECTING":
            self.failed(f"lost during the opening handshake: {exc!r}")


def same(conn: Conn) -> Conn:
    """The protocol factory of one connection: the Conn made for it."""
    return conn


async def main(source: str) -> None:
    clients = Clients(source)
    tasks: set[asyncio.Task[tuple[int, float]]] = set()
    say("loaded")
    async for words in commands():
        command, args = words[0], words[1:]
        if command == "connect":
            n, prefix, first = int(args[0]), args[1], int(args[2])
            ports = [int(p) for p in args[3].split(",")]
            dialling = clients.connect(n, prefix, first, ports, int(args[4]), float(args[5]))
            tasks.add(asyncio.create_task(dialling))  # the driver follows it with ``counts``
            say("started")
        elif command == "counts":
            say("counts " + json.dumps({**clients.counts(), "dialled": len(clients.conns)}))
        elif command == "received":
            serial, want = int(args[0]), int(args[1])
            got = await count_reaches(
                partial(len, clients.delays[serial]), want, float(args[2]), 0.02
            )
            say("received " + json.dumps(clients.delays.pop(serial, [])[:got]))
        elif command == "mark":
            clients.changes = []
            clients.reasons.clear()
            say("marked")
        elif command == "policy":
            spread = None if args[0] == "default" else float(args[0])
            clients.policy = RetryPolicy(first_delay_spread=spread)
            say(f"policy {clients.policy!r}")
        elif command == "revive":
            say(f"revived {clients.revive()}")
        elif command == "storm":
            want, limit = int(args[0]), float(args[1])
            await count_reaches(partial(clients.settled, want), 1, limit, 0.05)
            say("storm " + json.dumps(clients.storm()))
    sys.stdout.flush()
    os._exit(0)  # thousands of sockets die with the process; no need to close them


def cli() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source", help="the local address every socket binds (127.0.0.x)")
    args = parser.parse_args()
    raise_nofile()
    asyncio.run(main(args.source))


if __name__ == "__main__":
    cli()
