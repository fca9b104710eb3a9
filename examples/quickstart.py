"""A small fleet in memory: register, group, fan out, stall a client, watch the states.

    python examples/quickstart.py [--backend asyncio|trio]

Runs on in-memory transports (wsfleet.testing.MemoryTransport), so it needs no network; the
adapters for real WebSocket servers plug the same manager into trio-websocket, websockets
and ASGI. Every state change is printed as the manager's callbacks see it, then the stats.
"""

from __future__ import annotations

import argparse
import logging

import anyio

from wsfleet import (
    ConnectionManager,
    ConnectionState,
    HeartbeatPolicy,
    OverflowPolicy,
    StateChange,
)
from wsfleet.testing import MemoryTransport


async def main() -> None:
    heartbeat = HeartbeatPolicy(ping_interval=0.2, ping_timeout=0.2, idle_after=0.5)
    overflow = OverflowPolicy(max_messages=50, action="disconnect")
    async with ConnectionManager(heartbeat=heartbeat, overflow=overflow) as manager:

        @manager.on_state_change
        def show(change: StateChange) -> None:
            who = change.connection.identifier  # type: ignore[attr-defined]
            old = change.old.name if change.old else "new"
            print(f"  {who:6} {old:>12} -> {change.new.name:<12} {change.reason}")

        print("registering alice (two tabs), bob, carol, and a client that will stop reading")
        alice_1, alice_2 = MemoryTransport("alice-1"), MemoryTransport("alice-2")
        bob, carol = MemoryTransport("bob"), MemoryTransport("carol", auto_pong=False)
        slow = MemoryTransport("slow")
        manager.register(alice_1, "alice")
        manager.register(alice_2, "alice")
        manager.register(bob, "bob")
        manager.register(carol, "carol")
        manager.register(slow, "slow")
        manager.add_to_group("alice", "room:lobby")
        manager.add_to_group("bob", "room:lobby")
        await anyio.sleep(0.01)

        print("fan-out")
        print("  broadcast ->", await manager.broadcast("hello everyone"), "connections")
        print("  to alice  ->", await manager.send_to_one("alice", "hi alice"), "connections")
        print(
            "  to lobby  ->", await manager.send_to_group("room:lobby", "lobby news"), "connections"
        )
        await anyio.sleep(0.01)
        print("  alice-1 received", alice_1.received)

        print("the slow client stops reading; 200 messages go out")
        slow.stall()
        for i in range(200):
            await manager.broadcast(f"tick {i}")
        await anyio.sleep(0.05)
        print(
            f"  bob received {len(bob.received)} messages, slow was closed with {slow.close_code}"
        )

        print("carol never answers pings; everyone else goes idle when quiet")
        await anyio.sleep(0.7)
        manager.touch(bob)  # bob says something: back to CONNECTED
        await anyio.sleep(0.01)

        print("states:", {s.name: len(manager.connections_in_state(s)) for s in ConnectionState})
        stats = manager.stats()
        print("stats:", stats.as_dict())
    print("manager closed; bob's socket closed with", bob.close_code)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="  log: %(name)s %(message)s")
    anyio.run(main, backend=args.backend)


if __name__ == "__main__":
    cli()
