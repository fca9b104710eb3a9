"""The scale benchmark's clients: wsfleet's own outbound connections, in a process of their own.

    python benchmarks/_scale_client.py <source address>

One ``ConnectionManager(heartbeat=None, retry_policy=RetryPolicy())`` dials every client of
this process with ``manager.connect(url, id, ...)``, under the default retry policy (without
one a lost connection ends DISCONNECTED), so when the servers go
away the clients come back the way a wsfleet client does: ERROR, the policy's jittered delay,
RECONNECTING, a new dial. Every socket is bound to ``<source address>`` (127.0.0.2, 127.0.0.3,
...): a source address has about 28,000 ephemeral ports, so a fleet of 100,000 needs several.
websockets' own keepalive is off: the only pings are the servers' heartbeat, answered by
websockets as frames are read. A message ``<serial> <monotonic ns>`` is timed on arrival
against the stamp (``time.monotonic_ns()`` is one clock for every process on the machine).
It prints ``loaded`` once it can take commands.
The process raises its open-files soft limit to the hard one. Commands on stdin, one answer
line each:

    connect <n> <prefix> <first> <ports> <in flight> <timeout>  -> connected <n> <seconds>
        (ids <prefix><first> ... ; client i dials the i-th port of the comma-separated
        list, round robin; at most <in flight> dials at once)
    counts                            -> counts <json>     (connections per state)
    received <serial> <n> <timeout>   -> received <json>   (arrival delays in µs, once n came)
    mark                              -> marked            (the state changes from now on)
    storm <n> <timeout>               -> storm <json>      (n CONNECTED again, or the timeout)
    quit
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections import Counter, defaultdict
from functools import partial
from typing import Any

from _harness.process import commands, count_reaches, raise_nofile, say
from wsfleet import ConnectionManager, ConnectionState, RetryPolicy, StateChange

#: what makes each failure's reason its own (the URL, the address), left out to count them
URL = re.compile(r"ws://\S+")
ADDRESS = re.compile(r"\('127\.[^)]*\)")

C = ConnectionState.CONNECTED
R = ConnectionState.RECONNECTING
E = ConnectionState.ERROR
D = ConnectionState.DISCONNECTED


class Clients:
    """The connections' states counted as they change, and the messages' arrival delays."""

    def __init__(self, manager: ConnectionManager, source: str) -> None:
        self.manager = manager
        self.source = source
        self.states: Counter[ConnectionState] = Counter()
        self.delays: defaultdict[int, list[int]] = defaultdict(list)
        #: since ``mark``: (monotonic ns, new state) of every change
        self.changes: list[tuple[int, str]] | None = None
        #: why connections failed or ended, by reason (the last few hundred kinds)
        self.reasons: Counter[str] = Counter()
        manager.on_state_change(self.changed)

    def changed(self, change: StateChange) -> None:
        if change.old is not None:
            self.states[change.old] -= 1
        if change.new is not D:  # a DISCONNECTED connection has left the registry
            self.states[change.new] += 1
        else:
            self.states[D] += 1
        if self.changes is not None:
            self.changes.append((time.monotonic_ns(), change.new.name))
        if change.new in (E, D) and len(self.reasons) < 300:
            reason = ADDRESS.sub("(<address>)", URL.sub("<url>", change.reason or ""))
            self.reasons[f"{change.new.name}: {reason}"] += 1

    def arrived(self, _conn: object, message: object) -> None:
        now = time.monotonic_ns()
        text = message.decode() if isinstance(message, bytes) else str(message)
        serial, _, stamp = text.partition(" ")
        self.delays[int(serial)].append((now - int(stamp)) // 1000)

    async def connect(
        self, n: int, prefix: str, first: int, ports: list[int], in_flight: int, limit: float
    ) -> tuple[int, float]:
        t0 = time.monotonic()
        end = t0 + limit
        for i in range(first, first + n):
            while self.states[R] >= in_flight and time.monotonic() < end:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            identifier = f"{prefix}{i}"
            await self.manager.connect(
                f"ws://127.0.0.1:{ports[i % len(ports)]}/ws?id={identifier}",
                identifier,
                on_message=self.arrived,
                local_addr=(self.source, 0),
                ping_interval=None,
                ping_timeout=None,
                compression=None,
                close_timeout=1,
            )
        connected = await count_reaches(lambda: self.states[C], n, end - time.monotonic(), 0.05)
        return connected, time.monotonic() - t0

    def counts(self) -> dict[str, int]:
        return {state.name: count for state, count in self.states.items() if count}

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


async def main(source: str) -> None:
    async with ConnectionManager(heartbeat=None, retry_policy=RetryPolicy()) as manager:
        clients = Clients(manager, source)
        say("loaded")
        async for words in commands():
            command, args = words[0], words[1:]
            if command == "connect":
                n, prefix, first = int(args[0]), args[1], int(args[2])
                ports = [int(p) for p in args[3].split(",")]
                done, took = await clients.connect(
                    n, prefix, first, ports, int(args[4]), float(args[5])
                )
                say(f"connected {done} {took:.3f}")
            elif command == "counts":
                say("counts " + json.dumps(clients.counts()))
            elif command == "received":
                serial, want = int(args[0]), int(args[1])
                got = await count_reaches(
                    partial(len, clients.delays[serial]), want, float(args[2]), 0.02
                )
                say("received " + json.dumps(clients.delays.pop(serial, [])[:got]))
            elif command == "mark":
                clients.changes = []
                say("marked")
            elif command == "storm":
                want, limit = int(args[0]), float(args[1])
                await count_reaches(partial(clients.states.__getitem__, C), want, limit, 0.05)
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
