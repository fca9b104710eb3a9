"""100,000 connections on one machine: K wsfleet nodes joined by one Redis, over loopback.

    python benchmarks/scale_bench.py [--quick | --smoke] [--clients N] [--servers K]
        # writes benchmarks/results/scale.md, scale.json and the plots scale_*.png beside them
    python benchmarks/scale_bench.py --report-only   # the report and plots again, from the json

The fleet: one ``redis-server`` (``wsfleet.testing.RedisServer``, the tests' launcher), K
server processes (``_scale_server.py``: websockets on asyncio, each a node with
``ConnectionManager(heartbeat=HeartbeatPolicy(), backplane=RedisBackplane(url))``, so the
default heartbeat pings every connection every 20 s), and client processes
(``_scale_client.py``: raw asyncio WebSocket clients that answer pings and come back after a
loss on the schedule of wsfleet's default ``RetryPolicy()``, as ``manager.connect()`` does, at
a fraction of its CPU), each binding its sockets to its own loopback source address
(127.0.0.2, 127.0.0.3, ...) so that ephemeral ports do not run out. Client i dials server
i mod K; every ``--group-every``-th client joins the group ``room`` on its server. A process
holds at most 17,000 sockets: the open-files limit is 20,000 per process.

In order, each phase bounded in time (the whole run by ``--budget``, after which every
process is stopped and what was measured is reported):

1. **connect**: the clients dial, at most ``--in-flight`` handshakes at once per client
   process; then every node must see every member of ``room`` through the backplane.
2. **idle**: the fleet sits idle for ``--window`` seconds (at least one ping interval, 20 s)
   while the heartbeat pings; CPU seconds per second of every process (``/proc/<pid>/stat``,
   Redis' own included), resident memory per connection of each server, pings sent.
3. **broadcast**: node 0 broadcasts ``--rounds`` messages stamped with
   ``time.monotonic_ns()``; each client notes the delay when its copy arrives: p50 / p99 /
   max over every client, and how many arrived. Then the same for a message to ``room``,
   whose members are spread over every node.
4. **restart**: every server process exits at once (its sockets close as in a crash) and a
   new one, loaded beforehand, binds the same port; the clients come back by the default
   retry policy (its jitter, 5 attempts, a 10 s opening handshake). Time until every client
   is CONNECTED again, the reconnections over time, and why attempts failed. If not every
   client came back, once more with the first delays spread over the time the fleet took to
   connect (``RetryPolicy(first_delay_spread=...)``), where the budget leaves room.

``--quick``: 10,000 clients on 4 nodes, a 21 s window. ``--smoke``: 200 clients on 2 nodes,
a 1 s window, in well under a minute; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import (
    PYTHON,
    RESULTS,
    Child,
    Failed,
    cli,
    environment,
    free_port,
    proc_cpu,
    proc_rss,
    table,
    write,
)

SERVER = str(HERE / "_scale_server.py")
CLIENT = str(HERE / "_scale_client.py")
#: The most sockets one process holds: the open-files limit is 20,000 per process, and a
#: server also holds its listening socket, its Redis connections and its pipes.
PER_PROCESS = 17_000
#: The default heartbeat's ping interval (``HeartbeatPolicy()``), which the idle window spans.
PING_INTERVAL = 20.0
BUCKET = 0.1
#: How often the connect phase reads the clients' counts, and how long it waits for the
#: count to grow before it calls the fleet stalled.
SAMPLE_EVERY = 10.0
STALL = 120.0


@dataclass(frozen=True)
class Plan:
    clients: int
    servers: int
    client_processes: int
    group_every: int
    window: float
    rounds: int
    in_flight: int
    budget_s: float
    storm_timeout: float
    #: the backplane's connect and command timeouts (None: RedisBackplane's own, 1 s)
    redis_timeout: float | None = None
    #: draw the plots (not in a smoke run or a run that writes nothing)
    draw: bool = False
    #: the results' files: ``results/<name>.md``, ``.json``, ``<name>_*.png``
    name: str = "scale"

    def port_share(self, k: int) -> int:
        """Clients of server k: client i dials server i mod K."""
        return len(range(k, self.clients, self.servers))

    def client_ranges(self) -> list[range]:
        size = math.ceil(self.clients / self.client_processes)
        return [
            range(j * size, min(self.clients, (j + 1) * size)) for j in range(self.client_processes)
        ]

    def members(self, ids: range) -> int:
        return sum(1 for i in ids if i % self.group_every == 0)


class OutOfTime(Exception):
    """The run's budget passed (raised by SIGALRM wherever the driver is)."""


def on_alarm(signum: int, frame: FrameType | None) -> None:
    raise OutOfTime


def distribution(delays_us: list[int], want: int) -> dict[str, Any]:
    if not delays_us:
        return {"received": 0, "expected": want}
    ordered = sorted(delays_us)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000

    return {
        "received": len(ordered),
        "expected": want,
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "max_ms": ordered[-1] / 1000,
        "min_ms": ordered[0] / 1000,
        "mean_ms": statistics.fmean(ordered) / 1000,
    }


class Fleet:
    """Every process of one run: Redis, the servers, the clients; what each spent."""

    def __init__(self, plan: Plan, redis: Any) -> None:
        self.plan = plan
        self.redis = redis
        self.namespace = f"scale{os.getpid()}"
        self.ports = [free_port() for _ in range(plan.servers)]
        self.servers: list[Child] = []
        self.clients: list[Child] = []
        self.started = self.deadline = time.monotonic()

    def spawn_servers(self, standby: bool) -> list[Child]:
        every = str(self.plan.group_every)
        extra = ["--standby"] if standby else []
        if self.plan.redis_timeout is not None:
            extra += ["--redis-timeout", str(self.plan.redis_timeout)]
        return [
            Child(
                f"server {k}",
                [PYTHON, SERVER, str(port), self.redis.url, self.namespace, every, *extra],
            )
            for k, port in enumerate(self.ports)
        ]

    def start_servers(self) -> None:
        self.servers = self.spawn_servers(standby=False)
        for server in self.servers:
            server.expect("port", timeout=60)

    def start_clients(self) -> None:
        self.clients = [
            Child(f"clients {j}", [PYTHON, CLIENT, f"127.0.0.{2 + j}"])
            for j in range(self.plan.client_processes)
        ]
        for client in self.clients:
            client.expect("loaded", timeout=120)

    def cpu(self, standby: list[Child] | None = None) -> dict[str, Any]:
        """CPU seconds so far of every process, by role and pid (``standby``: servers that
        will replace these, counted from now)."""
        servers = self.servers + (standby or [])
        return {
            "t": time.monotonic(),
            "servers": {s.proc.pid: proc_cpu(s.proc.pid) or 0.0 for s in servers},
            "clients": {c.proc.pid: proc_cpu(c.proc.pid) or 0.0 for c in self.clients},
            "redis": {self.redis.pid: proc_cpu(self.redis.pid) or 0.0},
        }

    def samples(self) -> list[dict[str, Any]]:
        out = []
        for server in self.servers:
            server.send("sample")
            found: dict[str, Any] = json.loads(server.expect("sample", timeout=60)[1])
            found["rss"] = proc_rss(server.proc.pid)
            out.append(found)
        return out

    def stop(self) -> None:
        """Every helper at once: they hold nothing that needs a polite end, and a busy one
        answers ``quit`` only after the command it is in."""
        children = self.clients + self.servers
        for child in children:
            child.proc.kill()
        for child in children:
            child.kill()


def spent(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """CPU seconds of each role between two ``Fleet.cpu()`` readings, and per second."""
    wall = after["t"] - before["t"]

    def delta(key: str) -> float:
        # a process started in between (a restarted server) counts from its start
        a: dict[int, float] = before[key]
        b: dict[int, float] = after[key]
        return sum(cpu - a.get(pid, 0.0) for pid, cpu in b.items())  # the gone ones: ~0

    out: dict[str, Any] = {"wall_s": wall}
    for key in ("servers", "clients", "redis"):
        out[f"{key}_cpu_s"] = delta(key)
        out[f"{key}_cpu_per_s"] = delta(key) / wall if wall else None
    return out


def counts(fleet: Fleet) -> list[dict[str, int]]:
    for client in fleet.clients:
        client.send("counts")
    return [json.loads(c.expect("counts", timeout=120)[1]) for c in fleet.clients]


def connect_phase(fleet: Fleet, out: dict[str, Any]) -> None:
    """Dial every client, following the count every few seconds; stop when all are
    connected, when the count has not grown for ``STALL`` seconds, or at the limit."""
    plan = fleet.plan
    before = fleet.cpu()
    ports = ",".join(str(p) for p in fleet.ports)
    limit = 60 + plan.clients / 100
    for j, (client, ids) in enumerate(zip(fleet.clients, plan.client_ranges(), strict=True)):
        client.send(f"connect {len(ids)} c{j}- {ids.start} {ports} {plan.in_flight} {limit}")
    for client in fleet.clients:
        client.expect("started", timeout=60)
    timeline: list[dict[str, Any]] = []
    best, best_at = 0, time.monotonic()
    connect: dict[str, Any] = {"timeline": timeline, "clients_connected": 0}
    out["connect"] = connect
    while True:
        time.sleep(SAMPLE_EVERY if plan.clients > 1_000 else 0.2)
        now = counts(fleet)
        cpu = fleet.cpu()
        connected = sum(c.get("CONNECTED", 0) for c in now)
        timeline.append(
            {
                "t": cpu["t"] - before["t"],
                "connected": connected,
                "dialled": sum(c["dialled"] for c in now),
                "gave_up": sum(c.get("DISCONNECTED", 0) for c in now),
                "servers_cpu_s": spent(before, cpu)["servers_cpu_s"],
                "servers_rss": sum(proc_rss(s.proc.pid) or 0 for s in fleet.servers),
                "redis_cpu_s": spent(before, cpu)["redis_cpu_s"],
            }
        )
        connect["clients_connected"] = max(connect["clients_connected"], connected)
        if connected > best:
            best, best_at = connected, time.monotonic()
        if connected >= plan.clients:
            break
        if time.monotonic() - best_at > STALL or time.monotonic() - before["t"] > limit:
            connect["stalled"] = connected < plan.clients
            break
    took = time.monotonic() - before["t"]
    connect.update(
        {
            "connect_s": took,
            "per_client_process": [c.get("CONNECTED", 0) for c in now],
            "cpu": spent(before, fleet.cpu()),
        }
    )
    if connected < plan.clients:
        raise Failed(
            f"{connected:,} of {plan.clients:,} clients connected after {took:.0f} s "
            f"(at most {connect['clients_connected']:,}; {timeline[-1]['gave_up']:,} gave up)"
        )
    for k, server in enumerate(fleet.servers):
        server.send(f"wait {plan.port_share(k)} 60")
    connect["servers_ready"] = [int(s.expect("ready", timeout=120)[1]) for s in fleet.servers]
    connect["registered_s"] = time.monotonic() - before["t"]
    members = plan.members(range(plan.clients))
    for server in fleet.servers:
        server.send(f"members {members} 120")
    connect["room_members_expected"] = members
    connect["room_members_seen"] = [int(s.expect("members", timeout=180)[1]) for s in fleet.servers]
    connect["settled_s"] = time.monotonic() - before["t"]


def idle_phase(fleet: Fleet, out: dict[str, Any]) -> None:
    plan = fleet.plan
    first = fleet.samples()
    before = fleet.cpu()
    time.sleep(plan.window)
    after = fleet.cpu()
    last = fleet.samples()
    servers = []
    wall = after["t"] - before["t"]
    for server, a, b in zip(fleet.servers, first, last, strict=True):
        n, pid = b["connections"], server.proc.pid
        servers.append(
            {
                "connections": n,
                "rss": b["rss"],
                "rss_per_connection": b["rss"] / n if n and b["rss"] else None,
                "pings_in_window": b["pings_sent"] - a["pings_sent"],
                "heartbeat_timeouts": b["heartbeat_timeouts"],
                "states": b["states"],
                "drops": b["drops"],
                "online_count": b["online_count"],
                "room_members": b["room_members"],
                "backplane_state": b["backplane_state"],
                "cpu_per_s": (after["servers"][pid] - before["servers"][pid]) / wall,
            }
        )
    out["idle"] = {
        "window_s": after["t"] - before["t"],
        "servers": servers,
        "cpu": spent(before, after),
        "client_rss": [proc_rss(c.proc.pid) for c in fleet.clients],
        "redis_rss": proc_rss(fleet.redis.pid),
        "backplane_end": [b["backplane"] for b in last],
    }


def message_round(fleet: Fleet, kind: str, serial: int) -> dict[str, Any]:
    """One stamped message from node 0 (``broadcast`` or to the ``group``), timed at every
    client that should get it."""
    plan = fleet.plan
    ranges = plan.client_ranges()
    wants = [len(r) if kind == "broadcast" else plan.members(r) for r in ranges]
    before = fleet.cpu()
    fleet.servers[0].send(f"{kind} {serial}")
    sent = fleet.servers[0].expect("sent", timeout=60)
    delays: list[int] = []
    for client, want in zip(fleet.clients, wants, strict=True):
        client.send(f"received {serial} {want} 60")
    for client in fleet.clients:
        delays += json.loads(client.expect("received", timeout=90)[1])
    result = distribution(delays, sum(wants))
    result["local"] = int(sent[1].split()[0])
    result["cpu"] = spent(before, fleet.cpu())
    result["delays_us"] = delays
    return result


def message_phase(fleet: Fleet, out: dict[str, Any]) -> None:
    for kind, base in (("broadcast", 0), ("group", 1000)):
        rounds = []
        for r in range(fleet.plan.rounds):
            rounds.append(message_round(fleet, kind, base + r))
            time.sleep(1.0)
        out[kind] = rounds


def restart(fleet: Fleet, spread: float | None, limit: float) -> dict[str, Any]:
    """Every server process replaced at once; the clients come back by their retry policy
    (the default, or the default with ``first_delay_spread=spread``)."""
    plan = fleet.plan
    for client in fleet.clients:
        client.send(f"policy {'default' if spread is None else spread}")
        policy = client.expect("policy", timeout=30)[1]
        client.send("mark")
        client.expect("marked", timeout=30)
    # The replacements load first (a process start on a loaded machine takes seconds that
    # say nothing about wsfleet); each binds its port once the process it replaces is gone.
    standby = fleet.spawn_servers(standby=True)
    for server in standby:
        server.expect("loaded", timeout=120)
    before = fleet.cpu(standby)
    t_kill = time.monotonic_ns()
    for server in fleet.servers:
        server.kill()
    t_down = time.monotonic_ns()
    fleet.servers = standby
    for server in standby:
        server.send("listen")
    revived = 0
    for client in fleet.clients:  # those that gave up before start this outage too
        client.send("revive")
        revived += int(client.expect("revived", timeout=30)[1])
    for server in standby:
        server.expect("port", timeout=60)
    t_up = time.monotonic_ns()
    for client, ids in zip(fleet.clients, plan.client_ranges(), strict=True):
        client.send(f"storm {len(ids)} {limit}")
    storms = [json.loads(c.expect("storm", timeout=limit + 60)[1]) for c in fleet.clients]
    after = fleet.cpu()
    back = sorted(t for s in storms for t in s["connected_ns"])
    connected_now = sum(s["counts"].get("CONNECTED", 0) for s in storms)
    reasons: dict[str, int] = {}
    for storm in storms:
        for reason, count in storm["reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    hist: dict[int, int] = {}
    for t in back:
        slot = int((t - t_kill) / 1e9 / BUCKET)
        hist[slot] = hist.get(slot, 0) + 1

    def since(t: int) -> float:
        return (t - t_kill) / 1e9

    return {
        "policy": policy,
        "first_delay_spread": spread,
        "revived": revived,
        "servers_down_s": since(t_down),
        "servers_up_s": since(t_up),
        "clients_back": connected_now,
        "counts": [s["counts"] for s in storms],
        "reconnections": len(back),
        "all_back_s": since(back[-1]) if back and connected_now >= plan.clients else None,
        "half_back_s": since(back[len(back) // 2]) if back else None,
        "p99_back_s": since(back[int(0.99 * (len(back) - 1))]) if back else None,
        "settled_s": since(time.monotonic_ns()),
        "attempts": sum(s["attempts"] for s in storms),
        "gave_up": sum(s["gave_up"] for s in storms),
        "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:8]),
        "per_bucket": [hist.get(i, 0) for i in range(max(hist) + 1)] if hist else [],
        "cpu": spent(before, after),
    }


def restart_phase(fleet: Fleet, out: dict[str, Any]) -> None:
    """The default policy first; if it did not bring every client back, a second restart
    whose first delays are spread over the time the fleet took to connect at a sustainable
    pace (when the run's budget has room for it)."""
    out["restart"] = restart(fleet, None, fleet.plan.storm_timeout)
    if out["restart"]["all_back_s"] is not None:
        return
    spread = round(max(1.0, out["connect"]["connect_s"]), 1)
    if fleet.deadline - time.monotonic() < spread + 120:
        out["restart_sized"] = {"skipped": f"no time left for a {spread} s spread"}
        return
    progress(fleet.started, f"restart, first delays spread over {spread} s")
    out["restart_sized"] = restart(fleet, spread, spread + fleet.plan.storm_timeout)


def measure(plan: Plan) -> dict[str, Any]:
    from _harness.redis import RedisServer

    started = time.monotonic()
    load_before = os.getloadavg()[0]
    out: dict[str, Any] = {}
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, plan.budget_s)
    fleet: Fleet | None = None
    try:
        with RedisServer() as redis:
            fleet = Fleet(plan, redis)
            fleet.started, fleet.deadline = started, started + plan.budget_s
            try:
                fleet.start_servers()
                base = fleet.samples()
                out["server_rss_base"] = [s["rss"] for s in base]
                fleet.start_clients()
                for phase in (connect_phase, idle_phase, message_phase, restart_phase):
                    progress(started, phase.__name__.replace("_", " "))
                    phase(fleet, out)
            except (Failed, OutOfTime) as exc:
                out["error"] = f"{type(exc).__name__}: {exc}"
                progress(started, f"stopped: {out['error']}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                fleet.stop()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    out["meta"] = {
        **asdict(plan),
        "elapsed_s": time.monotonic() - started,
        "load_average": {"before": load_before, "after": os.getloadavg()[0]},
        "cpus": os.cpu_count(),
        "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
    }
    out["meta"]["command"] = cli.command("scale_bench.py")
    out["meta"]["measured"] = environment()
    for result in out.get("broadcast", []) + out.get("group", []):
        # every client's delay is too much to keep: 200 quantiles draw the same curve
        result["cdf_ms"] = quantiles(result.pop("delays_us"))
    if plan.draw:
        # the figures are safe before the report is rendered (``--report-only`` renders again)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{plan.name}.json").write_text(json.dumps(out) + "\n", encoding="utf-8")
        try:
            out["plots"] = plots(out)
        except Exception as exc:  # the report is worth having without its pictures
            progress(started, f"plots failed: {exc!r}")
    return out


def quantiles(delays_us: list[int], points: int = 200) -> list[float]:
    ordered = sorted(delays_us)
    if not ordered:
        return []
    return [
        ordered[min(len(ordered) - 1, i * len(ordered) // points)] / 1000 for i in range(points)
    ] + [ordered[-1] / 1000]


def progress(started: float, text: str) -> None:
    sys.stderr.write(f"[{time.monotonic() - started:6.1f} s] {text}\n")
    sys.stderr.flush()


# -- the plots -------------------------------------------------------------------------------


def plots(out: dict[str, Any]) -> dict[str, str]:
    """``<name>_arrival.png`` and ``<name>_restart.png`` beside the report, where matplotlib is
    installed (the ``bench`` extra); none otherwise, and the report says so."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    drawn: dict[str, str] = {}
    n = out["meta"]["clients"]
    name = out["meta"].get("name", "scale")
    if out.get("broadcast") or out.get("group"):
        fig, ax = plt.subplots(figsize=(7, 4))
        for kind, label in (("broadcast", "broadcast"), ("group", "message to `room`")):
            for r, result in enumerate(out.get(kind, [])[:1]):
                xs = result["cdf_ms"]
                if xs:
                    ys = [i / (len(xs) - 1) for i in range(len(xs))]
                    ax.plot(xs, ys, label=f"{label} (round {r + 1})")
        ax.set_xlabel("arrival after the send, ms")
        ax.set_ylabel("fraction of the receiving clients")
        ax.set_title(f"One message from node 0 to {n:,} clients on every node")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        drawn["arrival"] = f"{name}_arrival.png"
        fig.savefig(RESULTS / drawn["arrival"], dpi=110)
        plt.close(fig)
    timeline = (out.get("connect") or {}).get("timeline") or []
    if len(timeline) > 1:
        fig, ax = plt.subplots(figsize=(7, 4))
        ts = [point["t"] for point in timeline]
        ax.plot(ts, [point["connected"] for point in timeline], label="connected")
        ax.set_xlabel("seconds since the clients started dialling")
        ax.set_ylabel("connections")
        twin = ax.twinx()
        twin.plot(ts, [point["servers_cpu_s"] for point in timeline], color="black", linestyle="--")
        twin.set_ylabel("servers' CPU seconds so far (dashed)")
        ax.set_title(f"Connecting {n:,} clients to {out['meta']['servers']} nodes")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        drawn["connect"] = f"{name}_connect.png"
        fig.savefig(RESULTS / drawn["connect"], dpi=110)
        plt.close(fig)
    storms = [
        (key, out[key])
        for key in ("restart", "restart_sized")
        if out.get(key, {}).get("per_bucket") or out.get(key, {}).get("counts")
    ]
    if storms:
        fig, axes = plt.subplots(len(storms), 1, figsize=(7, 3.6 * len(storms)), squeeze=False)
        for ax, (_, restart) in zip(axes[:, 0], storms, strict=True):
            buckets = restart["per_bucket"] or [0]
            xs = [i * BUCKET for i in range(len(buckets))]
            ax.bar(xs, buckets, width=BUCKET, align="edge")
            ax.set_xlabel("seconds since every server process was stopped")
            ax.set_ylabel("reconnections per 100 ms")
            total, cumulative = 0, []
            for count in buckets:
                total += count
                cumulative.append(total / n)
            twin = ax.twinx()
            twin.plot(xs, cumulative, color="black")
            twin.set_ylabel("fraction of the clients back")
            twin.set_ylim(0, 1.05)
            ax.axvline(restart["servers_up_s"], color="grey", linestyle="--")
            ax.set_xlim(0, max(restart["settled_s"], len(buckets) * BUCKET))
            spread = restart.get("first_delay_spread")
            policy = "RetryPolicy()" if spread is None else f"first_delay_spread={spread:g} s"
            ax.set_title(f"{n:,} clients come back after a restart: {policy}")
        fig.tight_layout()
        drawn["restart"] = f"{name}_restart.png"
        fig.savefig(RESULTS / drawn["restart"], dpi=110)
        plt.close(fig)
    return drawn


# -- the report ------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec)


def render(out: dict[str, Any]) -> str:
    meta = out["meta"]
    n, k = meta["clients"], meta["servers"]
    text = ""
    if "error" in out:
        text += f"**The run stopped early**: {out['error']}. What was measured before that:\n\n"
    rows: list[tuple[object, ...]] = []
    connect = out.get("connect")
    if connect:
        rows += connect_rows(connect, meta)
    idle = out.get("idle")
    if idle:
        servers = idle["servers"]
        per = [s["rss_per_connection"] for s in servers if s["rss_per_connection"]]
        base = out.get("server_rss_base") or []
        delta = [
            (s["rss"] - b) / s["connections"]
            for s, b in zip(servers, base, strict=False)
            if s["connections"] and s["rss"] and b
        ]
        rows.append(
            (
                "server memory per connection (whole process RSS ÷ its connections)",
                f"{statistics.median(per) / 1024:.1f} KiB median "
                f"({min(per) / 1024:.1f}-{max(per) / 1024:.1f}); "
                f"above the idle process: {statistics.median(delta) / 1024:.1f} KiB"
                if per and delta
                else "n/a",
            )
        )
        cpu = idle["cpu"]
        pings = sum(s["pings_in_window"] for s in servers)
        rows.append(
            (
                f"CPU of the idle fleet under the heartbeat ({idle['window_s']:.0f} s window)",
                f"servers {cpu['servers_cpu_per_s']:.3f} CPU-s/s in all "
                f"({cpu['servers_cpu_per_s'] / n * 1e6:.2f} µs/s per connection); "
                f"{pings:,} pings ({pings / idle['window_s']:,.0f}/s, "
                f"{cpu['servers_cpu_s'] / pings * 1e6 if pings else 0:.0f} µs of server CPU each); "
                f"clients {cpu['clients_cpu_per_s']:.3f}; Redis {cpu['redis_cpu_per_s']:.4f}",
            )
        )
        rows.append(
            (
                "heartbeat timeouts, drops",
                f"{sum(s['heartbeat_timeouts'] for s in servers)}, "
                f"{sum(sum(s['drops'].values()) for s in servers)}",
            )
        )
    for kind, label in (("broadcast", "one broadcast"), ("group", "one message to `room`")):
        for r, result in enumerate(out.get(kind, [])):
            if "p50_ms" not in result:
                rows.append((f"{label}, round {r + 1}", "nothing arrived"))
                continue
            cpu = result["cpu"]
            rows.append(
                (
                    f"{label} from node 0, round {r + 1}: arrival p50 / p99 / max",
                    f"{result['p50_ms']:.0f} / {result['p99_ms']:.0f} / {result['max_ms']:.0f} ms; "
                    f"{result['received']:,} of {result['expected']:,} arrived; "
                    f"servers {cpu['servers_cpu_s']:.2f} CPU-s "
                    f"({cpu['servers_cpu_s'] / max(1, result['received']) * 1e6:.1f} µs "
                    "per delivery), "
                    f"Redis {cpu['redis_cpu_s'] * 1000:.0f} ms",
                )
            )
    for key in ("restart", "restart_sized"):
        rows += restart_rows(out.get(key), n)
    if connect and "cpu" in connect:
        cpu = connect["cpu"]
        rows.append(
            (
                "Redis' own CPU",
                f"connect phase {cpu['redis_cpu_s']:.1f} s over {cpu['wall_s']:.0f} s"
                + (
                    f"; idle {idle['cpu']['redis_cpu_per_s']:.4f} CPU-s/s, RSS "
                    f"{(idle['redis_rss'] or 0) / 2**20:.0f} MiB"
                    if idle
                    else ""
                ),
            )
        )
    text += table(["figure", f"{n:,} clients, {k} nodes, one Redis"], rows) + "\n\n"
    if connect:
        text += timeline_table(connect)
    if idle:
        text += per_server(idle) + "\n\n"
    plots_ = out.get("plots") or {}
    if "connect" in plots_:
        text += f"![connecting the fleet]({plots_['connect']})\n\n"
    if "arrival" in plots_:
        text += f"![arrival of one message]({plots_['arrival']})\n\n"
    if "restart" in plots_:
        text += f"![the fleet coming back after a restart]({plots_['restart']})\n\n"
    return text + how(out)


def connect_rows(connect: dict[str, Any], meta: dict[str, Any]) -> list[tuple[object, ...]]:
    n = meta["clients"]
    reached = connect["clients_connected"]
    held = connect.get("servers_ready")
    rows: list[tuple[object, ...]] = [
        (
            "connections reached",
            f"{reached:,} of {n:,}"
            + (f" (servers hold {' + '.join(f'{r:,}' for r in held)})" if held else ""),
        )
    ]
    took = connect.get("connect_s")
    if took and "room_members_expected" in connect:
        rows.append(
            (
                "time to connect them all",
                f"{took:.0f} s ({reached / took:,.0f} per s, at most {meta['in_flight']} dials "
                f"at once per client process); every node saw all "
                f"{connect['room_members_expected']:,} members of `room` after "
                f"{connect['settled_s']:.0f} s",
            )
        )
    elif took:
        last = connect["timeline"][-1] if connect.get("timeline") else {}
        rows.append(
            (
                "connecting stopped",
                f"after {took:.0f} s: {last.get('connected', 0):,} connected, "
                f"{last.get('dialled', 0):,} dialled, {last.get('gave_up', 0):,} gave up "
                "(the count did not grow for "
                f"{STALL:.0f} s, or the phase's limit passed)",
            )
        )
    if "cpu" in connect and reached:
        cpu = connect["cpu"]
        rows.append(
            (
                "CPU while connecting",
                f"servers {cpu['servers_cpu_s']:.0f} s ({cpu['servers_cpu_s'] / reached * 1e3:.1f} "
                f"ms per connection reached), clients {cpu['clients_cpu_s']:.0f} s, Redis "
                f"{cpu['redis_cpu_s']:.1f} s, over {cpu['wall_s']:.0f} s",
            )
        )
    return rows


def timeline_table(connect: dict[str, Any]) -> str:
    points = connect.get("timeline") or []
    if len(points) < 2:
        return ""
    step = max(1, len(points) // 12)
    rows = [
        (
            f"{p['t']:.0f}",
            f"{p['connected']:,}",
            f"{p['dialled']:,}",
            f"{p['gave_up']:,}",
            f"{p['servers_cpu_s']:.0f}",
            f"{p['servers_rss'] / 2**20:,.0f}",
            f"{p['redis_cpu_s']:.1f}",
        )
        for p in points[::step] + ([points[-1]] if (len(points) - 1) % step else [])
    ]
    return (
        "Connecting, as it went:\n\n"
        + table(
            [
                "s",
                "connected",
                "dialled",
                "gave up",
                "servers' CPU s so far",
                "servers' RSS MiB",
                "Redis CPU s so far",
            ],
            rows,
        )
        + "\n\n"
    )


def restart_rows(restart: dict[str, Any] | None, n: int) -> list[tuple[object, ...]]:
    if not restart:
        return []
    if "skipped" in restart:
        return [("restart with spread first delays", restart["skipped"])]
    spread = restart["first_delay_spread"]
    policy = (
        "`RetryPolicy()`"
        if spread is None
        else f"`RetryPolicy(first_delay_spread={spread:g})` (the time the fleet took to connect)"
    )
    back = (
        f"all back {restart['all_back_s']:.1f} s after the stop"
        if restart["all_back_s"] is not None
        else f"**not all back**: {restart['clients_back']:,} of {n:,} connected "
        f"{restart['settled_s']:.0f} s after the stop"
    )
    cpu = restart["cpu"]
    reasons = "; ".join(f"{reason}: {count:,}" for reason, count in restart["reasons"].items())
    return [
        (
            f"every server process restarts, clients under {policy}",
            f"{back} (half after {fmt(restart['half_back_s'], '.1f')} s, 99 % of those back "
            f"after {fmt(restart['p99_back_s'], '.1f')} s; the new servers listened "
            f"{restart['servers_up_s']:.1f} s after the stop); {restart['attempts']:,} dials, "
            f"{restart['reconnections']:,} reconnections, {restart['gave_up']:,} gave up; "
            f"CPU: servers {cpu['servers_cpu_s']:.0f} s, clients {cpu['clients_cpu_s']:.0f} s, "
            f"Redis {cpu['redis_cpu_s']:.1f} s over {cpu['wall_s']:.0f} s",
        ),
        ("... why the clients' attempts ended", reasons or "-"),
    ]


def per_server(idle: dict[str, Any]) -> str:
    rows = [
        (
            k,
            f"{s['connections']:,}",
            f"{(s['rss'] or 0) / 2**20:.0f}",
            fmt(s["rss_per_connection"] and s["rss_per_connection"] / 1024, ".1f"),
            f"{s['cpu_per_s']:.3f}",
            f"{s['pings_in_window']:,}",
            ", ".join(f"{name} {count:,}" for name, count in s["states"].items()),
            f"{s['online_count']:,}",
            s["backplane_state"],
        )
        for k, s in enumerate(idle["servers"])
    ]
    return "Each node at the end of the idle window:\n\n" + table(
        [
            "node",
            "connections",
            "RSS MiB",
            "KiB per connection",
            "CPU-s/s",
            "pings in the window",
            "states",
            "online fleet-wide (its view)",
            "backplane",
        ],
        rows,
    )


def how(out: dict[str, Any]) -> str:
    meta = out["meta"]
    load = meta["load_average"]
    return (
        "How: see the docstring of `benchmarks/scale_bench.py`. "
        f"{meta['servers']} server processes (websockets on asyncio, a wsfleet node each, "
        "`HeartbeatPolicy()`: a ping every 20 s), one `redis-server`, "
        f"{meta['client_processes']} client processes (raw asyncio WebSocket clients that "
        "answer pings and redial on `RetryPolicy()`'s schedule), each on its own loopback "
        "source address; every "
        f"{meta['group_every']}th client joins `room`. "
        + (
            f"The backplane's connect and command timeouts: {meta['redis_timeout']:g} s "
            "(`RedisBackplane(url, connect_timeout=..., command_timeout=...)`; 1 s by default). "
            if meta.get("redis_timeout")
            else "The backplane's default timeouts (1 s). "
        )
        + "All on one machine of "
        f"{meta['cpus']} CPUs and {meta['memory_gib']:.0f} GiB shared with other work "
        f"(1-minute load average {load['before']:.2f} before, {load['after']:.2f} after): the "
        "clients' CPU competes with the servers', so the arrival times and the restart include "
        "the clients' own work of reading every socket. Arrival: the sender stamps "
        "`time.monotonic_ns()` as it hands the message over, each client reads the same "
        "clock when its copy is parsed. CPU: user + system seconds of each process from "
        f"`/proc/<pid>/stat`. The run took {meta['elapsed_s']:.0f} s.\n"
    )


# -- main ------------------------------------------------------------------------------------


def plan_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Plan:
    clients = args.clients or (10_000 if args.quick else 100_000)
    servers = args.servers or max(2 if args.quick else 7, math.ceil(clients / PER_PROCESS))
    if clients / servers > PER_PROCESS:
        parser.error(f"at most {PER_PROCESS:,} clients per server (the open-files limit)")
    processes = max(servers, math.ceil(clients / PER_PROCESS))
    window = args.window or (PING_INTERVAL + 1 if args.quick else 2 * PING_INTERVAL)
    return Plan(
        clients=clients,
        servers=servers,
        client_processes=processes,
        group_every=args.group_every,
        window=window,
        rounds=args.rounds,
        in_flight=args.in_flight,
        budget_s=args.budget,
        storm_timeout=120.0,
        redis_timeout=args.redis_timeout,
    )


SMOKE = Plan(
    clients=200,
    servers=2,
    client_processes=2,
    group_every=10,
    window=1.0,
    rounds=1,
    in_flight=50,
    budget_s=90.0,
    storm_timeout=40.0,
)


def main() -> None:
    parser = cli.parser(__doc__, rebuild="results/scale.json")
    parser.add_argument("--clients", type=int, default=None, help="100,000 (--quick: 10,000)")
    parser.add_argument("--servers", type=int, default=None, help="nodes (7; --quick: 2)")
    parser.add_argument("--group-every", type=int, default=10, help="every n-th client in room")
    parser.add_argument("--window", type=float, default=None, help="idle window, s (40)")
    parser.add_argument("--rounds", type=int, default=3, help="broadcasts and group messages")
    parser.add_argument("--in-flight", type=int, default=25, help="dials at once per process")
    parser.add_argument("--budget", type=float, default=900.0, help="the whole run, s")
    parser.add_argument(
        "--redis-timeout",
        type=float,
        default=None,
        help="the backplane's connect and command timeouts, s (RedisBackplane's: 1)",
    )
    parser.add_argument(
        "--name", default="scale", help="results/<name>.md, .json and plots (scale)"
    )
    args = parser.parse_args()
    if args.report_only:
        saved = json.loads((RESULTS / f"{args.name}.json").read_text(encoding="utf-8"))
        saved["meta"]["name"] = args.name
        saved["plots"] = plots(saved)
        meta = saved["meta"]
        title = TITLE.format(clients=meta["clients"], servers=meta["servers"])
        write(args.name, title, meta["command"], render(saved), saved, meta["measured"])
        return
    plan = SMOKE if args.smoke else plan_of(parser, args)
    if not args.smoke and args.json is None and not args.no_write:
        plan = replace(plan, draw=True, name=args.name)
    title = TITLE.format(clients=plan.clients, servers=plan.servers)
    cli.run(args, plan, measure, render, name=plan.name, title=title, script="scale_bench.py")


TITLE = "{clients:,} connections on one machine: {servers} wsfleet nodes joined by one Redis"


if __name__ == "__main__":
    main()
