"""Cost of the state-machine part of a connection at 1k, 10k and 100k connections.

    python benchmarks/fsm_bench.py [--smoke]  # writes benchmarks/results/fsm.md and fsm.json

For each fleet size it measures: bytes per connection (tracemalloc, the lifecycle and its
place in a registry dict), microseconds to create one (object + first state), microseconds
per state change (CONNECTED <-> IDLE on connections picked at random across the fleet), and
microseconds to drop one. It also measures, at small sizes only, the two ways ``transitions``
is usually used, to show why wsfleet does neither.
Targets: <= 1 KB per connection; >= 50,000 changes per second; per-operation cost at 100k
<= 1.5 x at 1k.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transitions import Machine

from _harness import cli, table
from wsfleet.fsm import ConnectionState, FleetMachine, Lifecycle

C = ConnectionState.CONNECTED
I = ConnectionState.IDLE  # noqa: E741
SIZES = (1_000, 10_000, 100_000)


@dataclass(frozen=True)
class Config:
    sizes: tuple[int, ...] = SIZES
    #: state changes, and arrivals + departures, timed at each size
    changes: int = 200_000
    churn: int = 50_000
    #: the usual ``transitions`` patterns: (a Machine per connection, add_model) sizes
    per_connection: int = 1_000
    shared: tuple[int, ...] = (1_000, 10_000)


FULL = Config()
SMOKE = Config(sizes=(100, 1_000), changes=2_000, churn=500, per_connection=100, shared=(100,))


def at_size(n: int, changes: int = FULL.changes, churn_count: int = FULL.churn) -> dict[str, float]:
    machine = FleetMachine()
    # Memory first, under tracemalloc; then timings on a fresh fleet, without its overhead.
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    traced: dict[int, Lifecycle] = {}
    for key in range(n):
        model = Lifecycle()
        machine.start(model)
        traced[key] = model
    mem = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del traced
    gc.collect()

    fleet: dict[int, Lifecycle] = {}
    t0 = time.perf_counter()
    for key in range(n):
        model = Lifecycle()
        machine.start(model)
        fleet[key] = model
    create = time.perf_counter() - t0

    rng = random.Random(1)
    picks = [fleet[rng.randrange(n)] for _ in range(changes)]
    request = machine.request
    t0 = time.perf_counter()
    for model in picks:
        request(model, I if model.state is C else C)
    change = time.perf_counter() - t0

    # Churn at a steady fleet size: one connection arrives and a random one leaves.
    live = list(fleet)
    victims = [rng.randrange(n) for _ in range(churn_count)]
    t0 = time.perf_counter()
    for i, slot in enumerate(victims):
        model = Lifecycle()
        machine.start(model)
        key = n + i
        fleet[key] = model
        del fleet[live[slot]]
        live[slot] = key
    churn = time.perf_counter() - t0

    keys = list(fleet)
    rng.shuffle(keys)
    t0 = time.perf_counter()
    for key in keys:
        del fleet[key]
    drop = time.perf_counter() - t0
    return {
        "connections": n,
        "bytes_per_connection": mem / n,
        "create_us": create / n * 1e6,
        "change_us": change / changes * 1e6,
        "changes_per_second": changes / change,
        "churn_us": churn / churn_count * 1e6,
        "drop_us": drop / n * 1e6,
    }


def naive(n: int, shared: bool) -> dict[str, float]:
    """The usual ``transitions`` patterns: a Machine per model, or add_model to one."""

    class Model:
        pass

    states = list(ConnectionState)
    edges = [{"trigger": "go_idle", "source": C, "dest": I}]
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    one = Machine(model=None, states=states, transitions=edges, initial=C, auto_transitions=False)
    models = []
    t0 = time.perf_counter()
    for _ in range(n):
        model = Model()
        if shared:
            one.add_model(model)
        else:
            Machine(
                model=model, states=states, transitions=edges, initial=C, auto_transitions=False
            )
        models.append(model)
    create = time.perf_counter() - t0
    mem = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    t0 = time.perf_counter()
    if shared:
        for model in models[-min(n, 2_000) :]:  # the latest: the scan runs the whole list
            one.remove_model(model)
    drop = (time.perf_counter() - t0) / min(n, 2_000) if shared else float("nan")
    return {
        "connections": n,
        "bytes_per_connection": mem / n,
        "create_us": create / n * 1e6,
        "drop_us": drop * 1e6,
    }


def cells(r: dict[str, Any]) -> tuple[str, ...]:
    """One row of the report: connections, bytes, create, change, changes/s, churn."""
    return (
        f"{r['connections']:,}",
        f"{r['bytes_per_connection']:.0f}",
        f"{r['create_us']:.2f}",
        f"{r['change_us']:.2f}",
        f"{r['changes_per_second']:,.0f}",
        f"{r['churn_us']:.2f}",
    )


def measure(config: Config) -> dict[str, Any]:
    results = [at_size(n, config.changes, config.churn) for n in config.sizes]
    ratio = {
        key: results[-1][key] / results[0][key]
        for key in ("create_us", "change_us", "churn_us", "drop_us")
    }
    baseline = [("Machine per connection", naive(config.per_connection, shared=False))] + [
        (f"add_model, {label(n)}", naive(n, shared=True)) for n in config.shared
    ]
    return {
        "wsfleet": results,
        "ratios_100k_over_1k": ratio,
        "baselines": dict(baseline),
        "config": asdict(config),
    }


def label(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def render(data: dict[str, Any]) -> str:
    results = data["wsfleet"]
    ratio = data["ratios_100k_over_1k"]
    big, small = label(results[-1]["connections"]), label(results[0]["connections"])
    rows = [(*cells(r), f"{r['drop_us']:.3f}") for r in results]
    body = table(
        ["connections", "bytes/conn", "create µs", "change µs", "changes/s", "churn µs", "drop µs"],
        rows,
    )
    body += (
        "\n\n*create*: a lifecycle object and its first state, stored in a registry dict. "
        "*change*: one CONNECTED <-> IDLE transition on a connection picked at random. "
        "*churn*: at a steady fleet size, one connection created and a random one dropped. "
        "*drop*: forgetting one connection (bulk, random order), a dictionary deletion."
    )
    worst = max(r["bytes_per_connection"] for r in results)
    slowest = min(r["changes_per_second"] for r in results)
    checks = [
        ("bytes per connection <= 1024", f"{worst:.0f}", worst <= 1024),
        ("state changes per second >= 50,000", f"{slowest:,.0f}", slowest >= 50_000),
    ] + [
        (f"{key.removesuffix('_us')} at {big} <= 1.5x at {small}", f"{value:.2f}x", value <= 1.5)
        for key, value in ratio.items()
    ]
    body += "\n\n## Targets\n\n" + table(
        ["target", "measured", "met"], [(name, v, "yes" if ok else "no") for name, v, ok in checks]
    )
    body += (
        "\n\nEvery operation is O(1): no list is scanned and nothing is registered with "
        "the `transitions` machine. Where a ratio grows with size for sub-microsecond "
        "operations on a random victim (churn, drop), the extra time is cache misses on "
        "cold objects (1k connections fit in the CPU cache, 100k do not), not work that "
        "grows with n.\n"
    )
    baseline = list(data["baselines"].items())
    body += "\n## The usual ways, for comparison\n\n" + table(
        ["pattern", "bytes/conn", "create µs", "remove_model µs"],
        [
            (
                name,
                f"{r['bytes_per_connection']:.0f}",
                f"{r['create_us']:.1f}",
                "n/a" if r["drop_us"] != r["drop_us"] else f"{r['drop_us']:.1f}",
            )
            for name, r in baseline
        ],
    )
    return body


def main() -> None:
    args = cli.parser(__doc__, quick=False).parse_args()
    cli.run(
        args,
        SMOKE if args.smoke else FULL,
        measure,
        render,
        name="fsm",
        title="State machine cost per connection",
        script="fsm_bench.py",
    )


if __name__ == "__main__":
    main()
