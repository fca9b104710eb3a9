"""What an idle fleet costs the server under the default heartbeat, over real loopback sockets.

    python benchmarks/idle_bench.py [--quick | --smoke] [--clients N] [--variants asyncio,...]
        # writes benchmarks/results/idle.md and idle.json (--smoke: nothing)

A wsfleet server (``_idle_server.py``) in a process of its own holds N idle clients (10,000
by default), each socket in ``async with manager.session(ws, id)`` as applications write it,
under ``ConnectionManager(heartbeat=HeartbeatPolicy())``: a ping every 20 s, 20 s to answer
it, IDLE after 60 s without a message. The clients (``_idle_client.py``: websockets' asyncio
client, its own keepalive off) answer every ping and never send. Beside it, in the same run
and over the same window, the same server with ``heartbeat=None`` holds its own N clients:
the baseline; the heartbeat's own cost is the difference of the two servers' CPU. And, as a
peer, websockets without wsfleet pinging by its own keepalive at the same interval and
timeout (``--no-keepalive`` leaves it out; trio-websocket has none).

Variants: ``asyncio`` (websockets), ``trio`` (websockets' trio implementation) and
``trio-websocket`` (trio). For each one, the servers and their clients start, the clients of
the other servers connect, then those of the heartbeat server (last, so that all of its IDLE
transitions fall in the window), and then every server is watched over one window of four
ping intervals (80 s; it must hold at least ``idle_after`` + half an interval). Measured per
server: CPU seconds (user + system, of the process itself, so the other work on a shared
machine changes little) per second of wall time over the window, resident memory per
connection, the pings sent in the window and ``stats()`` at its end (``heartbeat_timeouts``
must be 0, and every connection IDLE under the heartbeat, CONNECTED without it), and how
many clients are still open. Beside that, the in-process estimate from ``manager_bench.py``
(``results/manager.json``): its CPU per ping with in-memory transports, at this N and
interval.

``--quick`` runs 500 clients per server under a short policy (ping every 2 s, timeout 2 s,
idle after 6 s) for an 8 s window, on asyncio and trio (websockets) unless ``--variants``
says otherwise, in well under a minute; the full run takes about eight minutes on 2 CPUs.
``--smoke``: 20 clients, every variant and server, a 0.3 s policy and a 1.2 s window.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import PYTHON, RESULTS, Child, Deadline, Failed, cli, table

SERVER = str(HERE / "_idle_server.py")
CLIENT = str(HERE / "_idle_client.py")

VARIANTS = {
    "asyncio": ("websockets (asyncio)", "asyncio"),
    "trio": ("websockets (trio)", "trio"),
    "trio-websocket": ("trio-websocket (trio)", "trio"),
}
#: The servers of one variant: wsfleet's heartbeat, no heartbeat (the baseline), and, where
#: the library has one, its own keepalive at the same interval and timeout without wsfleet.
SIDES = ("heartbeat", "off", "keepalive")
QUICK_VARIANTS = "asyncio,trio"
HAS_KEEPALIVE = ("asyncio", "trio")
#: The open-files limit here is 20,000 per process (soft raised to hard). A server holds one
#: socket per client plus a few of its own; a client process holds at most this many.
CLIENTS_PER_PROCESS = 10_000
MAX_CLIENTS = 19_000


@dataclass(frozen=True)
class Plan:
    clients: int
    ping_interval: float
    ping_timeout: float
    idle_after: float
    window: float
    sample_every: float
    quick: bool
    variants: tuple[str, ...]
    keepalive: bool
    #: a variant that would start after this many seconds is skipped, and said so
    budget_s: float = 240.0

    def policy(self, side: str) -> str:
        """The server's ``policy`` argument for one side."""
        if side == "off":
            return "off"
        if side == "keepalive":
            return f"library:{self.ping_interval:g},{self.ping_timeout:g}"
        if (self.ping_interval, self.ping_timeout, self.idle_after) == (20.0, 20.0, 60.0):
            return "default"
        return f"{self.ping_interval:g},{self.ping_timeout:g},{self.idle_after:g}"

    def sides(self, variant: str) -> tuple[str, ...]:
        if self.keepalive and variant in HAS_KEEPALIVE:
            return SIDES
        return SIDES[:2]


def chunks(n: int) -> list[int]:
    """n clients split over as few processes as keep each within CLIENTS_PER_PROCESS."""
    processes = max(1, math.ceil(n / CLIENTS_PER_PROCESS))
    return [n // processes + (1 if i < n % processes else 0) for i in range(processes)]


def sample(server: Child) -> dict[str, Any]:
    server.send("sample")
    result: dict[str, Any] = json.loads(server.expect("sample", timeout=30)[1])
    return result


def measure_variant(variant: str, plan: Plan) -> dict[str, Any]:
    """The servers of one variant with their clients, watched over the same window."""
    n = plan.clients
    sides = plan.sides(variant)
    servers: dict[str, Child] = {}
    clients: dict[str, list[Child]] = {side: [] for side in sides}
    try:
        for side in sides:
            servers[side] = Child(
                f"{variant} server ({side})", [PYTHON, SERVER, variant, plan.policy(side)]
            )
        ports = {side: int(servers[side].expect("port", timeout=30)[1]) for side in sides}
        base = {side: sample(servers[side]) for side in sides}
        for side in sides:  # every client process starts now; each connects in its phase
            for k in range(len(chunks(n))):
                clients[side].append(
                    Child(f"clients {side} {k}", [PYTHON, CLIENT, str(ports[side])])
                )
        connect_s: dict[str, float] = {}
        # The other servers' clients first, the heartbeat server's last and alone: its
        # connections go IDLE idle_after seconds after they registered, and all of that
        # must happen inside the window, which starts once every server holds its clients.
        for phase in ([s for s in sides if s != "heartbeat"], ["heartbeat"]):
            t0 = time.monotonic()
            for side in phase:
                for k, (child, count) in enumerate(zip(clients[side], chunks(n), strict=True)):
                    child.send(f"connect {count} {side[0]}{k}-")
            for side in phase:
                for child in clients[side]:
                    child.expect("connected", timeout=60 + n / 20)
                servers[side].send(f"wait {n} 60")
                ready = int(servers[side].expect("ready", timeout=70)[1])
                if ready < n:
                    raise Failed(f"{variant} ({side}): {ready} of {n} connections registered")
                connect_s[side] = time.monotonic() - t0
        timeline: list[dict[str, dict[str, Any]]] = [{s: sample(servers[s]) for s in sides}]
        end = timeline[0][sides[0]]["t"] + plan.window
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(plan.sample_every, left))
            timeline.append({side: sample(servers[side]) for side in sides})
        checks = {
            side: [json.loads(child_check(child)) for child in clients[side]] for side in sides
        }
    finally:
        for child in [c for side in sides for c in clients[side]] + list(servers.values()):
            child.kill()
    return {
        "connect_s": connect_s,
        "sides": {
            side: summarise(side, base[side], [point[side] for point in timeline], checks[side])
            for side in sides
        },
        "timeline": [
            {
                side: {key: point[side].get(key) for key in ("t", "cpu", "pings_sent", "states")}
                for side in sides
            }
            for point in timeline
        ],
        "samples": {"base": base, "start": timeline[0], "end": timeline[-1]},
    }


def child_check(child: Child) -> str:
    child.send("check")
    return child.expect("check", timeout=30)[1]


def summarise(
    side: str, base: dict[str, Any], points: list[dict[str, Any]], checks: list[dict[str, Any]]
) -> dict[str, Any]:
    start, end = points[0], points[-1]
    wall = end["t"] - start["t"]
    n = end["connections"]
    closed: dict[str, int] = {}
    for check in checks:
        for code, count in check["closed_by_code"].items():
            closed[code] = closed.get(code, 0) + count
    return {
        "side": side,
        "window_s": wall,
        "cpu_s": end["cpu"] - start["cpu"],
        "cpu_per_s": (end["cpu"] - start["cpu"]) / wall,
        "user_per_s": (end["user"] - start["user"]) / wall,
        "system_per_s": (end["system"] - start["system"]) / wall,
        # wsfleet counts its pings; websockets' keepalive does not say (None)
        "pings_in_window": (
            end["pings_sent"] - start["pings_sent"] if "pings_sent" in end else None
        ),
        "rss_base": base["rss"],
        "rss_per_connection_start": (start["rss"] - base["rss"]) / n if n else None,
        "rss_per_connection_end": (end["rss"] - base["rss"]) / n if n else None,
        "gc_collections_in_window": [
            b - a for a, b in zip(start["gc_collections"], end["gc_collections"], strict=True)
        ],
        "stats_end": {
            key: end.get(key)
            for key in (
                "connections",
                "states",
                "pings_sent",
                "heartbeat_timeouts",
                "sent_messages",
                "drops",
                "callback_errors",
            )
        },
        "clients_open": sum(check["open"] for check in checks),
        "clients_closed_by_code": closed,
    }


def in_process(backend: str, n: int, interval: float) -> dict[str, Any] | None:
    """manager_bench's CPU per ping (in-memory transports) scaled to n pings per interval."""
    try:
        stored = json.loads((RESULTS / "manager.json").read_text(encoding="utf-8"))
        per_ping = float(stored[backend]["heartbeat_100k"]["cpu_us_per_ping"])
        stamp = (RESULTS / "manager.md").read_text(encoding="utf-8").split(" UTC", 1)[0]
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return {
        "cpu_us_per_ping": per_ping,
        "cpu_per_s": per_ping * 1e-6 * n / interval,
        "measured": stamp.rsplit(", ", 1)[-1] + " UTC",
    }


# -- the report -----------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def verdicts(variant: str, result: dict[str, Any], n: int) -> list[str]:
    """What must hold in every run; each broken rule is said, none is hidden."""
    problems = []
    sides = result["sides"]
    hb, off = sides["heartbeat"], sides["off"]
    early = result["samples"]["start"]["heartbeat"]["states"].get("IDLE", 0)
    if early:
        problems.append(
            f"{early:,} connections were IDLE before the window started (connecting took "
            f"{result['connect_s']['heartbeat']:.0f} s): their IDLE transitions are not in it"
        )
    if hb["stats_end"]["heartbeat_timeouts"]:
        problems.append(f"{hb['stats_end']['heartbeat_timeouts']} heartbeat timeouts")
    if hb["stats_end"]["states"] != {"IDLE": n}:
        problems.append(f"states under the heartbeat: {hb['stats_end']['states']}")
    if off["stats_end"]["states"] != {"CONNECTED": n}:
        problems.append(f"states without it: {off['stats_end']['states']}")
    for side in sides.values():
        if side["clients_open"] != n:
            problems.append(
                f"{side['side']}: {side['clients_open']} of {n} clients open, closed by code "
                f"{side['clients_closed_by_code']}"
            )
        if side["stats_end"]["drops"]:
            problems.append(f"{side['side']}: drops {side['stats_end']['drops']}")
    if not hb["pings_in_window"]:
        problems.append("no ping in the window")
    return [f"{VARIANTS[variant][0]}: {p}" for p in problems]


def per_ping_us(cost: float, window: float, pings: float | None) -> float | None:
    return cost * window / pings * 1e6 if pings else None


def cpu_rows(results: dict[str, Any], meta: dict[str, Any]) -> list[tuple[object, ...]]:
    n = meta["clients"]
    interval = meta["policy"]["ping_interval"]
    rows: list[tuple[object, ...]] = []
    for variant, result in results["variants"].items():
        label = VARIANTS[variant][0]
        if "error" in result:
            rows.append((label, f"**failed**: {result['error']}", *["-"] * 7))
            continue
        hb, off = result["sides"]["heartbeat"], result["sides"]["off"]
        cost = hb["cpu_per_s"] - off["cpu_per_s"]
        pings = hb["pings_in_window"]
        keep = result["sides"].get("keepalive")
        peer = "-"
        if keep is not None:
            keep_cost = keep["cpu_per_s"] - off["cpu_per_s"]
            # websockets pings each connection once per interval and does not count them
            keep_pings = n * keep["window_s"] / interval
            keep_us = per_ping_us(keep_cost, keep["window_s"], keep_pings)
            ratio = cost / keep_cost if keep_cost > 0 else None
            peer = (
                f"{keep['cpu_per_s']:.4f} (≈ {fmt(keep_us, '.0f')} µs/ping); "
                f"wsfleet's cost ÷ its cost: {fmt(ratio, '.2f')}x"
            )
        estimate = result.get("in_process")
        rows.append(
            (
                label,
                f"{hb['cpu_per_s']:.4f} (system {hb['system_per_s']:.4f})",
                f"{off['cpu_per_s']:.4f}",
                f"{cost:+.4f} ({cost / n * 1e6:.1f} µs/s per connection)",
                fmt(hb["cpu_per_s"] / off["cpu_per_s"] if off["cpu_per_s"] else None, ".0f") + "x",
                f"{pings:,} ({pings / hb['window_s']:,.0f}/s)",
                fmt(per_ping_us(cost, hb["window_s"], pings), ".0f"),
                peer,
                "-"
                if estimate is None
                else f"{estimate['cpu_per_s']:.4f} ({estimate['cpu_us_per_ping']:.1f} µs/ping)",
            )
        )
    return rows


def memory_rows(results: dict[str, Any], meta: dict[str, Any]) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for variant, result in results["variants"].items():
        if "error" in result:
            continue
        sides = result["sides"]
        hb, off = sides["heartbeat"], sides["off"]
        rows.append(
            (
                VARIANTS[variant][0],
                " / ".join(
                    f"{sides[s]['rss_per_connection_end'] / 1024:.1f}" if s in sides else "-"
                    for s in SIDES
                ),
                f"{hb['stats_end']['pings_sent']:,}",
                f"{hb['stats_end']['heartbeat_timeouts']}",
                f"{states_text(hb)} / {states_text(off)}",
                " / ".join(f"{sides[s]['clients_open']:,}" if s in sides else "-" for s in SIDES),
                " / ".join(
                    str(sides[s]["gc_collections_in_window"][2]) if s in sides else "-"
                    for s in SIDES
                ),
            )
        )
    return rows


def build_report(results: dict[str, Any], meta: dict[str, Any]) -> str:
    n = meta["clients"]
    head = (
        f"## {n:,} idle clients per server: wsfleet's heartbeat "
        f"{policy_text(meta['policy'])}, none, and websockets' own keepalive\n\n"
        f"Window: {meta['window_s']:g} s, starting once every client of every server of the "
        "variant was connected and registered. CPU: the server process's own user + system "
        "seconds per second of wall time over the window. Cost: the heartbeat server minus "
        "the one without, same variant, same window. Per ping: that difference over the "
        "pings sent in the window (write the ping, read the pong, re-arm the deadline, and "
        "the IDLE transitions shared out). websockets' own keepalive: no wsfleet, a plain "
        "handler that reads, `serve(ping_interval=..., ping_timeout=...)` at the same "
        "interval and timeout; its pings are N per interval (it does not count them), and it "
        "tracks no idleness. In-process estimate: `manager_bench.py`'s CPU per ping with "
        "in-memory transports (results/manager.json, "
        f"{meta.get('manager_measured') or 'not found'}) times N pings per interval.\n\n"
    )
    body = head + table(
        [
            "variant",
            "server CPU s/s, wsfleet heartbeat",
            "no heartbeat",
            "the heartbeat's cost",
            "ratio",
            "pings in the window",
            "CPU µs per ping",
            "websockets' own keepalive, CPU s/s",
            "in-process estimate, CPU s/s",
        ],
        cpu_rows(results, meta),
    )
    body += "\n\n" + table(
        [
            "variant",
            "RSS KiB per connection: heartbeat / none / keepalive",
            "pings_sent at the end",
            "heartbeat_timeouts",
            "states at the end: heartbeat / none",
            "clients open: heartbeat / none / keepalive",
            "gen-2 collections in the window",
        ],
        memory_rows(results, meta),
    )
    problems = [
        f"{VARIANTS[variant][0]}: {result['error']}"
        for variant, result in results["variants"].items()
        if "error" in result
    ]
    for variant, result in results["variants"].items():
        if "error" not in result:
            problems += verdicts(variant, result, n)
    body += "\n\n" + timeline_section(results, meta)
    body += "\n" + checks_section(problems)
    body += "\n" + method_section(results, meta)
    return body


def policy_text(policy: dict[str, float]) -> str:
    return (
        f"(ping every {policy['ping_interval']:g} s, timeout {policy['ping_timeout']:g} s, "
        f"IDLE after {policy['idle_after']:g} s)"
    )


def states_text(side: dict[str, Any]) -> str:
    states = side["stats_end"]["states"] or {}
    return ", ".join(f"{count:,} {name}" for name, count in states.items()) or "none"


def timeline_section(results: dict[str, Any], meta: dict[str, Any]) -> str:
    """CPU per slice of the window: the ping rounds and the IDLE transitions show here."""
    measured = {k: r for k, r in results["variants"].items() if "error" not in r}
    if not measured:
        return ""
    headers = ["window s"]
    for variant, result in measured.items():
        label = VARIANTS[variant][0]
        names = " / ".join(
            {"heartbeat": "heartbeat", "off": "none", "keepalive": "keepalive"}[side]
            for side in result["sides"]
        )
        headers += [f"{label}: CPU s/s {names}", f"{label}: pings, IDLE"]
    length = min(len(r["timeline"]) for r in measured.values())
    first = next(iter(measured.values()))["timeline"]
    rows = []
    for i in range(1, length):
        t0 = first[0]["heartbeat"]["t"]
        row: list[object] = [
            f"{first[i - 1]['heartbeat']['t'] - t0:.0f}-{first[i]['heartbeat']['t'] - t0:.0f}"
        ]
        for result in measured.values():
            a, b = result["timeline"][i - 1], result["timeline"][i]
            rates = [
                (b[side]["cpu"] - a[side]["cpu"]) / (b[side]["t"] - a[side]["t"])
                for side in result["sides"]
            ]
            pings = b["heartbeat"]["pings_sent"] - a["heartbeat"]["pings_sent"]
            idle = b["heartbeat"]["states"].get("IDLE", 0)
            row += [" / ".join(f"{rate:.4f}" for rate in rates), f"{pings:,}, {idle:,}"]
        rows.append(row)
    return (
        f"### Over the window, in slices of {meta['sample_every_s']:g} s\n\n"
        "Pings: sent by the heartbeat server in the slice. IDLE: its connections in IDLE at "
        "the end of the slice.\n\n" + table(headers, rows) + "\n"
    )


def checks_section(problems: list[str]) -> str:
    if not problems:
        return (
            "### Checks\n\nEvery rule held: no heartbeat timeout, every connection of the "
            "heartbeat server IDLE at the end and every one of the server without it "
            "CONNECTED, every client of every server still open, no drop.\n"
        )
    lines = "\n".join(f"- **{p}**" for p in problems)
    return f"### Checks\n\nThese rules did **not** hold:\n\n{lines}\n"


def method_section(results: dict[str, Any], meta: dict[str, Any]) -> str:
    connect = ", ".join(
        f"{VARIANTS[k][0]} {r['connect_s']['heartbeat']:.0f} s (the others, before: "
        f"{max(v for side, v in r['connect_s'].items() if side != 'heartbeat'):.0f} s)"
        for k, r in results["variants"].items()
        if "connect_s" in r
    )
    load = meta["load_average"]
    return (
        "### How\n\n"
        "- Per variant, one server process per side (`_idle_server.py`): "
        "`ConnectionManager(heartbeat=HeartbeatPolicy(...))`, "
        "`ConnectionManager(heartbeat=None)`, and (websockets only) a plain handler under "
        "websockets' own keepalive. Under wsfleet every socket is held in "
        "`manager.session(ws, id)` with `async for` over it, and the library's keepalive is "
        "off, so every ping is wsfleet's. Each server has its own client process(es) "
        f"(`_idle_client.py`, websockets' asyncio client with `ping_interval=None`, at most "
        f"{CLIENTS_PER_PROCESS:,} per process), on 127.0.0.1. The clients answer pings and "
        "never send.\n"
        "- The clients of the servers without wsfleet's heartbeat connect first, then those "
        f"of the heartbeat server, alone; connecting them took: {connect or 'n/a'}. The "
        "window starts after that, so every connection of the heartbeat server is pinged, "
        "answers and goes IDLE inside it (the checks say if one went IDLE before).\n"
        "- The servers of a variant run side by side over the same window. The machine has 2 "
        "CPUs that other work shares (1-minute load average "
        f"{load['before']:.2f} before the run, {load['after']:.2f} after): the figures are "
        "each server process's CPU *time* (`time.process_time()`, user + system), not wall "
        "time, so contention moves them little. Memory: the server's resident set at the end "
        "of the window minus before the first connection, over N: the library's socket "
        "objects and wsfleet's per-connection state together.\n"
        f"- The whole run took {meta['elapsed_s']:.0f} s.\n"
    )


# -- main -----------------------------------------------------------------------------------


def measure(plan: Plan) -> dict[str, Any]:
    """Each variant's servers and clients in turn; ``meta`` says how."""
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    # Bounded: each variant is a fixed window plus connecting (bounded by the timeouts in
    # measure_variant); a variant that would start after this deadline is skipped.
    budget = Deadline(plan.budget_s)
    results: dict[str, Any] = {"variants": {}}
    interval = plan.ping_interval
    for variant in plan.variants:
        if budget.passed():
            results["variants"][variant] = {"error": "skipped: time budget spent"}
            continue
        print(f"[{time.monotonic() - started:6.1f} s] {variant}", file=sys.stderr, flush=True)
        try:
            result = measure_variant(variant, plan)
        except Failed as exc:
            results["variants"][variant] = {"error": str(exc)}
            print(f"  failed: {exc}", file=sys.stderr, flush=True)
            continue
        result["in_process"] = in_process(VARIANTS[variant][1], plan.clients, interval)
        results["variants"][variant] = result
    estimate = in_process("asyncio", plan.clients, interval)
    results["meta"] = {
        **asdict(plan),
        "policy": {
            "ping_interval": interval,
            "ping_timeout": plan.ping_timeout,
            "idle_after": plan.idle_after,
        },
        "window_s": plan.window,
        "sample_every_s": plan.sample_every,
        "manager_measured": None if estimate is None else estimate["measured"],
        "load_average": {"before": load_before, "after": os.getloadavg()[0]},
        "elapsed_s": time.monotonic() - started,
    }
    return results


def render(results: dict[str, Any]) -> str:
    return build_report(results, results["meta"])


SMOKE = Plan(
    clients=20,
    ping_interval=0.3,
    ping_timeout=0.3,
    idle_after=0.9,
    window=1.2,
    sample_every=0.4,
    quick=True,
    variants=tuple(VARIANTS),
    keepalive=True,
    budget_s=60.0,
)


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--clients", type=int, default=None, help="per server (10,000)")
    parser.add_argument(
        "--variants", default=None, help="comma-separated (all; --quick: asyncio,trio)"
    )
    parser.add_argument("--window", type=float, default=None, help="seconds (4 intervals)")
    parser.add_argument(
        "--no-keepalive", action="store_true", help="skip websockets' own keepalive (the peer)"
    )
    args = parser.parse_args()
    plan = SMOKE if args.smoke else plan_of(parser, args)
    cli.run(
        args,
        plan,
        measure,
        render,
        name="idle",
        title="An idle fleet under the heartbeat, over loopback",
        script="idle_bench.py",
    )


def plan_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Plan:
    quick = args.quick
    interval, timeout, idle = (2.0, 2.0, 6.0) if quick else (20.0, 20.0, 60.0)
    clients = args.clients if args.clients is not None else (500 if quick else 10_000)
    if not 1 <= clients <= MAX_CLIENTS:
        parser.error(
            f"--clients must be 1 to {MAX_CLIENTS:,}: one server process holds every one "
            "of them under an open-files limit of 20,000"
        )
    if args.variants is None:
        args.variants = QUICK_VARIANTS if quick else ",".join(VARIANTS)
    variants = tuple(v for v in args.variants.split(",") if v)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        parser.error(f"unknown variant(s): {', '.join(unknown) or '(none)'}; know {list(VARIANTS)}")
    window = args.window if args.window is not None else 4 * interval
    if window < idle + interval / 2:
        parser.error(
            f"--window must be at least {idle + interval / 2:g} s: idle_after ({idle:g} s) "
            "and half a ping interval, so every connection goes IDLE inside it"
        )
    return Plan(
        clients=clients,
        ping_interval=interval,
        ping_timeout=timeout,
        idle_after=idle,
        window=window,
        sample_every=1.0 if quick else 5.0,
        quick=quick,
        variants=variants,
        keepalive=not args.no_keepalive,
        budget_s=(25 if quick else 240) * len(variants),
    )


if __name__ == "__main__":
    main()
