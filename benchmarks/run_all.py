"""Every benchmark in one run, wsfleet beside its peers, into one report with plots.

    pip install -e '.[bench]'
    python benchmarks/run_all.py [--quick]
        # writes benchmarks/results/REPORT.md, REPORT.json and plots/*.png
    python benchmarks/run_all.py --smoke
        # every benchmark's --smoke, and this report's sections at a tiny size; writes nothing

Runs, within one global deadline (``--quick``: 170 s, full: 28 min; a SIGALRM cuts off
whatever is still running, and the report is written with what was measured):

* the state machine (``fsm_bench.measure``) at 1k / 10k / 100k connections, beside the two
  usual ways of using ``transitions`` (a ``Machine`` per connection, ``add_model``);
* the manager (``manager_bench``): register + unregister and memory per connection at 1k /
  10k / 100k, broadcast to 100k in-memory transports, and (full mode) 100k idle connections
  under heartbeats; beside it what the peers keep per connection (a list, a set, a dict,
  python-socketio's room bookkeeping);
* fan-out over loopback (``fanout_bench.measure_group``): every wsfleet adapter and every
  peer (websockets' ``broadcast()``, a plain trio-websocket loop, a Starlette loop, the
  FastAPI-docs ConnectionManager, python-socketio's room emit, and the raw floor that encodes
  once and writes to every transport), deliveries/s and server CPU µs per delivery at
  several N, the server's resident memory per connection;
* the stalled client (``fanout_bench.stalled_scenario``) with every healthy client's
  per-message latency noted, for a CDF of control runs against runs with a stalled client;
* the Redis backplane (``backplane_bench.run_pair``), wsfleet beside bare coredis;
* the reconnect storm (``_storm``): 10,000 clients on a virtual clock, attempts per 100 ms
  for the default retry policy, jitter off and FULL jitter.

Group history (``history_bench.py``: cost per message of a history-keeping group, in memory
and in Redis, and recovery time for 1,000 missed messages) has its own report,
``results/history.md``; ``--smoke`` runs it with the others.

Progress goes to stderr. Nothing here overwrites the single benchmarks' own result files.

``--smoke`` (CI) proves that nothing here has rotted, in well under a minute: it runs every
benchmark script with ``--smoke`` (three at a time) and this report's own sections on a tiny
plan, renders everything, writes nothing, and fails if any of them fails.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import anyio

import _storm
import backplane_bench
import fanout_bench as fb
import fsm_bench
import manager_bench
from _harness import PYTHON, RESULTS, Failed, table

PLOTS = RESULTS / "plots"
DURATIONS = RESULTS / "run_all_durations.json"


@dataclass(frozen=True)
class Plan:
    """What one mode runs: every count and every window is bounded."""

    name: str
    budget_s: float
    fsm_sizes: tuple[int, ...]
    fsm_changes: int
    fsm_churn: int
    manager_sizes: tuple[int, ...]
    manager_cycles: int
    manager_backends: tuple[str, ...]
    broadcast_rounds: int
    heartbeat_s: float | None
    fanout_sizes: tuple[int, ...]
    fanout_m: int
    stall_variants: tuple[str, ...]
    stall_messages: int
    stall_rate: int
    stall_pairs: int
    backplane_modes: tuple[str, ...]
    backplane_backends: tuple[str, ...]
    storm_clients: int
    #: the fleet of the manager's broadcast and heartbeat
    manager_large: int = 100_000
    #: the fan-out variants measured (None: every group)
    fanout_keys: tuple[str, ...] | None = None
    stall_healthy: int = fb.STALL_HEALTHY
    #: connections of the usual ``transitions`` patterns
    fsm_baseline: int = 1_000


QUICK = Plan(
    name="quick",
    budget_s=170,
    fsm_sizes=(1_000, 10_000, 100_000),
    fsm_changes=50_000,
    fsm_churn=20_000,
    manager_sizes=(1_000, 10_000, 100_000),
    manager_cycles=2_000,
    manager_backends=("asyncio",),
    broadcast_rounds=2,
    heartbeat_s=None,
    fanout_sizes=(100, 1_000),
    fanout_m=40,
    stall_variants=(
        "ws-broadcast",
        "wsfleet-ws-asyncio",
        "wsfleet-trio-ws",
        "fastapi-docs",
        "socketio-room",
    ),
    stall_messages=500,
    stall_rate=200,
    stall_pairs=1,
    backplane_modes=("wsfleet", "coredis"),
    backplane_backends=("asyncio",),
    storm_clients=10_000,
)
FULL = Plan(
    name="full",
    budget_s=28 * 60,
    fsm_sizes=(1_000, 10_000, 100_000),
    fsm_changes=200_000,
    fsm_churn=50_000,
    manager_sizes=(1_000, 10_000, 100_000),
    manager_cycles=20_000,
    manager_backends=("asyncio", "trio"),
    broadcast_rounds=10,
    heartbeat_s=4.0,
    fanout_sizes=(100, 1_000, 5_000),
    fanout_m=100,
    stall_variants=tuple(v.key for v in fb.VARIANTS),
    stall_messages=500,
    stall_rate=200,
    stall_pairs=3,
    backplane_modes=backplane_bench.MODES,
    backplane_backends=("asyncio", "trio"),
    storm_clients=10_000,
)

#: ``--smoke``: the report's own code at a tiny size (each benchmark's cases are smoked by
#: its own script), within seconds.
SMOKE = Plan(
    name="smoke",
    budget_s=90,
    fsm_sizes=(100, 1_000),
    fsm_changes=1_000,
    fsm_churn=500,
    manager_sizes=(100, 1_000),
    manager_cycles=100,
    manager_backends=("asyncio", "trio"),
    broadcast_rounds=1,
    heartbeat_s=None,
    fanout_sizes=(40,),
    fanout_m=4,
    stall_variants=("wsfleet-ws-asyncio",),
    stall_messages=400,
    stall_rate=4_000,
    stall_pairs=1,
    backplane_modes=("wsfleet",),
    backplane_backends=("asyncio",),
    storm_clients=200,
    manager_large=1_000,
    fanout_keys=("raw-floor", "wsfleet-ws-asyncio"),
    stall_healthy=4,
    fsm_baseline=100,
)
#: Each benchmark's own smoke run, longest first (``--smoke`` runs SMOKE_JOBS at a time:
#: much of a smoke run is waiting on helper processes and windows, not computing).
SMOKE_SCRIPTS = (
    "fanout_bench.py",
    "backplane_bench.py",
    "compare.py",
    "idle_bench.py",
    "flood_bench.py",
    "backplane_flood.py",
    "manager_bench.py",
    "history_bench.py",
    "fsm_bench.py",
    "scale_bench.py",
)

#: Fan-out variants measured side by side, their rounds alternating (see fanout_bench).
FANOUT_GROUPS = (
    ("raw-floor", "ws-broadcast", "wsfleet-ws-asyncio"),
    ("trio-ws-loop", "wsfleet-trio-ws", "wsfleet-ws-trio"),
    ("starlette-loop", "fastapi-docs", "wsfleet-asgi"),
    ("socketio-room",),
)
WSFLEET = tuple(v.key for v in fb.VARIANTS if v.key.startswith("wsfleet"))
PEERS = tuple(v.key for v in fb.VARIANTS if not v.key.startswith("wsfleet"))


# -- time --------------------------------------------------------------------------------


class OutOfTime(BaseException):
    """The global deadline passed (raised by SIGALRM wherever the run is)."""


STARTED = time.monotonic()


def progress(text: str) -> None:
    sys.stderr.write(f"[{time.monotonic() - STARTED:6.1f} s] {text}\n")
    sys.stderr.flush()


def on_alarm(signum: int, frame: FrameType | None) -> None:
    raise OutOfTime


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise OutOfTime in whatever runs when ``seconds`` have passed."""
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- the sections ------------------------------------------------------------------------


def fsm_section(plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {"wsfleet": []}
    for n in plan.fsm_sizes:
        progress(f"state machine: {n:,} connections")
        out["wsfleet"].append(fsm_bench.at_size(n, plan.fsm_changes, plan.fsm_churn))
    progress("state machine: the usual transitions patterns")
    n = plan.fsm_baseline
    out["peers"] = {
        f"Machine per connection ({fsm_bench.label(n)})": fsm_bench.naive(n, shared=False),
        f"add_model to one Machine ({fsm_bench.label(n)})": fsm_bench.naive(n, shared=True),
    }
    return out


def peer_memory(n: int) -> dict[str, float]:
    """Bytes per connection the usual registries keep, the sockets themselves excluded
    (stand-in objects created before tracing), as wsfleet's figure excludes its transports."""
    sockets = [object() for _ in range(n)]
    names = [f"user-{i}" for i in range(n)]

    def traced(fill: Callable[[], object]) -> float:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        kept = fill()
        used = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        del kept
        return used / n

    def docs_list() -> object:
        active: list[object] = []
        for ws in sockets:
            active.append(ws)
        return active

    def websockets_set() -> object:
        connections: set[object] = set()
        for ws in sockets:
            connections.add(ws)
        return connections

    def by_name() -> object:
        return dict(zip(names, sockets, strict=True))

    out = {
        "FastAPI-docs list": traced(docs_list),
        "websockets-docs set": traced(websockets_set),
        "dict name -> socket": traced(by_name),
    }
    with contextlib.suppress(ImportError):
        socketio_rooms(10)  # imports and first-use allocations, untraced
        out["python-socketio room bookkeeping"] = traced(lambda: socketio_rooms(n))
    return out


def socketio_rooms(n: int) -> object:
    """python-socketio's manager with n clients in namespace "/" and room "r" (its sids,
    maps and room sets; no Engine.IO sockets)."""
    import socketio

    async def fill() -> object:
        server = socketio.AsyncServer(async_mode="asgi")
        manager = server.manager
        for i in range(n):
            sid = await manager.pre_connect(f"e{i}", "/")
            await manager.connect(sid, "/")
            await manager.enter_room(sid, "/", "r")
        return server

    return anyio.run(fill, backend="asyncio")


def manager_section(plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for backend in plan.manager_backends:
        r: dict[str, Any] = {"churn_us": {}, "bytes_per_connection": {}}
        for n in plan.manager_sizes:
            progress(f"manager ({backend}): churn and memory at {n:,}")
            r["churn_us"][str(n)] = anyio.run(
                manager_bench.churn, n, plan.manager_cycles, backend=backend
            )
            r["bytes_per_connection"][str(n)] = anyio.run(manager_bench.memory, n, backend=backend)
        large = plan.manager_large
        progress(f"manager ({backend}): broadcast to {large:,}")
        r["broadcast_100k"] = anyio.run(
            manager_bench.broadcast, large, plan.broadcast_rounds, backend=backend
        )
        if plan.heartbeat_s is not None:
            progress(f"manager ({backend}): {large:,} idle connections, heartbeats")
            r["heartbeat_100k"] = anyio.run(
                manager_bench.heartbeat, large, 2.0, plan.heartbeat_s, backend=backend
            )
        out[backend] = r
    progress("manager: what the peers keep per connection")
    out["peers"] = {str(n): peer_memory(n) for n in plan.manager_sizes}
    return out


def fanout_section(plan: Plan, budget_end: float) -> dict[str, Any]:
    fb.M = plan.fanout_m
    out: dict[str, Any] = {}
    for group in FANOUT_GROUPS:
        present = []
        for key in group:
            if plan.fanout_keys is not None and key not in plan.fanout_keys:
                continue
            why = fb.missing(fb.BY_KEY[key])
            if why is not None:
                out[key] = {"missing": why}
            else:
                present.append(key)
        if not present:
            continue
        if time.monotonic() > budget_end:
            for key in present:
                out[key] = {"error": "skipped: the fan-out's share of the time was spent"}
            progress("fan-out: time spent, skipped " + ", ".join(present))
            continue
        progress("fan-out: " + ", ".join(fb.BY_KEY[k].label for k in present))
        quick = plan.name != "full"
        out.update(fb.measure_group(present, list(plan.fanout_sizes), quick))
    return out


def stall_section(plan: Plan, budget_end: float) -> dict[str, Any]:
    stall = {
        "healthy": plan.stall_healthy,
        "messages": plan.stall_messages,
        "rate": plan.stall_rate,
        "warmup": 100 if plan.name == "full" else 20,
        "pairs": plan.stall_pairs,
        "plain_controls": 1,
        "control_timeout": 60.0,
        "min_timeout": 5.0,
    }
    out: dict[str, Any] = {"plan": stall, "variants": {}}
    for key in plan.stall_variants:
        variant = fb.BY_KEY[key]
        why = fb.missing(variant)
        if why is not None:
            out["variants"][key] = {"missing": why}
            continue
        if time.monotonic() > budget_end:
            out["variants"][key] = {"error": "skipped: the scenario's share of the time was spent"}
            continue
        progress(f"stalled client: {variant.label}")
        try:
            out["variants"][key] = fb.stalled_scenario(variant, stall, latency=True)
        except Failed as exc:
            out["variants"][key] = {"error": str(exc)}
    return out


def backplane_section(plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    from _harness.redis import RedisServer

    timing = {"full": backplane_bench.FULL, "quick": backplane_bench.QUICK}.get(
        plan.name, backplane_bench.SMOKE
    ).timing
    with RedisServer() as redis, tempfile.TemporaryFile() as log:
        for mode in plan.backplane_modes:
            for backend in plan.backplane_backends:
                key = f"{mode}/{backend}"
                progress(f"backplane: {key}")
                try:
                    out[key] = backplane_bench.run_pair(redis.url, mode, backend, timing, log)
                except Exception as exc:
                    log.seek(0)
                    tail = log.read().decode(errors="replace").strip().splitlines()[-3:]
                    out[key] = {"error": f"{exc!r}; " + " | ".join(tail)}
    return out


STORM_POLICIES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("default policy", {}),
    ("jitter off", {"jitter": 0.0}),
    ("FULL jitter", {"jitter_mode": "full"}),
)


def storm_section(plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {"clients": plan.storm_clients, "policies": {}}
    for name, settings in STORM_POLICIES:
        progress(f"reconnect storm: {name}")
        make = _storm.seeded(**settings)
        result = _storm.storm(make, plan.storm_clients)
        buckets = result.buckets()
        uniform = result.uniform_rate(make(0).base_delay)
        out["policies"][name] = {
            "settings": settings,
            "attempts": len(result.attempts),
            "reconnected": result.reconnected,
            "gave_up": result.gave_up,
            "peak": result.peak,
            "uniform": uniform,
            "first_s": min(result.attempts, default=None),
            "last_s": max(result.attempts, default=None),
            "buckets": {str(k): v for k, v in sorted(buckets.items())},
        }
    return out


# -- plots -------------------------------------------------------------------------------


def plots(results: dict[str, Any]) -> dict[str, str]:
    """Draw what was measured; returns {name: relative path} of the PNGs written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PLOTS.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    xs: Any  # the points of one curve, however they were gathered
    ys: Any
    palette = plt.get_cmap("tab10")
    color = {key: palette(i % 10) for i, key in enumerate(fb.BY_KEY)}

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(PLOTS / f"{name}.png", dpi=110)
        plt.close(fig)
        written[name] = f"plots/{name}.png"

    fan = results.get("fanout", {}).get("data") or {}
    if fan:
        fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
        for ax, mode in zip(axes, ("single", "burst"), strict=True):
            for key in fb.BY_KEY:
                entry = fan.get(key, {})
                points = [
                    (int(n), cell[mode]["deliveries_per_s"])
                    for n, cell in entry.items()
                    if n.isdigit() and mode in cell and cell[mode]["deliveries_per_s"]
                ]
                if points:
                    xs, ys = zip(*sorted(points), strict=True)
                    style = "-o" if key.startswith("wsfleet") else "--s"
                    ax.plot(xs, ys, style, color=color[key], label=fb.BY_KEY[key].label)
                if mode == "burst" and key.startswith("wsfleet"):
                    batch = [
                        (int(n), cell["batch"]["deliveries_per_s"])
                        for n, cell in entry.items()
                        if n.isdigit() and "batch" in cell and cell["batch"]["deliveries_per_s"]
                    ]
                    if batch:
                        xs, ys = zip(*sorted(batch), strict=True)
                        ax.plot(
                            xs,
                            ys,
                            ":^",
                            color=color[key],
                            label=fb.BY_KEY[key].label + ", batch()",
                        )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("connections N")
            ax.set_title(f"fan-out, {mode} mode")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel("deliveries / s")
        handles: dict[str, Any] = {}
        for ax in axes:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(label, handle)
        fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=3, fontsize=8)
        fig.set_size_inches(13, 7)
        fig.tight_layout(rect=(0, 0.2, 1, 1))
        fig.savefig(PLOTS / "fanout_rate.png", dpi=110)
        plt.close(fig)
        written["fanout_rate"] = "plots/fanout_rate.png"

    mem = results.get("manager", {}).get("data") or {}
    rss = per_connection_rss(fan)
    if mem or rss:
        fig, axes = plt.subplots(1, 2, figsize=(13, 5))
        ax = axes[0]
        for backend in ("asyncio", "trio"):
            r = mem.get(backend)
            if r:
                xs = sorted(r["bytes_per_connection"], key=int)
                ax.plot(
                    [int(n) for n in xs],
                    [r["bytes_per_connection"][n] for n in xs],
                    "-o",
                    label=f"wsfleet ({backend})",
                )
        fsm = results.get("fsm", {}).get("data") or {}
        if fsm:
            xs = [r["connections"] for r in fsm["wsfleet"]]
            ax.plot(
                xs,
                [r["bytes_per_connection"] for r in fsm["wsfleet"]],
                "-.",
                label="wsfleet state machine only",
            )
        peers = mem.get("peers") or {}
        names = sorted({name for row in peers.values() for name in row})
        for name in names:
            xs = sorted(peers, key=int)
            ax.plot([int(n) for n in xs], [peers[n].get(name) for n in xs], "--s", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("connections N")
        ax.set_ylabel("bytes per connection (tracemalloc, sockets excluded)")
        ax.set_title("registry memory per connection")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        ax = axes[1]
        for key, points in rss.items():
            xs, ys = zip(*points, strict=True)
            style = "-o" if key.startswith("wsfleet") else "--s"
            ax.plot(xs, [y / 1024 for y in ys], style, color=color[key], label=fb.BY_KEY[key].label)
        ax.set_xscale("log")
        ax.set_xlabel("connections N")
        ax.set_ylabel("KiB per connection (server RSS growth / N)")
        ax.set_title("server process memory per live connection (fan-out runs)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, "memory_per_connection")

    stall = results.get("stalled", {}).get("data") or {}
    curves = latency_curves(stall)
    if curves:
        fig, ax = plt.subplots(figsize=(9, 5.5))
        for key, kind, xs, ys in curves:
            ax.plot(
                xs,
                ys,
                "-" if kind == "stalled" else "--",
                color=color[key],
                label=f"{fb.BY_KEY[key].label}: {kind}",
            )
        ax.set_xscale("log")
        ax.set_xlabel("delay from hand-over to the healthy client's receipt, ms")
        ax.set_ylabel("fraction of the healthy clients' messages")
        ax.set_ylim(0, 1.02)
        ax.set_title(
            "slow consumer: latency CDF, control runs (dashed) vs one stalled client (solid)"
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        save(fig, "slow_consumer_latency_cdf")

    storm = results.get("storm", {}).get("data") or {}
    if storm:
        fig, ax = plt.subplots(figsize=(10, 5))
        for name, entry in storm["policies"].items():
            buckets = {int(k): v for k, v in entry["buckets"].items()}
            top = max(buckets, default=0)
            xs = [b * _storm.BUCKET for b in range(top + 2)]
            ys = [buckets.get(b, 0) for b in range(top + 2)]
            ax.step(xs, ys, where="post", label=f"{name} (peak {entry['peak']:,})")
        uniform = next(iter(storm["policies"].values()))["uniform"]
        ax.axhline(2 * uniform, color="grey", linestyle=":", label="2x the uniform rate")
        ax.axvline(_storm.OUTAGE, color="black", linestyle="--", linewidth=0.8, label="server back")
        ax.set_yscale("symlog", linthresh=10)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("seconds since the server went away (virtual time)")
        ax.set_ylabel(f"reconnection attempts per {_storm.BUCKET * 1000:.0f} ms")
        ax.set_title(f"reconnect storm: {storm['clients']:,} clients, {_storm.OUTAGE:.0f} s outage")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "reconnect_storm")
    return written


def per_connection_rss(fan: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """Server RSS growth over its empty state, per healthy connection, at each N."""
    out: dict[str, list[tuple[int, float]]] = {}
    for key, entry in fan.items():
        base = entry.get("rss_base")
        if not base:
            continue
        points = [
            (int(n), (cell["rss"] - base) / int(n))
            for n, cell in entry.items()
            if n.isdigit() and cell.get("rss")
        ]
        if points:
            out[key] = sorted(points)
    return out


def latency_curves(stall: dict[str, Any]) -> list[tuple[str, str, list[float], list[float]]]:
    """(variant, control|stalled, delays ms, cumulative fraction) of the first run of each.

    The fraction is over every message owed to the healthy clients, so a run cut off with
    messages undelivered levels off below 1."""
    curves = []
    for key, entry in stall.get("variants", {}).items():
        for kind, runs in (
            ("control", entry.get("controls")),
            ("stalled", entry.get("stalled_runs")),
        ):
            run = (runs or [None])[-1]
            lat = (run or {}).get("latency")
            if not lat or not lat["count"]:
                continue
            owed = run["n"] * run["m"]
            share = lat["count"] / owed
            qs = lat["quantiles_ms"]
            steps = len(qs) - 1
            curves.append(
                (key, kind, [max(q, 1e-3) for q in qs], [share * i / steps for i in range(len(qs))])
            )
    return curves


# -- report ------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ",.2f", none: str = "n/a") -> str:
    return none if value is None else format(value, spec)


def times(a: float | None, b: float | None) -> str:
    """``a / b`` as a ratio, or "n/a"."""
    return "n/a" if a is None or not b else f"{a / b:.2f}x"


def failed(section: dict[str, Any]) -> str:
    if "error" in section:
        return f"**Not measured in this run**: {section['error']}\n"
    return ""


def report_fsm(section: dict[str, Any]) -> str:
    text = "## State machine\n\n" + failed(section)
    data = section.get("data")
    if not data:
        return text
    rows = [fsm_bench.cells(r) for r in data["wsfleet"]]
    text += (
        "wsfleet's shared `FleetMachine` with one `Lifecycle` per connection (`fsm_bench.measure`)"
        ":\n\n"
        + table(
            ["connections", "bytes/conn", "create µs", "change µs", "changes/s", "churn µs"], rows
        )
    )
    first = data["wsfleet"][0]
    peer_rows = [
        (
            name,
            f"{r['bytes_per_connection']:.0f}",
            f"{r['create_us']:.1f}",
            times(first["bytes_per_connection"], r["bytes_per_connection"]),
            times(first["create_us"], r["create_us"]),
        )
        for name, r in data["peers"].items()
    ]
    text += (
        "\n\nThe usual ways of using `transitions`, at 1k connections, and wsfleet (1k) ÷ each:"
        "\n\n"
        + table(
            [
                "pattern",
                "bytes/conn",
                "create µs",
                "wsfleet ÷ peer: bytes",
                "wsfleet ÷ peer: create",
            ],
            peer_rows,
        )
    )
    return text + "\n"


def report_manager(section: dict[str, Any], plots_: dict[str, str]) -> str:
    text = "## Manager: registry, memory per connection, broadcast\n\n" + failed(section)
    data = section.get("data")
    if not data:
        return text
    peers = data["peers"]
    rows = []
    for backend in ("asyncio", "trio"):
        r = data.get(backend)
        if not r:
            continue
        for n, used in r["bytes_per_connection"].items():
            row = peers.get(n, {})
            rows.append(
                (
                    backend,
                    f"{int(n):,}",
                    f"{r['churn_us'][n]:.2f}",
                    f"{used:.0f}",
                    ", ".join(f"{name} {v:.0f} ({times(used, v)})" for name, v in row.items()),
                )
            )
    text += (
        "In-memory transports (`manager_bench`): register + unregister µs per pair at a "
        "steady fleet size, and bytes per registered connection (tracemalloc, transports "
        "excluded). The peers keep far less because they keep nothing but the socket: no "
        "state, no queue, no groups, no identity index; the ratio is wsfleet ÷ peer.\n\n"
        + table(
            [
                "loop",
                "N",
                "register+unregister µs",
                "wsfleet bytes/conn",
                "peers: bytes/conn (wsfleet ÷ peer)",
            ],
            rows,
        )
        + "\n\n"
    )
    rows = []
    for backend in ("asyncio", "trio"):
        r = data.get(backend)
        if not r:
            continue
        b = r["broadcast_100k"]
        hb = r.get("heartbeat_100k")
        rows.append(
            (
                backend,
                f"{b['us_per_delivery']:.2f}",
                f"{b['call_us_per_delivery']:.2f}",
                "not run (--quick)" if hb is None else f"{hb['cpu_per_wall_second']:.3f}",
                "-" if hb is None else f"{hb['cpu_per_second_at_default_20s']:.3f}",
            )
        )
    text += table(
        [
            "loop",
            "broadcast to 100k: µs/delivery until delivered",
            "of which in the call",
            "100k idle, 2 s pings: CPU s per s",
            "scaled to the default 20 s",
        ],
        rows,
    )
    if "memory_per_connection" in plots_:
        text += (
            f"\n\n![memory per connection vs N]({plots_['memory_per_connection']})\n\n"
            "Left: registry memory per connection (tracemalloc). Right: the fan-out servers' "
            "resident memory growth per live connection, sockets and library objects "
            "included (`/proc/self/statm` after the warm-up round at each N, minus the "
            "empty server's); small N are noisy, since the allocator grows in steps."
        )
    return text + "\n"


MODE_NOTE = {
    "single": "each message written to every connection before the next",
    "burst": "the messages handed over back to back",
    "batch": "the burst inside `manager.batch()` (wsfleet only)",
}


def report_fanout(section: dict[str, Any], plan: Plan, plots_: dict[str, str]) -> str:
    text = "## Fan-out over loopback, wsfleet beside the peers\n\n" + failed(section)
    data = section.get("data")
    if not data:
        return text
    rows: list[tuple[object, ...]] = []
    for n in plan.fanout_sizes:
        for key in fb.BY_KEY:
            entry = data.get(key, {})
            why = entry.get("missing") or entry.get("error")
            cell = entry.get(str(n), {})
            if why or "single" not in cell:
                rows.append((f"{n:,}", fb.BY_KEY[key].label, "-", "-", "-", why or "not run"))
                continue
            values = []
            for mode in ("single", "burst", "batch"):
                s = cell.get(mode)
                values.append(
                    "-"
                    if s is None
                    else f"{fmt(s['deliveries_per_s'], ',.0f')} / {fmt(s['cpu_us_per_delivery'])}"
                    + ("" if s["complete"] else " (incomplete)")
                )
            m = cell["single"]["m"]
            rows.append((f"{n:,}", fb.BY_KEY[key].label, *values, f"M = {m}"))
    text += (
        f"N connections, M messages of {fb.SIZE} B to all; each cell: deliveries/s / server "
        "CPU µs per delivery. Modes: "
        + "; ".join(f"*{k}*: {v}" for k, v in MODE_NOTE.items())
        + ". Method as in `fanout_bench.py` (server and raw byte-counting clients in separate "
        "processes, pinned to one CPU each; no keepalive, no compression). The peers: "
        "websockets' `broadcast()` (asyncio server); the plain trio-websocket loop and the "
        "Starlette loop (hypercorn), awaiting each send; the FastAPI-docs `ConnectionManager` "
        "(the accepted sockets in a `list`, `broadcast` awaits `send_text` on each) "
        "under **uvicorn** (its `websockets-sansio` protocol), as FastAPI's docs run it; "
        'python-socketio\'s `AsyncServer(async_mode="asgi")` under uvicorn, every client in '
        'room `r`, `await sio.emit("m", text, room="r")` (its clients speak Engine.IO v4; '
        "an event is 10 bytes longer on the wire than the text, which the byte count allows "
        "for); and the raw floor, an asyncio protocol that answers the upgrade by hand, then "
        "encodes each message once and calls `transport.write(frame)` for every connection."
        "\n\n" + table(["N", "variant", "single", "burst", "batch", "note"], rows) + "\n"
    )
    if "fanout_rate" in plots_:
        text += f"\n![fan-out rate vs N]({plots_['fanout_rate']})\n"
    for n in plan.fanout_sizes:
        text += f"\n### wsfleet ÷ peer at N = {n:,}, same run\n\n"
        text += (
            "Each cell: server CPU µs per delivery, wsfleet ÷ peer (below 1: wsfleet spends "
            "less) / deliveries per second, wsfleet ÷ peer (above 1: wsfleet delivers faster). "
            "Same mode on both sides; *batch* is compared with the peer's burst.\n\n"
        )
        peers = [k for k in PEERS if str(n) in data.get(k, {})]
        rows = []
        for key in WSFLEET:
            cell = data.get(key, {}).get(str(n))
            if not cell:
                continue
            for mode in ("single", "burst", "batch"):
                mine = cell.get(mode)
                if mine is None:
                    continue
                out = []
                for peer in peers:
                    theirs = data[peer][str(n)].get("burst" if mode == "batch" else mode, {})
                    out.append(
                        times(mine["cpu_us_per_delivery"], theirs.get("cpu_us_per_delivery"))
                        + " / "
                        + times(mine["deliveries_per_s"], theirs.get("deliveries_per_s"))
                    )
                rows.append((f"{fb.BY_KEY[key].label}, {mode}", *out))
        text += table(["wsfleet", *[fb.BY_KEY[p].label for p in peers]], rows) + "\n"
    return text


def report_stall(section: dict[str, Any], plots_: dict[str, str]) -> str:
    text = "## Slow consumer: one stalled client among healthy ones\n\n" + failed(section)
    data = section.get("data")
    if not data:
        return text
    stall = data["plan"]
    rows: list[tuple[object, ...]] = []
    for key, entry in data["variants"].items():
        label = fb.BY_KEY[key].label
        why = entry.get("missing") or entry.get("error")
        if why:
            rows.append((label, "-", "-", "-", why))
            continue
        cells = []
        p99s = []
        for runs in (entry.get("controls"), entry.get("stalled_runs")):
            run = (runs or [None])[-1]
            lat = (run or {}).get("latency")
            if not lat or not lat["count"]:
                cells.append("-")
                continue
            qs = lat["quantiles_ms"]
            owed = run["n"] * run["m"]
            p99s.append(qs[round(0.99 * (len(qs) - 1))])
            cells.append(
                f"{qs[len(qs) // 2]:.1f} / {qs[round(0.99 * (len(qs) - 1))]:.1f} / {qs[-1]:.1f}"
                + ("" if lat["count"] >= owed else f" ({lat['count'] / owed:.0%} delivered)")
            )
        rows.append(
            (
                label,
                *cells,
                f"{p99s[1] - p99s[0]:+.1f}" if len(p99s) == 2 else "n/a",
                fb.stall_outcome(entry),
            )
        )
    text += (
        f"{stall['healthy']} healthy clients and one that handshakes and never reads; "
        f"{stall['messages']} messages of 16 KiB to all, paced at {stall['rate']} per second "
        f"({stall['rate'] * stall['healthy'] * 16 / 1024:.0f} MiB/s in all, well within what "
        "every variant streams unpaced), each stamped with "
        "`time.monotonic_ns()` when handed over; the healthy clients note each message's "
        "delay when its last byte arrives (`_fanout_client.py`'s latency mode). wsfleet evicts "
        "a client 1 MiB behind; the plain variants have no bound and are cut off at twice "
        "the control's time + 2 s (at least 5 s). Latency of the last control run and the "
        "last run with the stalled client.\n\n"
        + table(
            [
                "variant",
                "control: p50 / p99 / max ms",
                "with the stalled client: p50 / p99 / max ms",
                "p99: stalled - control, ms",
                "what happened",
            ],
            rows,
        )
        + "\n"
    )
    if "slow_consumer_latency_cdf" in plots_:
        text += f"\n![slow consumer latency CDF]({plots_['slow_consumer_latency_cdf']})\n"
    return text


def report_backplane(section: dict[str, Any]) -> str:
    text = "## Redis backplane: two processes on loopback\n\n" + failed(section)
    data = section.get("data")
    if not data:
        return text
    rows: list[tuple[object, ...]] = []
    for key, r in data.items():
        if "error" in r:
            rows.append((key, "-", "-", "-", r["error"]))
            continue
        lat = r["latency"]
        floor = data.get("coredis/" + key.split("/")[1], {})
        ratio = "-"
        if key.startswith("wsfleet") and "latency" in floor:
            ratio = (
                f"p50 {times(lat['p50_ms'], floor['latency']['p50_ms'])}, "
                f"p99 {times(lat['p99_ms'], floor['latency']['p99_ms'])}, burst messages/s "
                f"{times(r['burst']['messages_per_s'], floor['burst']['messages_per_s'])}"
            )
        rows.append(
            (
                key,
                f"{lat['p50_ms']:.2f} / {lat['p99_ms']:.2f} / {lat['max_ms']:.2f} "
                f"({lat['lost']} lost)",
                f"{r['burst']['messages_per_s']:,.0f}",
                f"{r['burst']['deliveries_per_s']:,.0f}",
                ratio,
            )
        )
    text += (
        "`backplane_bench.run_pair`: a sender node and a receiver node (1,000 in-memory "
        "sockets in one group) through one redis-server; the peer is the floor, bare "
        "coredis PUBLISH / subscribe with no manager and no fan-out (a delivery is a message "
        "there). python-socketio's Redis manager needs redis-py, which the `bench` extra "
        "does not install, so it is not compared.\n\n"
        + table(
            [
                "sender -> Redis -> receiver",
                f"latency ms p50 / p99 / max at {backplane_bench.LATENCY_RATE:,}/s",
                "burst messages/s",
                "burst deliveries/s",
                "wsfleet ÷ coredis floor",
            ],
            rows,
        )
    )
    return text + "\n"


def report_storm(section: dict[str, Any], plots_: dict[str, str]) -> str:
    text = "## Reconnect storm\n\n" + failed(section)
    data = section.get("data")
    if not data:
        return text
    rows = [
        (
            name,
            ", ".join(f"`{k}={v!r}`" for k, v in e["settings"].items()) or "defaults",
            f"{e['peak']:,}",
            f"{e['peak'] / e['uniform']:.2f}x",
            f"{e['attempts']:,}",
            f"{e['reconnected']:,}",
            f"{e['gave_up']:,}",
        )
        for name, e in data["policies"].items()
    ]
    text += (
        f"{data['clients']:,} clients lose their server at t = 0 for {_storm.OUTAGE:.0f} s "
        "(virtual time: the shared `FleetMachine`, a manual clock and the retry schedule, as "
        "in `tests/reliability/test_07_reconnect_storm.py`). Uniform rate: every client "
        "spreading its first attempt over `base_delay`.\n\n"
        + table(
            [
                "policy",
                "RetryPolicy settings",
                "peak attempts per 100 ms",
                "peak ÷ uniform rate",
                "attempts",
                "reconnected",
                "gave up",
            ],
            rows,
        )
        + "\n"
    )
    if "reconnect_storm" in plots_:
        text += f"\n![reconnect storm histogram]({plots_['reconnect_storm']})\n"
    return text


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()} {platform.machine()}, {cpu}, "
        f"{os.cpu_count()} CPUs"
    )


def durations_text(current: str) -> str:
    """Both modes' last measured durations (this run's mode and the other's, if recorded)."""
    with contextlib.suppress(OSError, ValueError):
        known = json.loads(DURATIONS.read_text(encoding="utf-8"))
        parts = []
        for name, flag, limit in (("quick", " --quick", 180), ("full", "", 1800)):
            entry = known.get(name)
            if entry:
                this = " (this run)" if name == current else ""
                parts.append(
                    f"`run_all.py{flag}`: {entry['seconds']:.0f} s on {entry['date']}{this} "
                    f"(limit {limit} s)"
                )
        return "; ".join(parts)
    return ""


def build_report(
    results: dict[str, Any], plan: Plan, plots_: dict[str, str], meta: dict[str, Any]
) -> str:
    command = "python benchmarks/run_all.py" + (" --quick" if plan.name == "quick" else "")
    head = (
        "# wsfleet benchmarks: one report\n\n"
        f"Command: `{command}`  \n"
        f"Machine: {machine()}; 1-minute load average {meta['load'][0]:.2f} before the run, "
        f"{meta['load'][1]:.2f} after  \n"
        f"Date: {meta['date']}  \n"
        f"Duration of this run: {meta['seconds']:.0f} s (deadline {plan.budget_s:.0f} s)"
        + (" — **cut off at the deadline**" if meta["cut_off"] else "")
        + "  \n"
        f"Measured durations: {durations_text(plan.name)}\n\n"
        "Every figure below was measured in this run, wsfleet and its peers alike; a ratio "
        "always divides two figures of the same run. Each single benchmark also has its own "
        "script and fuller report (`fsm_bench.py`, `manager_bench.py`, `fanout_bench.py`, "
        "`backplane_bench.py`); this one runs them with bounded counts and windows"
        + (
            " (`--quick`: fewer sizes and messages, one round per cell)"
            if plan.name == "quick"
            else ""
        )
        + ". Install the peers with `pip install -e '.[bench]'`.\n"
    )
    parts = [
        head,
        report_fsm(results["fsm"]),
        report_manager(results["manager"], plots_),
        report_fanout(results["fanout"], plan, plots_),
        report_stall(results["stalled"], plots_),
        report_backplane(results["backplane"]),
        report_storm(results["storm"], plots_),
    ]
    return "\n".join(parts)


# -- main ------------------------------------------------------------------------------------


def measure(plan: Plan, only: set[str] | None = None) -> dict[str, Any]:
    """Every section (or those in ``only``) within the plan's one deadline: ``meta`` and
    ``results``, a section each (``data`` or ``error``, and ``seconds``)."""
    started = time.monotonic()
    date = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    load_before = os.getloadavg()[0]
    end = started + plan.budget_s
    results: dict[str, Any] = {}
    cut_off = False

    def share(fraction: float) -> float:
        """A section's own deadline: ``fraction`` of what is left of the run's time."""
        now = time.monotonic()
        return now + fraction * (end - now)

    sections: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("storm", lambda: storm_section(plan)),
        ("fsm", lambda: fsm_section(plan)),
        ("manager", lambda: manager_section(plan)),
        ("backplane", lambda: backplane_section(plan)),
        ("fanout", lambda: fanout_section(plan, share(0.7))),
        ("stalled", lambda: stall_section(plan, share(0.9))),
    ]
    with deadline(plan.budget_s):
        for name, run in sections:
            if only and name not in only:
                results[name] = {"error": "not selected (--only)"}
                continue
            if cut_off:
                results[name] = {"error": "skipped: the run's deadline passed"}
                continue
            began = time.monotonic()
            try:
                results[name] = {"data": run()}
            except OutOfTime:
                cut_off = True
                results[name] = {"error": "cut off at the run's deadline"}
                progress(f"{name}: cut off at the deadline")
            except Exception as exc:
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                progress(f"{name} failed: {exc!r}")
            results[name]["seconds"] = time.monotonic() - began
    meta = {
        "plan": plan.__dict__,
        "date": date,
        "seconds": time.monotonic() - started,
        "cut_off": cut_off,
        "load": (load_before, os.getloadavg()[0]),
    }
    return {"meta": meta, "results": results}


def render(saved: dict[str, Any], drawn: dict[str, str] | None = None) -> str:
    """REPORT.md's text from what ``measure`` returned (and the plots drawn of it)."""
    meta = saved["meta"]
    return build_report(saved["results"], Plan(**meta["plan"]), drawn or {}, meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="under 3 minutes: fewer sizes")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every benchmark's --smoke and this report's sections, tiny; writes nothing",
    )
    parser.add_argument("--smoke-sections", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated sections to run (fsm,manager,fanout,stalled,backplane,storm)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: rebuild REPORT.md and the plots from REPORT.json",
    )
    args = parser.parse_args()
    if args.report_only:
        rebuild()
        return
    if args.smoke:
        smoke()
        return
    if args.smoke_sections:
        smoke_sections()
        return
    plan = QUICK if args.quick else FULL
    only = {s for s in args.only.split(",") if s}
    saved = measure(plan, only)
    meta = saved["meta"]
    RESULTS.mkdir(exist_ok=True)
    known: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        known = json.loads(DURATIONS.read_text(encoding="utf-8"))
    if not only:  # a partial run says nothing about how long a whole one takes
        known[plan.name] = {
            "seconds": meta["seconds"],
            "date": meta["date"],
            "cut_off": meta["cut_off"],
        }
        DURATIONS.write_text(json.dumps(known, indent=2) + "\n", encoding="utf-8")
    progress("plots")
    try:
        drawn = plots(saved["results"])
    except Exception as exc:  # the report is worth having without its pictures
        progress(f"plots failed: {exc!r}")
        drawn = {}
    (RESULTS / "REPORT.md").write_text(render(saved, drawn), encoding="utf-8")
    (RESULTS / "REPORT.json").write_text(
        json.dumps(saved, indent=1, default=str) + "\n", encoding="utf-8"
    )
    progress(f"wrote {RESULTS / 'REPORT.md'} in {meta['seconds']:.0f} s")


def smoke_sections() -> None:
    """This report's sections on the SMOKE plan, rendered, written nowhere; fails on any
    section's error."""
    saved = measure(SMOKE)
    render(saved)
    failures = [
        f"{name}: {section['error']}"
        for name, section in saved["results"].items()
        if "error" in section
    ]
    if failures:
        raise SystemExit("run_all sections failed: " + "; ".join(failures))


def smoke() -> None:
    """Every benchmark's ``--smoke`` and this report's sections, a few processes at a time."""
    jobs = [[PYTHON, str(HERE / script), "--smoke"] for script in SMOKE_SCRIPTS]
    jobs.insert(3, [PYTHON, str(HERE / "run_all.py"), "--smoke-sections"])
    pending = list(jobs)
    running: list[tuple[list[str], subprocess.Popen[bytes], float, Any]] = []
    failed_: list[str] = []
    while pending or running:
        while pending and len(running) < SMOKE_JOBS:
            argv = pending.pop(0)
            log = tempfile.TemporaryFile()  # noqa: SIM115 (closed when the job ends)
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            running.append((argv, proc, time.monotonic(), log))
        time.sleep(0.1)
        for job in list(running):
            argv, proc, began, log = job
            code = proc.poll()
            if code is None:
                if time.monotonic() - began > SMOKE_JOB_TIMEOUT_S:
                    proc.kill()
                    code = proc.wait()
                else:
                    continue
            running.remove(job)
            name = " ".join(Path(argv[1]).name if i == 1 else a for i, a in enumerate(argv[1:], 1))
            progress(
                f"{name}: {'ok' if code == 0 else f'FAILED ({code})'} in "
                f"{time.monotonic() - began:.1f} s"
            )
            if code != 0:
                log.seek(0)
                tail = log.read().decode(errors="replace").strip().splitlines()[-15:]
                sys.stderr.write("".join(f"    {line}\n" for line in tail))
                failed_.append(name)
            log.close()
    progress("smoke: " + ("all ran" if not failed_ else "failed: " + ", ".join(failed_)))
    if failed_:
        raise SystemExit(1)


def rebuild() -> None:
    """REPORT.md and the plots again, from the figures REPORT.json kept."""
    saved = json.loads((RESULTS / "REPORT.json").read_text(encoding="utf-8"))
    drawn = plots(saved["results"])
    (RESULTS / "REPORT.md").write_text(render(saved, drawn), encoding="utf-8")
    progress(f"rebuilt {RESULTS / 'REPORT.md'} from REPORT.json")


SMOKE_JOBS = 3
#: A smoke job that takes longer than this has hung: it is killed and fails.
SMOKE_JOB_TIMEOUT_S = 180.0


if __name__ == "__main__":
    main()
