"""Fan-out over real loopback sockets: each wsfleet adapter against its plain peer.

    python benchmarks/fanout_bench.py [--quick]   # writes benchmarks/results/fanout.md/.json
    python benchmarks/fanout_bench.py --smoke     # every variant, mode and size, tiny; seconds

Every server variant runs in a process of its own (``_fanout_server.py``, pinned to one CPU),
the clients in another (``_fanout_client.py``, pinned to the other CPU): raw TCP sockets that
do the WebSocket handshake by hand and then only count bytes, so the client side costs as
little as it can. Every wsfleet variant is measured beside the plain peer(s) that a user of
the same library on the same server writes by hand (``Variant.peers``): a set of sockets and
``for ws in sockets: await ws.send(m)``, or the library's own helper where it has one
(websockets' ``broadcast()`` on asyncio; on trio on request, ``ws-trio-broadcast``). ASGI
runs one FastAPI app under uvicorn and under hypercorn, the docs' ConnectionManager against
wsfleet's endpoint on the same server.

Every variant does the same job: N connections, then M messages of each message size
(64 B and 4 KiB unless ``--message-sizes`` says otherwise) to all of them, in these modes:

* ``single``: each message is written to every connection before the next one goes
  (wsfleet: ``await manager.broadcast(m)``, then wait until the manager's counters say all
  was written; the plain loops do it by nature; websockets' ``broadcast()`` writes at once
  and yields to the event loop once); 40 messages at N = 1,000, 20 above, 10 in ``--quick``
  (each message is a fan-out of its own, so the figures per delivery do not depend on the
  count);
* ``burst``: 100 messages handed over back to back, then wait until all are written;
* ``batch`` (wsfleet only, not in ``--quick``): the burst inside ``async with
  manager.batch()``, which queues it whole first, so each connection's messages can go out
  in one write.

Measured per variant, message size, mode and N: the server's CPU µs per delivery (its
``process_time`` delta over N*M) and deliveries per second (N*M over the wall time from "go"
to the last byte at the clients). The CPU figures are compared as ratios, wsfleet ÷ peer, of
rounds that alternate between the two in the same run, so that the load of a shared machine
weighs on both alike. Memory per idle connection, at the first N: the server's resident
memory (after a full garbage collection) with N idle connections minus the same with 16
warm connections, over N - 16; the median of the fan-out's process and two fresh ones (one
in ``--quick``), since it varies from one process to the next.

Then the stalled-client scenario: 100 healthy clients plus one that handshakes and never
reads while 500 messages of 16 KiB go to all (scaled down from issue 4's 1,000 clients and
2,000 messages; see ``STALL_DEVIATION``); the healthy clients' last delivery is compared
with control runs without the stalled one. The wsfleet variants evict a client 1 MiB behind
(``OverflowPolicy(max_bytes=1 MiB, action="disconnect")``); the plain ones have no such
bound, and the run is cut at a timeout if they block.

``--quick`` (N = 1,000, one round per cell, no batch rounds, one memory sample, no stalled
client unless ``--stall-variants`` names some) takes about three minutes on 2 CPUs; the full
run (N = 1,000 and 5,000) took forty minutes while other work shared the CPUs.
Further peers can be named with ``--variants`` (``benchmarks/run_all.py`` measures some of
them; they need the ``bench`` extra): ``ws-trio-broadcast``, ``starlette-loop``,
``socketio-room`` and ``raw-floor`` (see ``_fanout_server.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import (
    PYTHON,
    RESULTS,
    Child,
    Deadline,
    Failed,
    cli,
    cpus,
    environment,
    summarise,
    table,
    write,
)

SERVER = str(HERE / "_fanout_server.py")
CLIENT = str(HERE / "_fanout_client.py")

#: Messages per burst (and per round of every mode in ``measure_group``, run_all.py's call).
M = 100
#: The message size of ``measure_group`` (run_all.py); fanout_bench.py runs MESSAGE_SIZES.
SIZE = 64
MESSAGE_SIZES = (64, 4096)
STALL_SIZE = 16 * 1024
#: ``measure_group`` (run_all.py): single mode above N = 1,000 fans out this many messages.
SINGLE_M_LARGE = 50
#: Connections opened and sent to before the memory baseline is taken, so that what the first
#: connections of a server import and allocate once (protocol modules, codecs, buffers) does
#: not count as memory per connection.
WARM = 16
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

#: Issue 13's targets, wsfleet ÷ its peer: CPU per delivery on single messages and on bursts
#: (``batch`` is a burst too), and memory per idle connection.
CPU_TARGET = {"single": 1.0, "burst": 0.5, "batch": 0.5}
MEMORY_TARGET_BYTES = 2 * 1024


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    #: what the variant needs to import (comma-separated), if anything beyond the harness
    module: str | None
    #: a wsfleet variant's plain peers on the same library and server, its plain loop first
    peers: tuple[str, ...] = ()


VARIANTS = (
    Variant("ws-loop", "websockets loop (asyncio)", None),
    Variant("ws-broadcast", "websockets broadcast() (asyncio)", None),
    Variant(
        "wsfleet-ws-asyncio",
        "wsfleet + websockets (asyncio)",
        "wsfleet.adapters.websockets",
        ("ws-loop", "ws-broadcast"),
    ),
    Variant("ws-trio-loop", "websockets loop (trio)", None),
    Variant(
        "wsfleet-ws-trio",
        "wsfleet + websockets (trio)",
        "wsfleet.adapters.websockets",
        ("ws-trio-loop",),
    ),
    Variant("trio-ws-loop", "trio-websocket loop", "trio_websocket"),
    Variant(
        "wsfleet-trio-ws",
        "wsfleet + trio-websocket",
        "wsfleet.adapters.trio_websocket",
        ("trio-ws-loop",),
    ),
    Variant("fastapi-docs", "FastAPI-docs ConnectionManager (uvicorn)", "fastapi, uvicorn"),
    Variant(
        "wsfleet-asgi-uvicorn",
        "wsfleet + ASGI (FastAPI, uvicorn)",
        "wsfleet.adapters.asgi, fastapi, uvicorn",
        ("fastapi-docs",),
    ),
    Variant(
        "fastapi-docs-hypercorn",
        "FastAPI-docs ConnectionManager (hypercorn)",
        "fastapi, hypercorn",
    ),
    Variant(
        "wsfleet-asgi",
        "wsfleet + ASGI (FastAPI, hypercorn)",
        "wsfleet.adapters.asgi, fastapi, hypercorn",
        ("fastapi-docs-hypercorn",),
    ),
    # Further peers, measured by benchmarks/run_all.py (and here on request).
    Variant("ws-trio-broadcast", "websockets broadcast() (trio)", None),
    Variant("starlette-loop", "Starlette loop (hypercorn)", "starlette, hypercorn"),
    Variant("socketio-room", "python-socketio room emit (uvicorn)", "socketio, uvicorn"),
    Variant("raw-floor", "raw floor: encode once, write to every transport", None),
    # A diagnostic (compare.py): the same as wsfleet-ws-asyncio with the producer's
    # BackpressurePolicy off, so the library's cost can be told from the policy's waits.
    Variant(
        "wsfleet-ws-asyncio-nobp",
        "wsfleet + websockets (asyncio), backpressure=None",
        "wsfleet.adapters.websockets",
    ),
)
#: What fanout_bench.py measures unless told otherwise: every wsfleet variant and its peers.
DEFAULT_VARIANTS = tuple(v.key for v in VARIANTS[:11])
BY_KEY = {v.key: v for v in VARIANTS}
WSFLEET = tuple(v.key for v in VARIANTS if v.peers)


def frame_bytes(size: int, variant: str = "") -> int:
    """A server-to-client (unmasked) text frame of a ``size``-byte message, on the wire.

    python-socketio sends the message as the event ``42["m","<message>"]``: 10 bytes more.
    """
    if variant == "socketio-room":
        size += 10
    return size + (2 if size < 126 else 4 if size < 65536 else 10)


#: Imports every variant's modules in one fresh process (the benchmark's own imports do not
#: count) and prints, per variant, why it cannot run (the import's error) or null.
PROBE = """
import importlib, json, sys
out = {}
for key, modules in json.loads(sys.argv[1]).items():
    try:
        for name in modules.split(","):
            importlib.import_module(name.strip())
    except Exception as exc:
        out[key] = f"{type(exc).__name__}: {exc}"
    else:
        out[key] = None
print(json.dumps(out))
"""
_missing: dict[str, str | None] = {}


def missing(variant: Variant) -> str | None:
    """Why the variant cannot run here (its adapter does not import), or None. Every
    variant is probed at the first call, in one process."""
    if variant.module is None:
        return None
    if not _missing:
        wanted = {v.key: v.module for v in VARIANTS if v.module is not None}
        probe = subprocess.run(
            [PYTHON, "-c", PROBE, json.dumps(wanted)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        try:
            _missing.update(json.loads(probe.stdout))
        except ValueError:
            lines = probe.stderr.strip().splitlines()
            return lines[-1] if lines else "the import probe failed"
    return _missing.get(variant.key, f"import {variant.module} not probed")


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

    def memory(self) -> int | None:
        """The server's resident memory in bytes, after a full garbage collection."""
        assert self.server is not None
        self.server.send("memory")
        value = self.server.expect("memory", timeout=30)[1]
        return None if value == "None" else int(value)

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
    """The median of the complete rounds' figures."""
    summary = summarise(r[key] for r in rounds if r["complete"])
    return None if summary is None else summary.median


def round_timeout(n: int, m: int, size: int = SIZE) -> float:
    """Generous for the slowest variant here (~160 µs per 64-byte delivery, more for larger
    messages), and still bounded."""
    return 30 + n * m * (300e-6 + size * 50e-9)


def modes_of(variant: Variant) -> tuple[str, ...]:
    if variant.key.startswith("wsfleet"):
        return ("single", "burst", "batch")
    return ("single", "burst")


#: Variants measured side by side: their rounds alternate (A, B, C, A, B, C ...), so a change
#: in the machine's load (it is shared) hits a wsfleet variant and its peers alike.
GROUPS = (
    ("ws-loop", "ws-broadcast", "wsfleet-ws-asyncio", "raw-floor", "wsfleet-ws-asyncio-nobp"),
    ("ws-trio-loop", "ws-trio-broadcast", "wsfleet-ws-trio"),
    ("trio-ws-loop", "wsfleet-trio-ws"),
    ("fastapi-docs", "wsfleet-asgi-uvicorn", "socketio-room"),
    ("fastapi-docs-hypercorn", "wsfleet-asgi", "starlette-loop"),
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


@dataclass(frozen=True)
class Counts:
    """How much one ``measure_cells`` call sends, and how often it repeats itself."""

    #: messages per round in single mode at N
    single: Callable[[int], int]
    #: messages per burst (and per batch)
    burst: int
    modes: tuple[str, ...] = MODES
    #: rounds per cell at N <= 1,000 (fewer when one round is long enough); 1 above
    reps: int = 3
    #: fresh server processes that measure memory per idle connection again, at the first N
    memory_samples: int = 0


def full_single(n: int) -> int:
    """Single mode's messages: each is a fan-out of its own, so the figure per delivery does
    not depend on the count; 40 fan-outs at N <= 1,000, 20 above keep the rounds short."""
    return 40 if n <= 1_000 else 20


FULL = Counts(single=full_single, burst=M, reps=3, memory_samples=2)
QUICK = Counts(single=lambda n: 10, burst=M, modes=("single", "burst"), reps=1)


def memory_sample(key: str, n: int, message_sizes: tuple[int, ...]) -> float:
    """Bytes per idle connection in a fresh server: WARM connections sent one round of each
    size, then n - WARM more, which are sent nothing (resident memory after gc.collect)."""
    with Run(BY_KEY[key]) as run:
        run.connect(WARM, "w")
        for size in message_sizes:
            run.round(5, size, "single", 30)
        base = run.memory()
        run.connect(n - WARM, "m")
        idle = run.memory()
    if base is None or idle is None:
        raise Failed(f"{key}: no resident memory figure on this system")
    return (idle - base) / (n - WARM)


def measure_cells(
    keys: list[str],
    ns: list[int],
    message_sizes: tuple[int, ...],
    counts: Counts,
) -> dict[str, Any]:
    """Every message size and mode at every N for a group of variants, their rounds
    alternating; and each server's memory with idle connections.

    Each variant has its own server and client processes for the whole group; idle ones cost
    nothing (no keepalive). First WARM connections, one round of each message size to them,
    and the server's memory then is the baseline; the fleets then grow to each N in turn,
    and the server's memory is read again before anything is sent to the new connections.
    Memory per idle connection varies from one process to the next (by ~1.3 KiB for the
    same websockets server: the C allocator's heap grows by one of two amounts), so
    ``counts.memory_samples`` fresh processes per variant measure it again at the first N.

    Returns, per variant: ``rss_empty`` (the server before any connection), ``rss_base``,
    ``memory`` {N: ``idle_rss``, ``warm_rss`` (after one round of each size to all),
    ``after_rss`` (after every round at N)}, ``idle_samples`` (bytes per idle connection at
    the first N: this run's, then the fresh processes') and ``sizes`` {size: {N: {mode:
    summary}}}.
    """
    out: dict[str, Any] = {}
    runs: dict[str, Run] = {}

    def fail(key: str, exc: Failed) -> None:
        out[key] = {"error": str(exc)}
        run = runs.pop(key, None)
        if run is not None:
            run.__exit__()
        print(f"    {key} failed: {exc}", flush=True)

    def each(step: Callable[[str, Run], None]) -> None:
        for key, run in list(runs.items()):
            try:
                step(key, run)
            except Failed as exc:
                fail(key, exc)

    def warm_up(key: str, run: Run) -> None:
        for size in message_sizes:
            run.round(5, size, "single", 30)  # imports, allocations, socket buffers

    def begin(key: str, run: Run) -> None:
        out[key]["rss_empty"] = run.memory()
        run.connect(WARM, "w")
        warm_up(key, run)
        out[key]["rss_base"] = run.memory()

    with contextlib.ExitStack() as stack:
        for key in keys:
            try:
                runs[key] = stack.enter_context(Run(BY_KEY[key]))
                out[key] = {"warm": WARM, "memory": {}, "sizes": {}, "idle_samples": []}
            except Failed as exc:
                fail(key, exc)
        each(begin)
        for n in ns:

            def grow(key: str, run: Run, n: int = n) -> None:
                run.connect(n - run.n, f"n{n}-")
                memory = out[key]["memory"].setdefault(str(n), {})
                memory["idle_rss"] = run.memory()
                base = out[key]["rss_base"]
                if n == ns[0] and base is not None and memory["idle_rss"] is not None:
                    out[key]["idle_samples"].append((memory["idle_rss"] - base) / (n - WARM))
                warm_up(key, run)
                memory["warm_rss"] = run.memory()

            each(grow)
            reps = counts.reps if n <= 1_000 else 1
            for size in message_sizes:
                for mode in counts.modes:
                    m = counts.single(n) if mode == "single" else counts.burst
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
                                        runs[key].round(m, size, mode, round_timeout(n, m, size))
                                    )
                                except Failed as exc:
                                    fail(key, exc)
                    for key in active:
                        if key in runs:
                            cells = out[key]["sizes"].setdefault(str(size), {})
                            cells.setdefault(str(n), {})[mode] = summary(m, rounds[key])

            def after(key: str, run: Run, n: int = n) -> None:
                out[key]["memory"][str(n)]["after_rss"] = run.memory()

            each(after)
    for _ in range(counts.memory_samples):
        for key in keys:
            if "error" in out.get(key, {"error": ""}):
                continue
            try:
                out[key]["idle_samples"].append(memory_sample(key, ns[0], message_sizes))
            except Failed as exc:
                out[key]["memory_error"] = str(exc)
    return out


def measure_group(keys: list[str], sizes: list[int], quick: bool) -> dict[str, Any]:
    """run_all.py's fan-out: one message size (SIZE), M messages per round (SINGLE_M_LARGE in
    single mode above N = 1,000), in the shape run_all.py reads: per variant ``rss_base`` (the
    empty server) and, per N, ``rss`` (after the warm-up round) and the modes' summaries."""
    counts = Counts(
        single=lambda n: M if n <= 1_000 else SINGLE_M_LARGE,
        burst=M,
        reps=1 if quick else 3,
    )
    cells = measure_cells(keys, sizes, (SIZE,), counts)
    out: dict[str, Any] = {}
    for key, entry in cells.items():
        if "sizes" not in entry:
            out[key] = entry
            continue
        shaped: dict[str, Any] = {"rss_base": entry.get("rss_empty")}
        for n_key, modes in entry["sizes"].get(str(SIZE), {}).items():
            memory = entry["memory"].get(n_key, {})
            shaped[n_key] = {"rss": memory.get("warm_rss"), **modes}
        out[key] = shaped
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

#: What issue 4 measured with the same kind of harness on its machine (N = 1,000, 64 B),
#: µs/delivery.
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


def size_label(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def cell_of(results: dict[str, Any], key: str, size: int, n: int) -> dict[str, Any] | None:
    entry = results["fanout"].get(key, {})
    cell: dict[str, Any] | None = entry.get("sizes", {}).get(str(size), {}).get(str(n))
    return cell


def fanout_section(results: dict[str, Any], meta: dict[str, Any]) -> str:
    rounds = "median of up to 3 rounds per cell at N = 1,000, 1 round at N = 5,000"
    if meta["quick"]:
        rounds = "1 round per cell; no batch rounds in `--quick`"
    if meta["batch_api"]:
        batch = "batch"
        batch_text = (
            "batch: the same burst inside `async with manager.batch():`, which queues it whole "
            f"before anything is written, so each connection gets its {meta['m']} messages as "
            "one batch (one write where the library allows it)."
        )
    else:
        batch = "burst queued in one step (diagnostic)"
        batch_text = (
            "The batch columns are not a way an application can fan out with this version: "
            "they queue the whole burst through the manager's private `_send_to_connections` "
            "before the flusher runs once, to show what coalescing per connection gives."
        )
    text = ""
    for size in meta["message_sizes"]:
        rows = []
        for n in meta["connections"]:
            for key in meta["variants"]:
                label = BY_KEY[key].label
                entry = results["fanout"].get(key, {})
                why = not_run(entry)
                cell = cell_of(results, key, size, n)
                if why is not None or cell is None or "single" not in cell:
                    rows.append((f"{n:,}", label, *["-"] * 6, why or "not run"))
                    continue
                s, b, q = cell["single"], cell.get("burst", {}), cell.get("batch")
                notes = []
                if not (s["complete"] and b.get("complete")):
                    notes.append("incomplete round(s)")
                reference = ISSUE_REFERENCE.get(key)
                if reference is not None and n == 1_000 and size == 64:
                    notes.append(f"issue 4: {reference:g} µs")
                rows.append(
                    (
                        f"{n:,}",
                        label,
                        fmt(s["deliveries_per_s"], ",.0f"),
                        fmt(s["cpu_us_per_delivery"], ".2f"),
                        fmt(b.get("deliveries_per_s"), ",.0f"),
                        fmt(b.get("cpu_us_per_delivery"), ".2f"),
                        "-" if q is None else fmt(q["deliveries_per_s"], ",.0f"),
                        "-" if q is None else fmt(q["cpu_us_per_delivery"], ".2f"),
                        "; ".join(notes),
                    )
                )
        singles = ", ".join(f"{meta['single_m'][str(n)]} at N = {n:,}" for n in meta["connections"])
        text += (
            f"## Fan-out, messages of {size_label(size)}: N connections; single mode: "
            f"{singles}; bursts of {meta['m']} ({rounds})\n\n"
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
            + "\n\n"
        )
    return text + (
        f"burst: `await manager.broadcast(m)` {meta['m']} times back to back (each call yields "
        "to the event loop; the flusher waits while such calls keep coming, up to 64 calls, so "
        "a burst goes out in a few writes per connection); the plain loops run the same code "
        "as in single mode, websockets' `broadcast()` is called without yielding. "
        + batch_text
        + "\n"
    )


def cpu_cell(mine: dict[str, Any] | None, theirs: dict[str, Any] | None, mode: str) -> str:
    """``wsfleet / peer µs = ratio``, and whether issue 13's target for the mode is met."""
    x = (mine or {}).get("cpu_us_per_delivery")
    y = (theirs or {}).get("cpu_us_per_delivery")
    if x is None or y is None:
        return "not measured"
    r = ratio(x, y)
    return f"{x:.2f} / {y:.2f} = {fmt(r, '.2f')}x, {verdict(r, CPU_TARGET[mode])}"


def cpu_targets(results: dict[str, Any], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per wsfleet variant, peer, message size and N: each mode's ratio and verdict."""
    rows = []
    for key in meta["variants"]:
        for peer in BY_KEY[key].peers:
            if peer not in meta["variants"]:
                continue
            for size in meta["message_sizes"]:
                for n in meta["connections"]:
                    mine = cell_of(results, key, size, n) or {}
                    theirs = cell_of(results, peer, size, n) or {}
                    row: dict[str, Any] = {"variant": key, "peer": peer, "size": size, "n": n}
                    for mode in MODES:
                        # batch is wsfleet's way to send a burst: held against the peer's burst
                        other = theirs.get("burst" if mode == "batch" else mode)
                        a = (mine.get(mode) or {}).get("cpu_us_per_delivery")
                        b = (other or {}).get("cpu_us_per_delivery")
                        r = ratio(a, b)
                        row[mode] = {
                            "wsfleet_us": a,
                            "peer_us": b,
                            "ratio": r,
                            "target": CPU_TARGET[mode],
                            "met": None if r is None else r <= CPU_TARGET[mode],
                            "text": cpu_cell(mine.get(mode), other, mode),
                        }
                    rows.append(row)
    return rows


def per_connection(entry: dict[str, Any], n: int, which: str) -> float | None:
    """Resident memory per connection at N, over the warm baseline, in bytes (this run)."""
    base = entry.get("rss_base")
    value = entry.get("memory", {}).get(str(n), {}).get(which)
    warm: int = entry.get("warm", WARM)
    if base is None or value is None or n <= warm:
        return None
    return float(value - base) / (n - warm)


def idle_per_connection(entry: dict[str, Any]) -> float | None:
    """Bytes per idle connection at the first N: the median of the processes that measured it."""
    samples = entry.get("idle_samples") or []
    return statistics.median(samples) if samples else None


def memory_targets(results: dict[str, Any], meta: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    n = meta["connections"][0]
    for key in meta["variants"]:
        for peer in BY_KEY[key].peers:
            if peer not in meta["variants"]:
                continue
            mine = results["fanout"].get(key, {})
            theirs = results["fanout"].get(peer, {})
            a = idle_per_connection(mine)
            b = idle_per_connection(theirs)
            diff = None if a is None or b is None else a - b
            rows.append(
                {
                    "variant": key,
                    "peer": peer,
                    "n": n,
                    "wsfleet_idle": a,
                    "peer_idle": b,
                    "wsfleet_samples": mine.get("idle_samples") or [],
                    "peer_samples": theirs.get("idle_samples") or [],
                    "difference": diff,
                    # against each of the peer's processes: the figure moves between two
                    # allocator modes from one process to the next
                    "difference_range": None
                    if a is None or not theirs.get("idle_samples")
                    else (a - max(theirs["idle_samples"]), a - min(theirs["idle_samples"])),
                    "met": None if diff is None else diff <= MEMORY_TARGET_BYTES,
                    "after": {
                        str(m): (
                            per_connection(mine, m, "after_rss"),
                            per_connection(theirs, m, "after_rss"),
                        )
                        for m in meta["connections"]
                    },
                }
            )
    return rows


def kib(value: float | None, spec: str = ".1f") -> str:
    return fmt(None if value is None else value / 1024, spec)


def targets_section(results: dict[str, Any], meta: dict[str, Any]) -> str:
    cpu = meta["targets"]["cpu"]
    rows: list[tuple[object, ...]] = [
        (
            BY_KEY[r["variant"]].label,
            BY_KEY[r["peer"]].label,
            size_label(r["size"]),
            f"{r['n']:,}",
            r["single"]["text"],
            r["burst"]["text"],
            r["batch"]["text"],
        )
        for r in cpu
    ]
    verdicts = [r[mode]["met"] for r in cpu for mode in MODES if r[mode]["met"] is not None]
    text = (
        "## Targets of issue 13, from this run: CPU per delivery, wsfleet ÷ its peer\n\n"
        "Each cell: server CPU µs per delivery, wsfleet / the peer, and their ratio; the "
        "target is ≤ 1.0x on single messages and ≤ 0.5x on bursts. *batch* (wsfleet's "
        "`manager.batch()`, its own way to send a burst) is held against the peer's burst. "
        "All figures are CPU time of the server process, from rounds that alternate between "
        "wsfleet and its peers in this one run: compare them as ratios; the absolute figures "
        "move with the load of this shared 2-CPU machine.\n\n"
        + table(
            [
                "wsfleet",
                "peer",
                "message",
                "N",
                "single (≤ 1.0x)",
                "burst (≤ 0.5x)",
                "batch vs the peer's burst (≤ 0.5x)",
            ],
            rows,
        )
        + f"\n\n{sum(verdicts)} of {len(verdicts)} cells meet their target.\n\n"
    )
    memory = meta["targets"]["memory"]

    def samples(values: list[float]) -> str:
        return ", ".join(f"{v / 1024:.1f}" for v in values)

    def span(pair: tuple[float, float] | None) -> str:
        return "n/a" if pair is None else f"{pair[0] / 1024:+.2f} to {pair[1] / 1024:+.2f}"

    rows = [
        (
            BY_KEY[r["variant"]].label,
            BY_KEY[r["peer"]].label,
            f"{kib(r['wsfleet_idle'])} ({samples(r['wsfleet_samples'])})",
            f"{kib(r['peer_idle'])} ({samples(r['peer_samples'])})",
            "n/a" if r["difference"] is None else f"{r['difference'] / 1024:+.2f}",
            span(r.get("difference_range")),
            "not measured" if r["met"] is None else ("**met**" if r["met"] else "**not met**"),
            "; ".join(f"{kib(a)} / {kib(b)} at {int(m):,}" for m, (a, b) in r["after"].items()),
        )
        for r in memory
    ]
    n = meta["connections"][0]
    how_many = meta["memory_samples"]
    text += (
        f"## Targets of issue 13, from this run: memory per idle connection (N = {n:,})\n\n"
        "The server's resident memory (`/proc/self/statm`, after `gc.collect()`) with "
        f"{n:,} idle connections, minus the same with {WARM} connections that were already "
        "sent one message of each size (so that what a server imports and allocates once "
        f"is not counted), over {n - WARM:,}; idle: nothing was sent to those connections. "
        f"Median of {how_many} server process(es) per variant (each process's figure in "
        "brackets; the fan-out's own, then fresh ones): the same server varies from one "
        "process to the next by about 1.3 KiB per connection (its C heap grows by one of "
        "two amounts), which is why one process is not enough against a 2 KiB target. "
        "Target: wsfleet's median ≤ the peer's median + 2 KiB; the column after the "
        "difference holds wsfleet's median against the peer's lowest and highest process, so "
        "a verdict that rests on the peer's allocator mode shows as a range across +2 KiB "
        "(websockets' loop and `broadcast()` run one and the same server: their figures "
        "differ by that mode only). The last column is the fan-out's process after "
        "every round at that N (buffers kept once a connection has been written to, and "
        "at 5,000 what the rounds at 1,000 left; not the target's measure).\n\n"
        + table(
            [
                "wsfleet",
                "peer",
                "wsfleet KiB/connection, idle",
                "peer KiB/connection, idle",
                "difference KiB",
                "wsfleet's median against each peer process, KiB",
                "≤ +2 KiB (medians)",
                "after the rounds: wsfleet / peer KiB",
            ],
            rows,
        )
        + "\n"
    )
    return text


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
    for key in meta["stall_variants"]:
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


def stall_verdicts(results: dict[str, Any], meta: dict[str, Any]) -> str:
    """Issue 4's target for the stalled client, per wsfleet variant."""
    rows = []
    for key in meta["stall_variants"]:
        if not key.startswith("wsfleet"):
            continue
        entry = results["stalled"].get(key, {})
        runs = entry.get("stalled_runs") or []
        what = BY_KEY[key].label
        if not runs:
            rows.append((what, "not measured", "not measured"))
            continue
        if not all(r["complete"] for r in runs):
            rows.append((what, "healthy clients did not finish", "**not met**"))
            continue
        delay = entry["delay_s"]
        spread = entry["control_spread_s"]
        shown = f"{delay * 1e3:+.0f} ms (control runs differ by up to {spread * 1e3:.0f} ms)"
        mark = verdict(delay, 0.050)
        if spread > 0.050:
            mark += " (within the runs' own spread, which exceeds 50 ms)"
        rows.append((what, shown, mark))
    if not rows:
        return ""
    return (
        "### Issue 4's target: a stalled client delays the others ≤ 50 ms\n\n"
        + table(["wsfleet", "delay of the healthy clients' last delivery", "verdict"], rows)
        + "\n"
    )


def method_section(meta: dict[str, Any]) -> str:
    server_cpu, client_cpu = meta["cpus"]
    pinned = (
        f"pinned to CPU {server_cpu} (server) and CPU {client_cpu} (clients)"
        if server_cpu is not None
        else "not pinned (fewer than 2 CPUs)"
    )
    peers = "; ".join(
        f"{BY_KEY[k].label}: " + ", ".join(BY_KEY[p].label for p in BY_KEY[k].peers)
        for k in meta["variants"]
        if BY_KEY[k].peers
    )
    return (
        "## How it was measured\n\n"
        f"- Server and clients are separate processes on 127.0.0.1, {pinned}, on a "
        f"{os.cpu_count()}-CPU machine shared with other work. Clients are raw TCP sockets "
        "that do the WebSocket handshake by hand and then only count bytes (66 per 64-byte "
        "text frame, 4,100 per 4 KiB frame, 16,388 per 16 KiB frame).\n"
        "- **The figures are CPU time**: server CPU µs/delivery = the server process's "
        "`time.process_time()` delta / (N x M), read before `go` and after the last client "
        "got its last byte. Compare them as ratios within one run: wsfleet and its peers are "
        "measured side by side, their rounds alternating (A, B, A, B ...), so the load of "
        "this shared machine, which varies, weighs on both alike; absolute figures move "
        "between runs. Deliveries/s = N x M / (last byte at the clients - the moment `go` "
        "was sent to the server): wall time, more exposed to the machine's load.\n"
        f"- Peers, each on the same library and server as the wsfleet variant: {peers}. "
        "The loops are `for ws in list(sockets): await ws.send(m)` (websockets), "
        "`await ws.send_message(m)` (trio-websocket), and the FastAPI docs' "
        "`ConnectionManager` (the accepted sockets in a `list`, `broadcast` awaits "
        "`send_text` on each); websockets' `broadcast()` on asyncio writes to every "
        "connection without awaiting. The ASGI variants are one FastAPI app, under uvicorn "
        "(its default `websockets-sansio` protocol) and under hypercorn (asyncio worker): "
        "without a manager it holds the docs' `ConnectionManager`, with one the endpoint of "
        "wsfleet's FastAPI how-to (`await websocket.accept()`, then `manager.session`).\n"
        f"- Each N starts with an unmeasured round of 5 messages of each size; before the "
        f"first N, {WARM} warm connections get the same (the memory baseline). The fleet "
        "grows from 1,000 to 5,000 connections in the same processes.\n"
        "- No keepalive anywhere, no compression (`compression=None`; the raw clients offer no "
        "extension, so the ASGI servers negotiate none), no wsfleet heartbeat. wsfleet runs "
        'with `OverflowPolicy(max_messages=4096, max_bytes=1 MiB, action="disconnect")`.\n'
        "- single: wsfleet waits after each `await manager.broadcast(m)` until the manager's "
        "counters say every queued message was handed to its transport "
        "(`stats().queued_messages == 0` and `sent_messages` + drops up to the count "
        "`broadcast` returned; up to 20 bare checkpoints, then 0.5 ms sleeps); websockets' "
        "`broadcast()` writes at once and the job then yields once to the event loop; the "
        "plain loops await every send, so their burst runs the same code as their single.\n"
        "- burst: wsfleet calls `await manager.broadcast(m)` M times back to back, then waits "
        "as above; websockets' `broadcast()` is called M times without yielding.\n"
        f"- The whole run took {meta['elapsed_s']:.0f} s.\n"
    )


def build_report(results: dict[str, Any], meta: dict[str, Any]) -> str:
    parts = [fanout_section(results, meta), targets_section(results, meta)]
    if meta["stall_variants"]:
        parts += [
            stall_section(results, meta),
            stall_verdicts(results, meta),
            meta["stall_deviation"] + "\n",
        ]
    parts.append(method_section(meta))
    return "\n".join(p for p in parts if p)


# -- main -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One run: what is measured, at which sizes, with how many rounds, within what time."""

    variants: tuple[str, ...] = DEFAULT_VARIANTS
    connections: tuple[int, ...] = (1_000, 5_000)
    message_sizes: tuple[int, ...] = MESSAGE_SIZES
    stall_variants: tuple[str, ...] = DEFAULT_VARIANTS
    counts: Counts = FULL
    stall: dict[str, Any] = field(
        default_factory=lambda: {
            "healthy": STALL_HEALTHY,
            "messages": STALL_MESSAGES,
            "warmup": 100,
            "pairs": 5,
            "plain_controls": 3,
            "control_timeout": 60.0,
            "min_timeout": 5.0,
        }
    )
    #: new groups and stalled-client runs start only within this; a loaded machine may then
    #: leave some unmeasured, said in the report
    budget_s: float = 2_400
    quick: bool = False


def quick_config() -> Config:
    return Config(
        connections=(1_000,),
        stall_variants=(),
        counts=QUICK,
        stall={**Config().stall, "warmup": 50, "pairs": 2, "plain_controls": 2},
        budget_s=240,
        quick=True,
    )


def smoke_config() -> Config:
    """Every variant that imports here, every mode and size, and the stalled client on one
    wsfleet variant and one plain one, at a tiny size: seconds, figures meaningless."""
    return Config(
        connections=(WARM + 24,),
        counts=Counts(single=lambda n: 2, burst=4, reps=1),
        stall_variants=("wsfleet-ws-asyncio", "ws-loop"),
        # enough for the stalled client to pass the 1 MiB bound and its kernel buffers
        stall={
            "healthy": 4,
            "messages": 400,
            "warmup": 2,
            "pairs": 1,
            "plain_controls": 1,
            "control_timeout": 20.0,
            "min_timeout": 2.0,
        },
        budget_s=120,
        quick=True,
    )


def measure(config: Config) -> dict[str, Any]:
    """Fan-out rounds of every group of variants, then the stalled-client runs; ``meta``
    says how, and ``meta.targets`` holds issue 13's verdicts."""
    keys = list(config.variants)
    stall_keys = list(config.stall_variants)
    ns = list(config.connections)
    counts = config.counts
    budget = Deadline(config.budget_s)
    started = time.monotonic()
    results: dict[str, Any] = {"fanout": {}, "stalled": {}}

    def progress(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    available: dict[str, str | None] = {
        key: missing(BY_KEY[key]) for key in dict.fromkeys(keys + stall_keys)
    }
    present: list[str] = []
    for key in keys:
        why = available[key]
        if why is not None:
            results["fanout"][key] = {"missing": why}
        else:
            present.append(key)
    for group in groups_of(present):
        if budget.passed():
            for key in group:
                results["fanout"][key] = {"error": "skipped: time budget spent"}
            continue
        progress("fan-out: " + ", ".join(BY_KEY[k].label for k in group))
        results["fanout"].update(measure_cells(group, ns, config.message_sizes, counts))
    for key in stall_keys:
        why = available[key]
        if why is not None:
            results["stalled"][key] = {"missing": why}
            continue
        if budget.passed():
            results["stalled"][key] = {"error": "skipped: time budget spent"}
            continue
        progress(f"stalled client: {BY_KEY[key].label}")
        try:
            results["stalled"][key] = stalled_scenario(BY_KEY[key], config.stall)
        except Failed as exc:
            results["stalled"][key] = {"error": str(exc)}
            progress(f"  failed: {exc}")
    meta: dict[str, Any] = {
        "quick": config.quick,
        "connections": ns,
        "message_sizes": list(config.message_sizes),
        "variants": keys,
        "peers": {k: list(BY_KEY[k].peers) for k in keys if BY_KEY[k].peers},
        "stall_variants": stall_keys,
        "m": counts.burst,
        "single_m": {str(n): counts.single(n) for n in ns},
        "modes": list(counts.modes),
        "memory_samples": 1 + counts.memory_samples,
        "warm": WARM,
        "stall": config.stall,
        "stall_deviation": STALL_DEVIATION,
        "batch_api": batch_api(),
        "cpus": cpus(),
        "environment": environment(),
        "elapsed_s": time.monotonic() - started,
    }
    results["meta"] = meta
    meta["targets"] = {"cpu": cpu_targets(results, meta), "memory": memory_targets(results, meta)}
    progress("done")
    return results


def render(results: dict[str, Any]) -> str:
    return build_report(results, results["meta"])


def keys_of(text: str, parser: argparse.ArgumentParser, what: str) -> tuple[str, ...]:
    keys = tuple(k for k in text.split(",") if k)
    unknown = [k for k in keys if k not in BY_KEY]
    if unknown:
        parser.error(f"unknown {what}: {', '.join(unknown)}")
    return keys


def numbers(text: str) -> tuple[int, ...]:
    return tuple(sorted({int(s) for s in text.split(",") if s}))


def main() -> None:
    parser = cli.parser(__doc__, rebuild="results/fanout.json")
    parser.add_argument("--variants", default=None, help="comma-separated keys")
    parser.add_argument(
        "--connections",
        "--sizes",
        dest="connections",
        default=None,
        help="comma-separated N (default 1000,5000; --quick: 1000)",
    )
    parser.add_argument(
        "--message-sizes",
        default=None,
        help="comma-separated message sizes in bytes (default 64,4096)",
    )
    parser.add_argument("--modes", default=None, help="comma-separated modes (single,burst,batch)")
    parser.add_argument(
        "--stall-variants",
        default=None,
        help="comma-separated keys for the stalled-client runs (default: the variants; "
        "--quick: none)",
    )
    parser.add_argument("--no-stall", action="store_true", help="skip the stalled-client runs")
    parser.add_argument("--no-fanout", action="store_true", help="only the stalled-client runs")
    args = parser.parse_args()
    if args.report_only:
        rebuild(no_write=args.no_write)
        return
    config = smoke_config() if args.smoke else quick_config() if args.quick else Config()
    changes: dict[str, Any] = {}
    if args.variants is not None:
        changes["variants"] = keys_of(args.variants, parser, "variant(s)")
        if not args.quick and not args.smoke:
            changes["stall_variants"] = changes["variants"]
    if args.connections:
        changes["connections"] = numbers(args.connections)
        if not changes["connections"] or changes["connections"][0] <= WARM:
            parser.error(f"every N must be above {WARM} (the warm connections)")
    if args.message_sizes:
        sizes = numbers(args.message_sizes)
        if not sizes or sizes[0] < 30 or sizes[-1] > 65_535:
            parser.error("message sizes must be 30 to 65,535 bytes (a serial heads each message)")
        changes["message_sizes"] = sizes
    if args.modes:
        modes = tuple(m for m in args.modes.split(",") if m)
        if not modes or any(m not in MODES for m in modes):
            parser.error(f"modes are {', '.join(MODES)}")
        changes["counts"] = Counts(
            single=config.counts.single,
            burst=config.counts.burst,
            modes=modes,
            reps=config.counts.reps,
            memory_samples=config.counts.memory_samples,
        )
    if args.stall_variants is not None:
        changes["stall_variants"] = keys_of(args.stall_variants, parser, "stall variant(s)")
    if args.no_stall:
        changes["stall_variants"] = ()
    if args.no_fanout:
        changes["variants"] = ()
    config = replace(config, **changes)
    cli.run(
        args,
        config,
        measure,
        render,
        name="fanout",
        title=TITLE,
        script="fanout_bench.py",
    )


TITLE = "Fan-out over loopback: wsfleet and its plain peers"


def rebuild(*, no_write: bool) -> None:
    """fanout.md again from fanout.json: the report's text changes, the figures do not."""
    results: dict[str, Any] = json.loads((RESULTS / "fanout.json").read_text(encoding="utf-8"))
    meta = results.get("meta", {})
    if "connections" not in meta:
        raise SystemExit("fanout.json predates this report (no meta.connections): measure again")
    meta["targets"] = {"cpu": cpu_targets(results, meta), "memory": memory_targets(results, meta)}
    body = render(results)
    if no_write:
        print(body)
        return
    command = "python benchmarks/fanout_bench.py" + (" --quick" if meta["quick"] else "")
    write("fanout", TITLE, command, body, results, measured=meta.get("environment"))


if __name__ == "__main__":
    main()
