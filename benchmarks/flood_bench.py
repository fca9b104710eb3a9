"""One flooding client beside quiet ones: what the flood costs the quiet clients' round trip.

    python benchmarks/flood_bench.py [--quiet 100] [--seconds 4] [--variants asyncio,trio]
                                     [--policies none,wait,drop,close] [--smoke] [--no-write]

For each server variant (``_flood_server.py``: websockets on asyncio or on trio, every socket
held through ``manager.session``) and rate-limit policy (``none``: ``ConnectionManager()``;
``wait``/``drop``/``close``: ``RateLimitPolicy(messages_per_second=50, action=...)``):

1. ``--quiet`` clients (websockets on asyncio, in this process) each send a probe every
   100 ms; the server echoes it. The round trips of ``--seconds`` of this are the baseline.
2. ``_flood_client.py`` (its own process) floods one more socket with one-byte messages as
   fast as TCP takes them, reconnecting when cut off. After half a second the quiet clients
   are measured again for ``--seconds``, and the flood stops.

The figure is the quiet clients' p99 round trip with the flood over without it, each
server's own two phases in one run (a ratio, so the machine's speed cancels out). A probe
still unanswered when its phase ends counts with the time it had waited so far (a lower
bound): a starved server must not look fast by answering nothing. Results go to
``results/flood.md`` and ``results/flood.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio
from websockets.asyncio.client import connect

from _harness import cli
from _harness.results import table

HERE = Path(__file__).resolve().parent
PROBE_EVERY = 0.1
#: The limit ``_flood_server.py`` sets (messages per second), for the report.
RATE = 50.0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class Prober:
    """The quiet clients: probes out every 100 ms each, round trips recorded by phase."""

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.all_connected = anyio.Event()
        self.phase = ""
        self.rtts: dict[str, list[float]] = {}
        self.pending: dict[str, tuple[str, float]] = {}  # probe -> (phase, sent at)
        self.running = True
        self.connected = 0

    async def client(self, port: int, index: int) -> None:
        async with (
            connect(
                f"ws://127.0.0.1:{port}/ws?id=quiet{index}",
                compression=None,
                ping_interval=None,
                max_queue=None,
                open_timeout=30,
            ) as ws,
            anyio.create_task_group() as tasks,
        ):
            self.connected += 1
            if self.connected == self.clients:
                self.all_connected.set()

            async def read() -> None:
                async for message in ws:
                    entry = self.pending.pop(str(message), None)
                    if entry is not None:
                        phase, sent = entry
                        self.rtts.setdefault(phase, []).append(time.perf_counter() - sent)

            tasks.start_soon(read)
            serial = 0
            await anyio.sleep(PROBE_EVERY * (index % 10) / 10)  # spread them out
            while self.running:
                if self.phase:
                    serial += 1
                    probe = f"p{index}:{serial}"
                    self.pending[probe] = (self.phase, time.perf_counter())
                    await ws.send(probe)
                await anyio.sleep(PROBE_EVERY)
            tasks.cancel_scope.cancel()

    async def measure(self, phase: str, seconds: float) -> None:
        self.phase = phase
        await anyio.sleep(seconds)
        self.phase = ""
        await anyio.sleep(0.5)  # answers on their way
        now = time.perf_counter()
        for probe, (when, sent) in list(self.pending.items()):
            if when == phase:  # never answered: what it waited so far, at least
                self.rtts.setdefault(phase, []).append(now - sent)
                del self.pending[probe]


def start_flooder(port: int, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE / "_flood_client.py"), str(port), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )


def start_server(variant: str, policy: str) -> tuple[subprocess.Popen[str], int]:
    server = subprocess.Popen(
        [sys.executable, str(HERE / "_flood_server.py"), variant, policy],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    line = server.stdout.readline().split()
    if line[:1] != ["port"]:
        server.kill()
        raise RuntimeError(f"the server did not start: {line}")
    return server, int(line[1])


def server_stats(server: subprocess.Popen[str]) -> dict[str, Any]:
    assert server.stdin is not None
    assert server.stdout is not None
    server.stdin.write("stats\n")
    server.stdin.flush()
    line = server.stdout.readline()
    result: dict[str, Any] = json.loads(line.split(" ", 1)[1])
    return result


async def run_case(variant: str, policy: str, quiet: int, seconds: float) -> dict[str, Any]:
    server, port = start_server(variant, policy)
    prober = Prober(quiet)
    try:
        async with anyio.create_task_group() as tasks:
            for index in range(quiet):
                tasks.start_soon(prober.client, port, index)
            with anyio.fail_after(30):
                await prober.all_connected.wait()
            await prober.measure("quiet", seconds)
            before = await anyio.to_thread.run_sync(server_stats, server)
            flooder = await anyio.to_thread.run_sync(start_flooder, port, seconds + 0.5)
            await anyio.sleep(0.5)
            await prober.measure("flood", seconds)
            out, _ = await anyio.to_thread.run_sync(lambda: flooder.communicate(timeout=30))
            after = await anyio.to_thread.run_sync(server_stats, server)
            prober.running = False
            tasks.cancel_scope.cancel()
    finally:
        assert server.stdin is not None
        try:
            server.stdin.write("quit\n")
            server.stdin.flush()
            server.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            server.kill()
    sent = int(out.split()[1])
    connects = int(out.split()[3])
    quiet_rtt = prober.rtts.get("quiet", [])
    flood_rtt = prober.rtts.get("flood", [])
    drops = after["inbound_drops"].get("rate limit", 0) - before["inbound_drops"].get(
        "rate limit", 0
    )
    return {
        "variant": variant,
        "policy": policy,
        "quiet_clients": quiet,
        "probes": [len(quiet_rtt), len(flood_rtt)],
        "p50_ms": [1000 * percentile(quiet_rtt, 0.5), 1000 * percentile(flood_rtt, 0.5)],
        "p99_ms": [1000 * percentile(quiet_rtt, 0.99), 1000 * percentile(flood_rtt, 0.99)],
        "p99_ratio": percentile(flood_rtt, 0.99) / percentile(quiet_rtt, 0.99),
        "flood_frames_written": sent,
        "flood_connects": connects,
        "server_received": after["received"] - before["received"],
        "server_events": after["events"] - before["events"],
        "rate_limit_drops": drops,
        "server_cpu_s": after["cpu"] - before["cpu"],
        "window_s": seconds + 0.5,
    }


def render_cases(results: list[dict[str, Any]]) -> str:
    rows = [
        [
            r["variant"],
            r["policy"],
            f"{r['p99_ms'][0]:.2f}",
            f"{r['p99_ms'][1]:.2f}",
            f"**{r['p99_ratio']:.1f}x**",
            f"{r['p50_ms'][0]:.2f} / {r['p50_ms'][1]:.2f}",
            f"{r['server_received']:,}",
            f"{r['rate_limit_drops']:,}",
            f"{r['server_events']:,}",
            r["flood_connects"],
            f"{r['server_cpu_s'] / r['window_s']:.2f}",
        ]
        for r in results
    ]
    return table(
        [
            "server",
            "rate limit",
            "p99 quiet (ms)",
            "p99 flooded (ms)",
            "p99 ratio",
            "p50 quiet / flooded (ms)",
            "messages read in the flood",
            "dropped (rate limit)",
            "reached the application",
            "flooder connects",
            "server CPU s/s",
        ],
        rows,
    )


@dataclass(frozen=True)
class Config:
    quiet: int
    seconds: float
    variants: tuple[str, ...]
    policies: tuple[str, ...]


SMOKE = Config(quiet=5, seconds=0.5, variants=("asyncio", "trio"), policies=("wait",))


async def measure_all(config: Config) -> dict[str, Any]:
    cases = []
    for variant in config.variants:
        for policy in config.policies:
            cases.append(await run_case(variant, policy, config.quiet, config.seconds))
    return {"config": asdict(config), "cases": cases}


def measure(config: Config) -> dict[str, Any]:
    return anyio.run(measure_all, config)


def render(results: dict[str, Any]) -> str:
    config = results["config"]
    return (
        "The quiet clients' p99 round trip while one client floods, over the same without "
        f"the flood, per server and rate limit ({RATE:g} messages/s); {config['quiet']} quiet "
        f"clients, {config['seconds']:g} s per phase (see the script's docstring).\n\n"
        + render_cases(results["cases"])
    )


def main() -> None:
    parser = cli.parser(__doc__, quick=False)
    parser.add_argument("--quiet", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--variants", default="asyncio,trio")
    parser.add_argument("--policies", default="none,wait,drop,close")
    args = parser.parse_args()
    config = (
        SMOKE
        if args.smoke
        else Config(
            quiet=args.quiet,
            seconds=args.seconds,
            variants=tuple(args.variants.split(",")),
            policies=tuple(args.policies.split(",")),
        )
    )
    cli.run(
        args,
        config,
        measure,
        render,
        name="flood",
        title="One flooder beside quiet clients",
        script="flood_bench.py",
    )


if __name__ == "__main__":
    main()
