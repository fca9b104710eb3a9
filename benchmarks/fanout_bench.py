"""Fan-out over real loopback sockets: wsfleet over each adapter against the plain library.

    python benchmarks/fanout_bench.py [--quick]   # writes benchmarks/results/fanout.md/.json

Every server variant runs in a process of its own (``_fanout_server.py``, pinned to one CPU),
the clients in another (``_fanout_client.py``, pinned to the other CPU): raw TCP sockets that
do the WebSocket handshake by hand and then only count bytes, so the client side costs as
little as it can. Every variant does the same job: N connections, then M messages of 64 bytes
to all of them, in these modes:

* ``single``: each message is written to every connection before the next one goes
  (wsfleet: ``await manager.broadcast(m)``, then wait until the manager's counters say all
  was written; the plain loops do it by nature; websockets' ``broadcast()`` writes at once
  and yields to the event loop once);
* ``burst``: the M messages are handed over back to back, then wait until all are written;
* ``batch`` (wsfleet only): the burst inside ``async with manager.batch()``, which queues it
  whole first, so each connection's messages can go out in one write.

Measured per variant, mode and N: deliveries per second (N*M over the wall time from "go" to
the last byte at the clients) and the server's CPU µs per delivery (its ``process_time``
delta over N*M); single mode at N = 5,000 sends 50 messages rather than 100 to stay within
the time budget. Then the stalled-client scenario: 100 healthy clients plus one that
handshakes and never reads while 500 messages of 16 KiB go to all (scaled down from the
issue's 1,000 clients and 2,000 messages; see ``STALL_DEVIATION``); the healthy clients' last
delivery is compared with control runs without the stalled one. The wsfleet variants evict
a client 1 MiB behind (``OverflowPolicy(max_bytes=1 MiB, action="disconnect")``); the plain
ones have no such bound, and the run is cut at a timeout if they block.

The full run takes about ten minutes on 2 CPUs, ``--quick`` (N = 1,000, one round per cell,
fewer stalled-client pairs) about two.

Three more peers can be named with ``--variants`` (``benchmarks/run_all.py`` measures them,
and needs the ``bench`` extra): ``fastapi-docs``, ``socketio-room`` and ``raw-floor`` (see
``_fanout_server.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _report import Deadline, table, write

PYTHON = sys.executable
SERVER = str(HERE / "_fanout_server.py")
CLIENT = str(HERE / "_fanout_client.py")

M = 100
SIZE = 64
STALL_SIZE = 16 * 1024
#: Single mode at N = 5,000 fans out this many messages instead of M: in single mode each
#: message is a fan-out of its own, so the figures per delivery do not depend on the count,
#: and the slowest variants here need ~190 µs per delivery (95 s for 100 messages).
SINGLE_M_LARGE = 50
#: The stalled-client scenario, scaled down from the issue's 1,000 healthy clients and 2,000
#: messages of 16 KiB (32 GB through loopback per run: minutes per run for the trio variants
#: on this machine). Short runs also make the delay measurable at all: between two runs of
#: several seconds the last delivery moves by hundreds of milliseconds on this shared
#: machine, so the wsfleet variants alternate many short control / stalled pairs instead.
STALL_HEALTHY = 100
STALL_MESSAGES = 500
STALL_DEVIATION = (
    "Scale of this scenario: 100 healthy clients and 500 messages of 16 KiB, not 1,000 "
    "clients and 2,000 messages: that is 32 GB through loopback per run, minutes per run "
    "for the trio variants on this machine, and between runs of several seconds the last "
    "delivery moves by hundreds of milliseconds, which would hide a 50 ms effect. 500 "
    "messages still offer the stalled client 8 MiB, twice what its kernel buffers hold "
    "(~4 MiB) on top of the 1 MiB eviction bound."
)


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    module: str | None  # the wsfleet adapter it needs, if any
    baseline: str | None  # the plain variant it is compared with


VARIANTS = (
    Variant("ws-broadcast", "websockets broadcast()", None, None),
    Variant(
        "wsfleet-ws-asyncio",
        "wsfleet + websockets (asyncio)",
        "wsfleet.adapters.websockets",
        "ws-broadcast",
    ),
    Variant("wsfleet-ws-trio", "wsfleet + websockets (trio)", "wsfleet.adapters.websockets", None),
    Variant("trio-ws-loop", "plain trio-websocket loop", None, None),
    Variant(
        "wsfleet-trio-ws",
        "wsfleet + trio-websocket",
        "wsfleet.adapters.trio_websocket",
        "trio-ws-loop",
    ),
    Variant("starlette-loop", "Starlette loop (hypercorn)", None, None),
    Variant("wsfleet-asgi", "wsfleet + ASGI (Starlette, hypercorn)", "wsfleet.adapters.asgi", None),
    # Peers without a wsfleet twin, measured by benchmarks/run_all.py (and here on request).
    Variant("fastapi-docs", "FastAPI-docs ConnectionManager (uvicorn)", "fastapi", None),
    Variant("socketio-room", "python-socketio room emit (uvicorn)", "socketio", None),
    Variant("raw-floor", "raw floor: encode once, write to every transport", None, None),
)
#: What fanout_bench.py measures unless told otherwise (the variants of issue 4).
DEFAULT_VARIANTS = tuple(v.key for v in VARIANTS[:7])
BY_KEY = {v.key: v for v in VARIANTS}


def frame_bytes(size: int, variant: str = "") -> int:
    """A server-to-client (unmasked) text frame of a ``size``-byte message, on the wire.

    python-socketio sends the message as the event ``42["m","<message>"]``: 10 bytes more.
    """
    if variant == "socketio-room":
        size += 10
    return size + (2 if size < 126 else 4 if size < 65536 else 10)


def missing(variant: Variant) -> str | None:
    """Why the variant cannot run here (its adapter does not import), or None."""
    if variant.module is None:
        return None
    probe = subprocess.run(
        [PYTHON, "-c", f"import {variant.module}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if probe.returncode == 0:
        return None
    lines = probe.stderr.strip().splitlines()
    return lines[-1] if lines else f"import {variant.module} failed"


def batch_api() -> bool:
    """Whether this wsfleet has the public ``manager.batch()`` (the servers use it if so)."""
    probe = subprocess.run(
        [PYTHON, "-c", "import wsfleet; print(hasattr(wsfleet.ConnectionManager, 'batch'))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return probe.stdout.strip() == "True"


class Failed(Exception):
    pass


class Child:
    """A helper process spoken to by lines on stdin/stdout; stderr goes to a temporary file."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        # Closed in kill(): it lives as long as the process it logs.
        self.log: IO[str] = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise Failed(f"{self.name} is gone: {exc}; {self.tail()}") from exc

    def expect(self, *words: str, timeout: float) -> list[str]:
        """The next line starting with one of ``words``: [word, rest...]."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise Failed(f"{self.name}: no {'/'.join(words)} within {timeout:.0f} s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise Failed(f"{self.name} exited ({self.proc.poll()}); {self.tail()}")
            parts = line.split(" ", 1)
            if parts[0] in words:
                return parts
            if parts[0] == "failed":
                raise Failed(f"{self.name}: {line}")

    def tail(self) -> str:
        self.log.flush()
        self.log.seek(0)
        text = self.log.read().strip().splitlines()
        return " | ".join(text[-6:]) or "no stderr"

    def kill(self) -> None:
        if self.log.closed:  # killed already (a failed variant is let go early)
            return
        with contextlib.suppress(OSError, Failed):
            self.send("quit")
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


def cpus() -> tuple[int | None, int | None]:
    """One CPU for the server, another for the clients, when there are two to give."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    mine = sorted(os.sched_getaffinity(0))
    return (mine[0], mine[1]) if len(mine) >= 2 else (None, None)


class Run:
    """A server variant and a client process; connections are added with ``connect``."""

    def __init__(self, variant: Variant) -> None:
        self.variant = variant
        self.n = 0  # healthy connections
        self.server: Child | None = None
        self.client: Child | None = None

    def __enter__(self) -> Run:
        server_cpu, client_cpu = cpus()
        try:
            pin = ["--cpu", str(server_cpu)] if server_cpu is not None else []
            self.server = Child(self.variant.key, [PYTHON, SERVER, self.variant.key, *pin])
            port = int(self.server.expect("port", timeout=30)[1])
            pin = ["--cpu", str(client_cpu)] if client_cpu is not None else []
            sio = ["--socketio"] if self.variant.key == "socketio-room" else []
            self.client = Child("clients", [PYTHON, CLIENT, str(port), *pin, *sio])
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for child in (self.client, self.server):
            if child is not None:
                child.kill()

    def connect(self, n: int, prefix: str, *, stalled: bool = False) -> None:
        """Open n more connections and wait until the server holds all of them."""
        assert self.server is not None
        assert self.client is not None
        total = self.stats()["sockets"] + n
        self.client.send(f"connect {n} {prefix} {int(stalled)}")
        self.client.expect("connected", timeout=30 + n / 20)
        if not stalled:
            self.n += n
        self.server.send(f"wait {total} 30")
        ready = int(self.server.expect("ready", timeout=40)[1])
        if ready < total:
            raise Failed(
                f"{self.variant.key}: {ready} of {total} connections registered; "
                f"server: {self.server.tail()}"
            )

    def stalled_cut_off(self, limit: float = 5.0) -> bool:
        """Whether the manager stopped writing to the stalled client (evicted) within ``limit``.

        Only that matters for the next control run; whether its socket is still open is
        reported separately.
        """
        end = time.monotonic() + limit
        while self.stats().get("stalled_state") not in (None, "DISCONNECTED"):
            if time.monotonic() > end:
                return False
            time.sleep(0.05)
        return True

    def sockets_down_to(self, n: int, limit: float) -> bool:
        """Whether the server holds at most n sockets within ``limit`` seconds."""
        end = time.monotonic() + limit
        while self.stats()["sockets"] > n:
            if time.monotonic() > end:
                return False
            time.sleep(0.05)
        return True

    def cpu(self) -> float:
        assert self.server is not None
        self.server.send("cpu")
        return float(self.server.expect("cpu", timeout=10)[1])

    def stats(self) -> dict[str, Any]:
        assert self.server is not None
        self.server.send("stats")
        result: dict[str, Any] = json.loads(self.server.expect("stats", timeout=10)[1])
        return result

    def round(self, m: int, size: int, mode: str, timeout: float) -> dict[str, Any]:
        """Fan m messages out to every connection; timed at the healthy clients."""
        assert self.server is not None
        assert self.client is not None
        n = self.n
        self.client.send(f"arm {m * frame_bytes(size, self.variant.key)} {timeout}")
        self.client.expect("armed", timeout=10)
        cpu0 = self.cpu()
        t0 = time.monotonic()
        self.server.send(f"go {m} {size} {mode} {timeout}")
        done = json.loads(self.client.expect("done", timeout=timeout + 15)[1])
        answer = self.server.expect("sent", "timeout", timeout=timeout + 15)
        cpu1 = self.cpu()
        server_done = answer[0] == "sent"
        complete = done["complete"] == n
        last = done["last"] - t0 if done["last"] is not None else None
        wall = last if complete else None
        return {
            "mode": mode,
            "n": n,
            "m": m,
            "size": size,
            "complete": complete,
            "clients_complete": done["complete"],
            "bytes_missing": done["bytes_missing"],
            # the server finished its job (every message written or dropped) within the timeout
            "server_done": server_done,
            "send_errors": int(answer[1].split()[1]) if server_done else None,
            "wall_s": wall,
            "last_byte_s": last,
            "median_client_s": done["median"] - t0 if done["median"] is not None else None,
            "longest_pause_s": done["longest_pause"],
            "cpu_s": cpu1 - cpu0,
            "cpu_us_per_delivery": (cpu1 - cpu0) / (n * m) * 1e6,
            "deliveries_per_s": n * m / wall if wall else None,
            # with the clients' latency mode on (run_all.py): delays of the healthy clients
            "latency": done.get("latency"),
        }

    def latency(self, on: bool) -> None:
        """Turn the clients' per-message latency notes on or off (for the next rounds)."""
        assert self.client is not None
        self.client.send(f"latency {int(on)}")
        self.client.expect("latency", timeout=10)


def median_of(rounds: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rounds if r[key] is not None and r["complete"]]
    return statistics.median(values) if values else None


def round_timeout(n: int, m: int) -> float:
    """Generous for the slowest variant here (~150 µs per delivery), and still bounded."""
    return 30 + n * m * 300e-6


def modes_of(variant: Variant) -> tuple[str, ...]:
    if variant.key.startswith("wsfleet"):
        return ("single", "burst", "batch")
    return ("single", "burst")


#: Variants measured side by side: their rounds alternate (A, B, C, A, B, C ...), so a change
#: in the machine's load (it is shared) hits a wsfleet variant and its baseline alike.
GROUPS = (
    ("ws-broadcast", "wsfleet-ws-asyncio"),
    ("trio-ws-loop", "wsfleet-trio-ws", "wsfleet-ws-trio"),
    ("starlette-loop", "wsfleet-asgi"),
)
MODES = ("single", "burst", "batch")


def groups_of(keys: list[str]) -> list[list[str]]:
    """``keys`` in measuring groups, each variant once, in the order of ``keys``."""
    out: list[list[str]] = []
    placed: set[str] = set()
    for key in keys:
        if key in placed:
            continue
        group = next((g for g in GROUPS if key in g), (key,))
        members = [k for k in keys if k in group]
        placed.update(members)
        out.append(members)
    return out


def summary(m: int, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "m": m,
        "rounds": rounds,
        "cpu_us_per_delivery": median_of(rounds, "cpu_us_per_delivery"),
        "deliveries_per_s": median_of(rounds, "deliveries_per_s"),
        "wall_s": median_of(rounds, "wall_s"),
        "complete": all(r["complete"] and r["server_done"] for r in rounds),
    }


def measure_group(keys: list[str], sizes: list[int], quick: bool) -> dict[str, Any]:
    """Every mode at every N for a group of variants, their rounds alternating.

    Each variant has its own server and client processes for the whole group; idle ones cost
    nothing (no keepalive). The fleets grow from one N to the next.
    """
    out: dict[str, Any] = {}
    runs: dict[str, Run] = {}

    def fail(key: str, exc: Failed) -> None:
        out[key] = {"error": str(exc)}
        run = runs.pop(key, None)
        if run is not None:
            run.__exit__()
        print(f"    {key} failed: {exc}", flush=True)

    with contextlib.ExitStack() as stack:
        for key in keys:
            try:
                runs[key] = stack.enter_context(Run(BY_KEY[key]))
                out[key] = {"rss_base": runs[key].stats().get("rss")}
            except Failed as exc:
                fail(key, exc)
        for n in sizes:
            for key, run in list(runs.items()):
                try:
                    run.connect(n - run.n, f"n{n}-")
                    run.round(5, SIZE, "single", 30)  # warm-up: allocations, socket buffers
                    # the server's resident memory with n connections, warmed up
                    out[key].setdefault(str(n), {})["rss"] = run.stats().get("rss")
                except Failed as exc:
                    fail(key, exc)
            reps = 1 if quick or n > 1_000 else 3
            for mode in MODES:
                m = SINGLE_M_LARGE if mode == "single" and n > 1_000 else M
                active = [k for k in runs if mode in modes_of(BY_KEY[k])]
                rounds: dict[str, list[dict[str, Any]]] = {k: [] for k in active}
                began = time.monotonic()
                for rep in range(reps):
                    # Fewer repetitions when one round is long enough to average by itself.
                    if rep and time.monotonic() - began > 3.0 * len(active):
                        break
                    for key in active:
                        if key in runs:
                            try:
                                rounds[key].append(
                                    runs[key].round(m, SIZE, mode, round_timeout(n, m))
                                )
                            except Failed as exc:
                                fail(key, exc)
                for key in active:
                    if key in runs:
                        out[key].setdefault(str(n), {})[mode] = summary(m, rounds[key])
    return out


def stalled_scenario(
    variant: Variant, plan: dict[str, Any], *, latency: bool = False
) -> dict[str, Any]:
    """Control runs with healthy clients only, and runs with one client that never reads.

    A wsfleet variant evicts the stalled client, so the runs alternate (control, stalled,
    control, stalled ...) with a fresh stalled client each time, and the delay is the median
    of the pairs' differences. A plain variant keeps its stalled client (or stays blocked on
    it), so it gets a few controls and then one run with the stalled client. With
    ``latency``, every measured round also carries the healthy clients' per-message delays.
    """
    m = plan["messages"]
    # "stream", or "stream:<rate>": paced at ``rate`` messages per second (run_all.py)
    stream = f"stream:{plan['rate']}" if plan.get("rate") else "stream"
    evicts = variant.key.startswith("wsfleet")
    controls: list[dict[str, Any]] = []
    stalled: list[dict[str, Any]] = []
    result: dict[str, Any] = {"controls": controls, "stalled_runs": stalled}
    with Run(variant) as run:
        run.connect(plan["healthy"], "h")
        run.round(plan["warmup"], STALL_SIZE, "stream", 60)  # grows the TCP buffers first
        if latency:
            run.latency(True)
        if not evicts:
            for _ in range(plan["plain_controls"] - 1):
                controls.append(run.round(m, STALL_SIZE, stream, plan["control_timeout"]))
        for i in range(plan["pairs"] if evicts else 1):
            control = run.round(m, STALL_SIZE, stream, plan["control_timeout"])
            controls.append(control)
            if not control["complete"]:
                result["note"] = "a control run did not complete"
                break
            run.connect(1, f"stalled{i}-", stalled=True)
            limit = max(plan["min_timeout"], 2 * control["wall_s"] + 2)
            run_ = run.round(m, STALL_SIZE, stream, limit)
            run_["timeout_s"] = limit
            run_["server_stats"] = run.stats()
            stalled.append(run_)
            if not run_["complete"]:
                break
            if evicts:
                if not run.stalled_cut_off():
                    result["note"] = "the manager still wrote to the stalled client after the run"
                    break
                run_["socket_open_2s_later"] = not run.sockets_down_to(run.n, 2.0)
    walls = [c["wall_s"] for c in controls if c["complete"]]
    if walls:
        result["control_s"] = statistics.median(walls)
        result["control_spread_s"] = max(walls) - min(walls)
        result["control_pause_s"] = max(c["longest_pause_s"] for c in controls if c["complete"])
    if stalled and all(r["complete"] for r in stalled) and walls:
        if evicts:
            diffs = [r["wall_s"] - c["wall_s"] for c, r in zip(controls, stalled, strict=False)]
        else:
            diffs = [stalled[0]["wall_s"] - result["control_s"]]
        result["delays_s"] = diffs
        result["delay_s"] = statistics.median(diffs)
    return result


# -- report ------------------------------------------------------------------------------

#: What issue 4 measured with the same kind of harness on its machine (N = 1,000), µs/delivery.
ISSUE_REFERENCE = {"ws-broadcast": 18.0, "starlette-loop": 22.0, "trio-ws-loop": 88.0}


def fmt(value: float | None, spec: str, none: str = "n/a") -> str:
    return none if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def verdict(value: float | None, target: float) -> str:
    if value is None:
        return "not measured"
    return "**met**" if value <= target else "**not met**"


def not_run(entry: dict[str, Any]) -> str | None:
    why = entry.get("missing") or entry.get("error")
    return None if why is None else f"not run: {why}"


def fanout_section(results: dict[str, Any], meta: dict[str, Any]) -> str:
    rows = []
    for n_key in meta["sizes"]:
        for key in meta["variants"]:
            label = BY_KEY[key].label
            entry = results["fanout"].get(key, {})
            why = not_run(entry)
            cell = entry.get(str(n_key))
            if why is not None or cell is None:
                rows.append((f"{n_key:,}", label, *["-"] * 6, why or "not run"))
                continue
            s, b, q = cell["single"], cell["burst"], cell.get("batch")
            notes = []
            if not (s["complete"] and b["complete"]):
                notes.append("incomplete round(s)")
            reference = ISSUE_REFERENCE.get(key)
            if reference is not None and n_key == 1_000:
                notes.append(f"issue: {reference:g} µs")
            if s.get("m", M) != M:
                notes.append(f"single: {s['m']} messages")
            rows.append(
                (
                    f"{n_key:,}",
                    label,
                    fmt(s["deliveries_per_s"], ",.0f"),
                    fmt(s["cpu_us_per_delivery"], ".2f"),
                    fmt(b["deliveries_per_s"], ",.0f"),
                    fmt(b["cpu_us_per_delivery"], ".2f"),
                    "-" if q is None else fmt(q["deliveries_per_s"], ",.0f"),
                    "-" if q is None else fmt(q["cpu_us_per_delivery"], ".2f"),
                    "; ".join(notes),
                )
            )
    rounds = "median of up to 3 rounds per cell at N = 1,000, 1 round at N = 5,000"
    if meta["quick"]:
        rounds = "1 round per cell"
    if meta["batch_api"]:
        batch = "batch"
        batch_text = (
            "batch: the same burst inside `async with manager.batch():`, which queues it whole "
            "before anything is written, so each connection gets its 100 messages as one "
            "batch (one write where the library allows it)."
        )
    else:
        batch = "burst queued in one step (diagnostic)"
        batch_text = (
            "The batch columns are not a way an application can fan out with this version: "
            "they queue the whole burst through the manager's private `_send_to_connections` "
            "before the flusher runs once, to show what coalescing per connection gives."
        )
    return (
        f"## Fan-out: N connections, M = {M} messages of {SIZE} B to all ({rounds})\n\n"
        + table(
            [
                "N",
                "variant",
                "single: deliveries/s",
                "single: server CPU µs/delivery",
                "burst: deliveries/s",
                "burst: server CPU µs/delivery",
                f"{batch}: deliveries/s",
                f"{batch}: server CPU µs/delivery",
                "note",
            ],
            rows,
        )
        + f"\n\nIn single mode at N = 5,000 every variant fans out {SINGLE_M_LARGE} messages, "
        "not 100: each message is then a fan-out of its own, so the figures per delivery do "
        "not depend on the count, and it keeps the full run within about ten minutes. "
        "burst: `await manager.broadcast(m)` 100 times back to back (each call yields to the "
        "event loop; the flusher waits while such calls keep coming, up to 64 calls, so a "
        "burst goes out in a few writes per connection). " + batch_text + "\n"
    )


def stall_outcome(entry: dict[str, Any]) -> str:
    """What happened to the healthy clients and to the stalled ones, in words."""
    runs = entry["stalled_runs"]
    parts = []
    served = sum(r["complete"] for r in runs)
    if served:
        parts.append(f"all healthy clients served in {served}/{len(runs)} run(s)")
    for run in runs:
        if not run["complete"]:
            parts.append(
                f"**blocked**: {run['clients_complete']}/{run['n']} healthy clients complete "
                f"when cut off after {run['timeout_s']:.0f} s, "
                f"{run['bytes_missing'] / 2**20:,.0f} MiB undelivered"
            )
    unfinished = sum(r["complete"] and not r["server_done"] for r in runs)
    if unfinished:
        parts.append(f"the server's job did not end in {unfinished} run(s)")
    last = runs[-1].get("server_stats", {}) if runs else {}
    if "stalled_state" in last:
        states = sorted({r["server_stats"].get("stalled_state") or "unregistered" for r in runs})
        parts.append("stalled client right after the run: " + " / ".join(states))
        still_open = sum(bool(r.get("socket_open_2s_later")) for r in runs)
        if still_open:
            parts.append(f"its socket still open 2 s later in {still_open}/{len(runs)} run(s)")
        drops = last.get("drops") or {}
        if drops:
            parts.append("drops in all: " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items())))
    elif "stalled_connected" in last:
        parts.append("stalled client " + ("still held" if last["stalled_connected"] else "gone"))
    if entry.get("note"):
        parts.append(entry["note"])
    return "; ".join(parts)


def stall_section(results: dict[str, Any], meta: dict[str, Any]) -> str:
    plan = meta["stall"]
    rows = []
    for key in meta["variants"]:
        label = BY_KEY[key].label
        entry = results["stalled"].get(key, {})
        why = not_run(entry) or (None if entry else "not run")
        if why is not None:
            rows.append((label, "-", "-", "-", "-", why))
            continue
        control = entry.get("control_s")
        runs = entry["stalled_runs"]
        if control is None or not runs:
            rows.append((label, fmt(control, ".3f"), "-", "-", "-", stall_outcome(entry)))
            continue
        delays = entry.get("delays_s")
        walls = [r["wall_s"] for r in runs]
        pauses = [r["longest_pause_s"] for r in runs]
        rows.append(
            (
                label,
                f"{control:.3f} ({len(entry['controls'])} runs, spread "
                f"{entry['control_spread_s'] * 1e3:.0f} ms)",
                ", ".join(fmt(w, ".3f", "did not finish") for w in walls),
                "-"
                if delays is None
                else f"{entry['delay_s'] * 1e3:+.0f} ("
                + ", ".join(f"{d * 1e3:+.0f}" for d in delays)
                + ")",
                f"{entry['control_pause_s'] * 1e3:.0f} / "
                + ", ".join(f"{p * 1e3:,.0f}" for p in pauses),
                stall_outcome(entry),
            )
        )
    return (
        f"## Stalled client: {plan['healthy']:,} healthy clients + 1 that never reads, "
        f"{plan['messages']:,} messages of 16 KiB to all\n\n"
        "Every variant streams the messages one after another, yielding to the event loop "
        "between two, then waits until all are written (or dropped). A wsfleet producer "
        "also waits while the manager holds more than 2 MiB queued in all (`stats()."
        "queued_bytes`): without that, a producer outruns the writers of the adapters that "
        "cannot coalesce (trio-websocket, ASGI) and every client passes the 1 MiB bound, "
        "healthy or not. The wsfleet variants evict a client 1 MiB behind (close 1008), so "
        f"their runs alternate control / stalled ({plan['pairs']} pair(s), a fresh stalled "
        "client each time) and the delay is the median of the pairs' differences (each pair in "
        f"brackets). The plain variants have no bound on a slow client: {plan['plain_controls']} "
        "controls, then one "
        "run with the stalled client, cut off at twice the control's time + 2 s (at least "
        f"{plan['min_timeout']:.0f} s). Longest pause: the longest any healthy client waited "
        "for its next bytes once its first had come.\n\n"
        + table(
            [
                "variant",
                "control: last delivery s",
                "with the stalled client: last delivery s",
                "delay ms",
                "longest pause ms: control / with stalled",
                "what happened",
            ],
            rows,
        )
        + "\n"
    )


TARGET_PAIRS = (
    (
        "wsfleet-ws-asyncio",
        "ws-broadcast",
        "single",
        1.0,
        "websockets adapter ≤ 1.0x websockets' `broadcast()`, single messages",
    ),
    (
        "wsfleet-ws-asyncio",
        "ws-broadcast",
        "burst",
        0.25,
        "websockets adapter ≤ 0.25x websockets' `broadcast()`, bursts",
    ),
    (
        "wsfleet-ws-asyncio",
        "ws-broadcast",
        ("batch", "burst"),
        0.25,
        "websockets adapter ≤ 0.25x websockets' `broadcast()`, bursts inside `manager.batch()`",
    ),
    (
        "wsfleet-trio-ws",
        "trio-ws-loop",
        "single",
        0.5,
        "trio-websocket adapter ≤ 0.5x the plain trio-websocket loop, single messages",
    ),
    (
        "wsfleet-trio-ws",
        "trio-ws-loop",
        "burst",
        0.5,
        "trio-websocket adapter ≤ 0.5x the plain trio-websocket loop, bursts",
    ),
    (
        "wsfleet-trio-ws",
        "trio-ws-loop",
        ("batch", "burst"),
        0.5,
        "trio-websocket adapter ≤ 0.5x the plain trio-websocket loop, bursts inside "
        "`manager.batch()`",
    ),
    (
        "wsfleet-ws-trio",
        "trio-ws-loop",
        "single",
        0.5,
        "second trio adapter (websockets on trio) ≤ 0.5x the plain trio-websocket loop, single",
    ),
    (
        "wsfleet-ws-trio",
        "trio-ws-loop",
        "burst",
        0.5,
        "second trio adapter (websockets on trio) ≤ 0.5x the plain trio-websocket loop, bursts",
    ),
    (
        "wsfleet-ws-trio",
        "trio-ws-loop",
        ("batch", "burst"),
        0.5,
        "second trio adapter (websockets on trio) ≤ 0.5x the plain trio-websocket loop, bursts "
        "inside `manager.batch()`",
    ),
)


def targets_section(results: dict[str, Any], meta: dict[str, Any]) -> str:
    rows = []
    for mine, theirs, mode, bound, what in TARGET_PAIRS:
        for n_key in meta["sizes"]:
            mode_a, mode_b = mode if isinstance(mode, tuple) else (mode, mode)
            a = results["fanout"].get(mine, {}).get(str(n_key), {}).get(mode_a, {})
            b = results["fanout"].get(theirs, {}).get(str(n_key), {}).get(mode_b, {})
            x, y = a.get("cpu_us_per_delivery"), b.get("cpu_us_per_delivery")
            r = ratio(x, y)
            rows.append(
                (
                    what,
                    f"{n_key:,}",
                    f"{fmt(x, '.2f')} / {fmt(y, '.2f')} µs = {fmt(r, '.2f')}x",
                    verdict(r, bound),
                )
            )
    for key in meta["variants"]:
        if not key.startswith("wsfleet"):
            continue
        entry = results["stalled"].get(key, {})
        runs = entry.get("stalled_runs") or []
        what = f"a stalled client delays the others <= 50 ms: {BY_KEY[key].label}"
        healthy = f"{meta['stall']['healthy']:,}"
        if not runs:
            rows.append((what, healthy, "not measured", "not measured"))
            continue
        if not all(r["complete"] for r in runs):
            rows.append((what, healthy, "healthy clients did not finish", "**not met**"))
            continue
        delay = entry["delay_s"]
        spread = entry["control_spread_s"]
        shown = f"{delay * 1e3:+.0f} ms (control runs differ by up to {spread * 1e3:.0f} ms)"
        mark = verdict(delay, 0.050)
        if spread > 0.050:
            mark += " (within the runs' own spread, which exceeds 50 ms)"
        rows.append((what, healthy, shown, mark))
    return (
        "## Targets of issue 4, from this run\n\n"
        "CPU ratios divide server CPU µs per delivery, same run, same N, same mode.\n\n"
        + table(["target", "N", "measured", "verdict"], rows)
        + "\nThe trio-websocket adapter's rows are the case the issue foresaw: trio-websocket's "
        "public API writes one message per call (`send_message`, one `send_all` each) and has "
        "no batch write, so that adapter cannot coalesce and is kept as the trio default users "
        "expect; the second trio adapter, `wsfleet.adapters.websockets` over websockets' own "
        "trio implementation, is the one held to the ≤ 0.5x target.\n"
    )


def method_section(meta: dict[str, Any]) -> str:
    server_cpu, client_cpu = meta["cpus"]
    pinned = (
        f"pinned to CPU {server_cpu} (server) and CPU {client_cpu} (clients)"
        if server_cpu is not None
        else "not pinned (fewer than 2 CPUs)"
    )
    return (
        "## How it was measured\n\n"
        f"- Server and clients are separate processes on 127.0.0.1, {pinned}, on a "
        f"{os.cpu_count()}-CPU machine. Clients are raw TCP sockets that do the WebSocket "
        "handshake by hand and then only count bytes (66 per 64-byte text frame, 16,388 per "
        "16 KiB frame).\n"
        "- Deliveries/s = N x M / (last byte at the clients - the moment `go` was sent to the "
        "server); server CPU µs/delivery = the server process's `time.process_time()` delta "
        "/ (N x M). Each N starts with an unmeasured round of 5 messages; the fleet grows from "
        "1,000 to 5,000 connections in the same processes. A wsfleet variant and the plain "
        "variant it is compared with are measured side by side, their rounds alternating "
        "(websockets asyncio; trio-websocket and websockets on trio; Starlette), so that the "
        "load of this shared machine, which varies, weighs on both alike.\n"
        "- No keepalive anywhere, no compression (`compression=None`; the raw clients offer no "
        "extension, so hypercorn negotiates none), no wsfleet heartbeat. wsfleet runs with "
        '`OverflowPolicy(max_messages=4096, max_bytes=1 MiB, action="disconnect")`.\n'
        "- single: wsfleet waits after each `await manager.broadcast(m)` until the manager's "
        "counters say every queued message was handed to its transport "
        "(`stats().queued_messages == 0` and `sent_messages` + drops up to the count "
        "`broadcast` returned; up to 20 bare checkpoints, then 0.5 ms sleeps); websockets' "
        "`broadcast()` writes at once and the job then yields once to the event loop; the "
        "plain trio-websocket and Starlette loops await every send (`for ws in conns: await "
        "ws.send_message(m)` / `send_text(m)`), so their burst runs the same code as their "
        "single.\n"
        "- burst: wsfleet calls `await manager.broadcast(m)` M times back to back, then waits "
        "as above; websockets' `broadcast()` is called M times without yielding.\n"
        f"- The whole run took {meta['elapsed_s']:.0f} s.\n"
    )


def build_report(results: dict[str, Any], meta: dict[str, Any]) -> str:
    parts = [
        fanout_section(results, meta),
        stall_section(results, meta),
        targets_section(results, meta),
        method_section(meta),
    ]
    if meta.get("stall_deviation"):
        parts.insert(2, meta["stall_deviation"] + "\n")
    return "\n".join(parts)


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="N = 1,000 only, fewer rounds")
    parser.add_argument(
        "--variants", default=",".join(DEFAULT_VARIANTS), help="comma-separated keys"
    )
    parser.add_argument("--sizes", default=None, help="comma-separated N (default 1000,5000)")
    parser.add_argument("--no-stall", action="store_true", help="skip the stalled-client runs")
    parser.add_argument("--no-fanout", action="store_true", help="only the stalled-client runs")
    parser.add_argument("--no-write", action="store_true", help="print, do not write results")
    args = parser.parse_args()
    quick = args.quick
    if args.sizes:
        sizes = sorted(int(s) for s in args.sizes.split(","))
    else:
        sizes = [1_000] if quick else [1_000, 5_000]
    keys = [k for k in args.variants.split(",") if k]
    unknown = [k for k in keys if k not in BY_KEY]
    if unknown:
        parser.error(f"unknown variant(s): {', '.join(unknown)}")
    stall = {
        "healthy": STALL_HEALTHY,
        "messages": STALL_MESSAGES,
        "warmup": 50 if quick else 100,
        "pairs": 2 if quick else 5,
        "plain_controls": 2 if quick else 3,
        "control_timeout": 60.0,
        "min_timeout": 5.0,
    }
    budget = Deadline(170 if quick else 660)
    started = time.monotonic()
    results: dict[str, Any] = {"fanout": {}, "stalled": {}}

    def progress(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {text}", flush=True)

    available: dict[str, str | None] = {key: missing(BY_KEY[key]) for key in keys}
    present: list[str] = []
    for key in keys:
        why = available[key]
        if why is not None:
            results["fanout"][key] = {"missing": why}
        else:
            present.append(key)
    for group in [] if args.no_fanout else groups_of(present):
        if budget.passed():
            for key in group:
                results["fanout"][key] = {"error": "skipped: time budget spent"}
            continue
        progress("fan-out: " + ", ".join(BY_KEY[k].label for k in group))
        results["fanout"].update(measure_group(group, sizes, quick))
    for key in [] if args.no_stall else keys:
        why = available[key]
        if why is not None:
            results["stalled"][key] = {"missing": why}
            continue
        if budget.passed():
            results["stalled"][key] = {"error": "skipped: time budget spent"}
            continue
        progress(f"stalled client: {BY_KEY[key].label}")
        try:
            results["stalled"][key] = stalled_scenario(BY_KEY[key], stall)
        except Failed as exc:
            results["stalled"][key] = {"error": str(exc)}
            progress(f"  failed: {exc}")
    meta = {
        "quick": quick,
        "sizes": sizes,
        "variants": keys,
        "m": M,
        "size": SIZE,
        "stall": stall,
        "stall_deviation": STALL_DEVIATION,
        "batch_api": batch_api(),
        "cpus": cpus(),
        "elapsed_s": time.monotonic() - started,
    }
    results["meta"] = meta
    body = build_report(results, meta)
    progress("done")
    if args.no_write:
        print(body)
        return
    command = "python benchmarks/fanout_bench.py" + (" --quick" if quick else "")
    write(
        "fanout", "Fan-out over loopback: wsfleet and the plain libraries", command, body, results
    )


if __name__ == "__main__":
    main()
