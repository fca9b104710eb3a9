"""Forged messages on the bus: how much of a node's memory, and how many connections, they take.

    python benchmarks/backplane_flood.py [--count N]   # prints a Markdown table
    python benchmarks/backplane_flood.py --smoke       # a few hundred of each, no table

Two nodes on one ``InMemoryHub`` (signing off: anyone who can publish can say anything),
then, for each kind of flood, ``--count`` forged messages (50,000 by default) published
straight on the bus, in chunks the receiving node takes before the next:

* **made-up nodes**: ``online`` of a new identifier from a new, made-up node id each time;
* **a real node's name**: ``online`` of a new identifier, claimed by the other real node;
* **groups**: ``join`` of one identifier to a new group each time, claimed by the real node;
* **hellos**: ``hello`` from a made-up node id each time (a tenth of ``--count``).

For each: the receiving node's memory growth (``tracemalloc``, after a collection), the
nodes and identifiers in its view, the origins it follows, and the sessions of the store it
opened. Run it against any version of wsfleet (it uses only ``Backplane``'s first
arguments and counts the rest by attribute), with ``PYTHONPATH`` pointing at its source.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from wsfleet import Backplane, ConnectionManager, InMemoryHub
from wsfleet.backplane import Store, StoreSession
from wsfleet.backplane.wire import VERSION

NS = "flood"
CHUNK = 5_000


class Counting(Store):
    def __init__(self, store: Store) -> None:
        self.store = store
        self.sessions = 0

    @asynccontextmanager
    async def session(self) -> AsyncIterator[StoreSession]:
        self.sessions += 1
        async with self.store.session() as session:
            yield session


async def poll(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(120):
        while not predicate():  # noqa: ASYNC110  (the counts are all there is to wait on)
            await anyio.sleep(0.01)


def forged(kind: str, node: str, **fields: Any) -> bytes:
    body = {"v": VERSION, "ns": NS, "node": node, "run": "forged", "seq": 0, "k": kind}
    return json.dumps(body | fields, separators=(",", ":")).encode()


def floods(count: int) -> dict[str, list[bytes]]:
    return {
        "made-up nodes": [forged("online", f"made-up-{i}", id=f"u{i}") for i in range(count)],
        "a real node's name": [forged("online", "n1", id=f"v{i}") for i in range(count)],
        "groups": [forged("join", "n1", id="alice", group=f"g{i}") for i in range(count)],
        "hellos": [forged("hello", f"made-up-{i}") for i in range(count // 10)],
    }


async def one(name: str, frames: list[bytes]) -> dict[str, Any]:
    hub = InMemoryHub()
    counting = Counting(hub)
    options: dict[str, Any] = {"namespace": NS, "heartbeat_interval": 0.5, "node_ttl": 30.0}
    n1 = ConnectionManager(backplane=Backplane(hub, node_id="n1", **options))
    backplane = Backplane(counting, node_id="n2", **options)
    n2 = ConnectionManager(backplane=backplane)
    async with n1, n2:
        await poll(lambda: backplane.view.nodes() >= {"n1"})
        await anyio.sleep(0.2)
        gc.collect()
        before, _ = tracemalloc.get_traced_memory()
        sessions = counting.sessions
        stats = backplane.stats
        for start in range(0, len(frames), CHUNK):
            chunk = frames[start : start + CHUNK]
            goal = stats["received"] + stats["dropped"] + len(chunk)
            async with hub.session() as session:
                for frame in chunk:
                    await session.publish(frame)
            await poll(lambda: stats["received"] + stats["dropped"] >= goal)  # noqa: B023
        await anyio.sleep(0.3)  # the reloads after the hellos
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
        row = {
            "flood": name,
            "messages": len(frames),
            "growth (MB)": round((after - before) / 1e6, 2),
            "view nodes": len(backplane.view.nodes()),
            "view identifiers": len(backplane.view.identifiers()),
            "groups seen": len(backplane.view.groups_of("alice")),
            "origins followed": len(backplane._link._receipts),
            "store sessions": counting.sessions - sessions,
        }
        # What a real node's record does not hold lasts until it is loaded again.
        if hasattr(backplane, "refresh_after"):
            backplane.refresh_after = 0.0
            await anyio.sleep(1.0)
            gc.collect()
            row["after a refresh (MB)"] = round(
                (tracemalloc.get_traced_memory()[0] - before) / 1e6, 2
            )
        return row


async def main(count: int, smoke: bool = False) -> None:
    tracemalloc.start()
    rows = [await one(name, frames) for name, frames in floods(count).items()]
    if smoke:
        sys.stderr.write(f"smoke: backplane_flood ran {len(rows)} floods of {count}\n")
        return
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(str(value) for value in row.values()) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--smoke", action="store_true", help="a few hundred of each, no table")
    args = parser.parse_args()
    anyio.run(main, 500 if args.smoke else args.count, args.smoke)
