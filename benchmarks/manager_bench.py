"""ConnectionManager costs with in-memory transports, on asyncio and trio.

    python benchmarks/manager_bench.py [--quick]   # writes benchmarks/results/manager.md/.json

Measures:
* register + unregister, µs per pair, in a fleet of 1k / 10k / 100k connections (target: the
  cost at 100k <= 1.5x the cost at 1k);
* broadcast of one message to 100k connections: µs per delivery, from the call until every
  transport has the message (target <= 2 µs), and the part spent in the call (enqueueing);
* memory per idle connection at 100k, transports excluded (target <= 2 KB);
* 100k idle connections under a heartbeat policy: CPU seconds per second of wall time, and
  the CPU cost of one ping round (ping written, pong seen, deadline re-armed).
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import anyio.lowlevel

from _report import table, write
from wsfleet import ConnectionManager, HeartbeatPolicy
from wsfleet.testing import MemoryTransport

SIZES = (1_000, 10_000, 100_000)


async def churn(n: int, cycles: int) -> float:
    async with ConnectionManager() as manager:
        live = [MemoryTransport() for _ in range(n)]
        for i, t in enumerate(live):
            manager.register(t, f"user-{i}")
        fresh = [MemoryTransport() for _ in range(cycles)]
        rng = random.Random(7)
        victims = [rng.randrange(n) for _ in range(cycles)]
        t0 = time.perf_counter()
        for i in range(cycles):
            slot = victims[i]
            manager.unregister(live[slot])
            manager.register(fresh[i], f"user-{n + i}")
            live[slot] = fresh[i]
        elapsed = time.perf_counter() - t0
        manager.clear()
    return elapsed / cycles * 1e6


async def broadcast(n: int, rounds: int) -> dict[str, float]:
    async with ConnectionManager() as manager:
        transports = [MemoryTransport() for _ in range(n)]
        for i, t in enumerate(transports):
            manager.register(t, f"user-{i}")
        call = total = 0.0
        for r in range(rounds):
            target = manager.stats().sent_messages + n
            t0 = time.perf_counter()
            await manager.broadcast(f"message {r}")
            t1 = time.perf_counter()
            while manager.stats().sent_messages < target:
                await anyio.lowlevel.checkpoint()
            t2 = time.perf_counter()
            call += t1 - t0
            total += t2 - t0
        assert all(len(t.received) == rounds for t in transports)
        manager.clear()
    return {
        "call_us_per_delivery": call / rounds / n * 1e6,
        "us_per_delivery": total / rounds / n * 1e6,
    }


async def memory(n: int) -> float:
    async with ConnectionManager(heartbeat=HeartbeatPolicy()) as manager:
        transports = [MemoryTransport() for _ in range(n)]
        names = [f"user-{i}" for i in range(n)]
        await anyio.sleep(0.01)
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for t, name in zip(transports, names, strict=True):
            manager.register(t, name)
        await anyio.sleep(0.01)
        used = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        manager.clear()
    return used / n


async def heartbeat(n: int, interval: float, seconds: float) -> dict[str, float]:
    policy = HeartbeatPolicy(ping_interval=interval, ping_timeout=interval, idle_after=None)
    async with ConnectionManager(heartbeat=policy) as manager:
        transports = [MemoryTransport() for _ in range(n)]
        # Spread the registrations over one interval, as real arrivals are.
        for i, t in enumerate(transports):
            manager.register(t, f"user-{i}")
            if i % (n // 100) == 0:
                await anyio.sleep(interval / 100)
        await anyio.sleep(interval)  # steady state
        pings0 = manager.stats().pings_sent
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await anyio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        pings = manager.stats().pings_sent - pings0
        assert manager.stats().heartbeat_timeouts == 0
        manager.clear()
    per_ping = cpu / pings if pings else float("nan")
    return {
        "interval_s": interval,
        "cpu_per_wall_second": cpu / wall,
        "pings_per_second": pings / wall,
        "cpu_us_per_ping": per_ping * 1e6,
        "cpu_per_second_at_default_20s": per_ping * n / 20.0,
    }


async def run(quick: bool) -> dict[str, Any]:
    cycles = 5_000 if quick else 20_000
    sizes = SIZES
    return {
        "churn_us": {n: await churn(n, cycles) for n in sizes},
        "broadcast_100k": await broadcast(100_000, 3 if quick else 10),
        "bytes_per_idle_connection": await memory(100_000),
        "heartbeat_100k": await heartbeat(100_000, 2.0, 4.0 if quick else 10.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter windows")
    args = parser.parse_args()
    results = {
        backend: anyio.run(run, args.quick, backend=backend) for backend in ("asyncio", "trio")
    }
    rows = []
    for backend, r in results.items():
        churn_us = r["churn_us"]
        ratio = churn_us[100_000] / churn_us[1_000]
        hb = r["heartbeat_100k"]
        rows.append(
            (
                backend,
                " / ".join(f"{churn_us[n]:.1f}" for n in SIZES),
                f"{ratio:.2f}x",
                f"{r['broadcast_100k']['us_per_delivery']:.2f}",
                f"{r['broadcast_100k']['call_us_per_delivery']:.2f}",
                f"{r['bytes_per_idle_connection']:.0f}",
                f"{hb['cpu_per_wall_second']:.3f} ({hb['pings_per_second']:,.0f} pings/s)",
                f"{hb['cpu_us_per_ping']:.1f}",
                f"{hb['cpu_per_second_at_default_20s']:.3f}",
            )
        )
    body = table(
        [
            "loop",
            "register+unregister µs at 1k / 10k / 100k",
            "100k / 1k",
            "broadcast µs/delivery (100k, until delivered)",
            "of which in the call",
            "bytes per idle connection (100k)",
            "CPU s per s, 100k idle, 2 s pings",
            "CPU µs per ping",
            "CPU s per s at the default 20 s interval",
        ],
        rows,
    )
    body += (
        "\n\nTargets: register+unregister at 100k <= 1.5x at 1k; broadcast <= 2 µs per "
        "delivery; <= 2 KB per idle connection (transport excluded). The heartbeat row runs "
        "100k connections pinging every 2 s (10x the default rate) for a measurable load; "
        "the last column scales the measured cost per ping to the default 20 s interval.\n"
    )
    write(
        "manager",
        "ConnectionManager costs (in-memory transports)",
        "python benchmarks/manager_bench.py" + (" --quick" if args.quick else ""),
        body,
        results,
    )


if __name__ == "__main__":
    main()
