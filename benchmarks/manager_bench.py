"""ConnectionManager costs with in-memory transports, on asyncio and trio.

    python benchmarks/manager_bench.py [--quick | --smoke]
        # writes benchmarks/results/manager.md and manager.json (--smoke: nothing)

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

import gc
import random
import sys
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import anyio.lowlevel

from _harness import cli, table
from wsfleet import ConnectionManager, HeartbeatPolicy
from wsfleet.testing import MemoryTransport

SIZES = (1_000, 10_000, 100_000)


@dataclass(frozen=True)
class Config:
    """Every count and window of one run. Broadcast, memory and heartbeat run a fleet of
    ``large`` connections (the results keep the keys ``broadcast_100k`` and
    ``heartbeat_100k`` whatever it is; ``config`` says)."""

    backends: tuple[str, ...] = ("asyncio", "trio")
    sizes: tuple[int, ...] = SIZES
    cycles: int = 20_000
    large: int = 100_000
    broadcast_rounds: int = 10
    heartbeat_interval: float = 2.0
    heartbeat_s: float | None = 10.0


FULL = Config()
QUICK = Config(cycles=5_000, broadcast_rounds=3, heartbeat_s=4.0)
SMOKE = Config(
    sizes=(100, 1_000),
    cycles=200,
    large=1_000,
    broadcast_rounds=1,
    heartbeat_interval=0.2,
    heartbeat_s=0.3,
)


async def churn(n: int, cycles: int) -> float:
    """register + unregister, µs of wall time per pair."""
    wall, _ = await churn_times(n, cycles)
    return wall


async def churn_times(n: int, cycles: int, *, heartbeat_off: bool = False) -> tuple[float, float]:
    """register + unregister, µs per pair: wall time, and this process's CPU time (which
    other work on a shared machine inflates less). ``heartbeat_off``: with
    ``heartbeat=None`` rather than the default heartbeat, whose deadlines each
    registration arms (compare.py: what the default costs, apart from the rest)."""
    options: dict[str, Any] = {"heartbeat": None} if heartbeat_off else {}
    async with ConnectionManager(**options) as manager:
        live = [MemoryTransport() for _ in range(n)]
        for i, t in enumerate(live):
            manager.register(t, f"user-{i}")
        fresh = [MemoryTransport() for _ in range(cycles)]
        rng = random.Random(7)
        victims = [rng.randrange(n) for _ in range(cycles)]
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(cycles):
            slot = victims[i]
            manager.unregister(live[slot])
            manager.register(fresh[i], f"user-{n + i}")
            live[slot] = fresh[i]
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        manager.clear()
    return elapsed / cycles * 1e6, cpu / cycles * 1e6


async def broadcast(n: int, rounds: int) -> dict[str, float]:
    async with ConnectionManager() as manager:
        transports = [MemoryTransport() for _ in range(n)]
        for i, t in enumerate(transports):
            manager.register(t, f"user-{i}")
        call = total = call_cpu = total_cpu = 0.0
        for r in range(rounds):
            target = manager.stats().sent_messages + n
            t0, c0 = time.perf_counter(), time.process_time()
            await manager.broadcast(f"message {r}")
            t1, c1 = time.perf_counter(), time.process_time()
            while manager.stats().sent_messages < target:
                await anyio.lowlevel.checkpoint()
            t2, c2 = time.perf_counter(), time.process_time()
            call += t1 - t0
            total += t2 - t0
            call_cpu += c1 - c0
            total_cpu += c2 - c0
        assert all(len(t.received) == rounds for t in transports)
        manager.clear()
    return {
        "call_us_per_delivery": call / rounds / n * 1e6,
        "us_per_delivery": total / rounds / n * 1e6,
        # the same in this process's CPU time
        "call_cpu_us_per_delivery": call_cpu / rounds / n * 1e6,
        "cpu_us_per_delivery": total_cpu / rounds / n * 1e6,
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
            if i % max(1, n // 100) == 0:
                await anyio.sleep(interval / 100)
        await anyio.sleep(interval)  # steady state
        pings0 = manager.stats().pings_sent
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await anyio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        pings = manager.stats().pings_sent - pings0
        # A loaded machine may delay a pong past its deadline; the figure says so.
        timeouts = manager.stats().heartbeat_timeouts
        manager.clear()
    per_ping = cpu / pings if pings else float("nan")
    return {
        "interval_s": interval,
        "cpu_per_wall_second": cpu / wall,
        "pings_per_second": pings / wall,
        "cpu_us_per_ping": per_ping * 1e6,
        "cpu_per_second_at_default_20s": per_ping * n / 20.0,
        "heartbeat_timeouts": timeouts,
    }


def label(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


async def on_one_loop(config: Config) -> dict[str, Any]:
    times = {str(n): await churn_times(n, config.cycles) for n in config.sizes}
    out: dict[str, Any] = {
        "churn_us": {n: wall for n, (wall, _) in times.items()},
        "churn_cpu_us": {n: cpu for n, (_, cpu) in times.items()},
        "churn_cpu_us_no_heartbeat": {
            str(n): (await churn_times(n, config.cycles, heartbeat_off=True))[1]
            for n in config.sizes[:1]
        },
        "broadcast_100k": await broadcast(config.large, config.broadcast_rounds),
        "bytes_per_idle_connection": await memory(config.large),
    }
    if config.heartbeat_s is not None:
        out["heartbeat_100k"] = await heartbeat(
            config.large, config.heartbeat_interval, config.heartbeat_s
        )
    return out


def measure(config: Config) -> dict[str, Any]:
    """Every figure on each event loop in turn."""
    results: dict[str, Any] = {"config": asdict(config)}
    for backend in config.backends:
        results[backend] = anyio.run(on_one_loop, config, backend=backend)
    return results


def render(results: dict[str, Any]) -> str:
    config = results["config"]
    sizes = [str(n) for n in config["sizes"]]
    large = label(config["large"])
    rows = []
    for backend in config["backends"]:
        r = results[backend]
        churn_us = r["churn_us"]
        ratio = churn_us[sizes[-1]] / churn_us[sizes[0]]
        hb = r.get("heartbeat_100k")
        late = hb.get("heartbeat_timeouts") if hb else None
        pings = "" if hb is None else f"{hb['pings_per_second']:,.0f} pings/s"
        pings += f", {late:,} timeouts" if late else ""
        rows.append(
            (
                backend,
                " / ".join(f"{churn_us[n]:.1f}" for n in sizes),
                f"{ratio:.2f}x",
                f"{r['broadcast_100k']['us_per_delivery']:.2f}",
                f"{r['broadcast_100k']['call_us_per_delivery']:.2f}",
                f"{r['bytes_per_idle_connection']:.0f}",
                "-" if hb is None else f"{hb['cpu_per_wall_second']:.3f} ({pings})",
                "-" if hb is None else f"{hb['cpu_us_per_ping']:.1f}",
                "-" if hb is None else f"{hb['cpu_per_second_at_default_20s']:.3f}",
            )
        )
    body = table(
        [
            "loop",
            "register+unregister µs at " + " / ".join(label(int(n)) for n in sizes),
            f"{label(int(sizes[-1]))} / {label(int(sizes[0]))}",
            f"broadcast µs/delivery ({large}, until delivered)",
            "of which in the call",
            f"bytes per idle connection ({large})",
            f"CPU s per s, {large} idle, {config['heartbeat_interval']:g} s pings",
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
    return body


def main() -> None:
    parser = cli.parser(__doc__)
    args = parser.parse_args()
    config = SMOKE if args.smoke else QUICK if args.quick else FULL
    cli.run(
        args,
        config,
        measure,
        render,
        name="manager",
        title="ConnectionManager costs (in-memory transports)",
        script="manager_bench.py",
    )


if __name__ == "__main__":
    main()
