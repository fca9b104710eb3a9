"""Two processes, one fleet, one Redis: what the Redis backplane costs on loopback.

    python benchmarks/backplane_bench.py [--quick | --smoke]
        # writes benchmarks/results/backplane.md and backplane.json (--smoke: nothing)

The benchmark starts its own ``redis-server`` on a free 127.0.0.1 port (no persistence;
``wsfleet.testing.RedisServer``, the tests' launcher), then for each event loop a pair
of worker processes (this same script with ``--worker``): a *sender* node with no sockets,
and a *receiver* node holding one probe socket plus 1,000 sockets in group ``fan``. Sockets
are in-memory transports that count what they are given (no network), so what is measured
is the backplane: the sender's manager, its publish loop, Redis, the receiver's subscriber,
its manager and its fan-out.

* **latency**: ``send_to_one("probe", ...)`` at 1,000 messages per second for 5 s (2 s with
  ``--quick``); each message carries ``time.monotonic_ns()`` at the call (one system-wide
  clock on Linux), and the probe notes the delay when the receiving manager writes it.
  Target: p99 <= 5 ms.
* **burst**: ``send_to_group("fan", ...)`` back to back (about 3 s, 1.5 s), the sender
  keeping at most 2,000 messages in its publish queue; the receiver's rate of complete
  fan-outs, each to 1,000 sockets, from its first delivery to its last.
* **max sustained fan-out**: the same, paced, in steps of 10, 30, 50, 70, 85 and 100 % of the
  burst rate, 3 s (1.5 s) each, with the probe in the group: the highest step with nothing
  lost and the probe's p99 under 25 ms.

Each wsfleet measurement runs twice: as it is, and in processes that ``gc.freeze()`` once
set up (see the results for why). The floor is the same traffic through bare coredis: a
producer queueing for one task that awaits ``PUBLISH`` per message, and a subscriber that
only notes each message (no manager, no fan-out). python-socketio's Redis manager is not
installed here, so it is not compared. Every process is killed at the end, whatever
happened; the full run takes about two minutes, ``--quick`` about one.
"""

from __future__ import annotations

import gc
import json
import math
import os
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import anyio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import cli, table

FAN = 1_000
#: What runs: wsfleet as it is, wsfleet in processes that ``gc.freeze()`` after set-up,
#: and the bare coredis floor.
MODES = ("wsfleet", "wsfleet-frozen", "coredis")
LATENCY_RATE = 1_000
#: Paced steps of the sustained fan-out, as fractions of the burst rate.
FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.85, 1.0)
#: A step is kept up with if nothing is lost and the probe's p99 stays under this.
SUSTAINED_P99_MS = 25.0
QUEUE_BOUND = 2_000


@dataclass(frozen=True)
class Timing:
    """How long each part of a pair's run lasts, in seconds, and how fast the probe goes."""

    #: the latency window
    window: float = 5.0
    #: the measured burst, and each paced step of the sustained fan-out
    short: float = 3.0
    latency_rate: int = LATENCY_RATE
    #: the first burst, which sizes the measured one
    first_burst: int = 200


@dataclass(frozen=True)
class Config:
    modes: tuple[str, ...] = MODES
    backends: tuple[str, ...] = ("asyncio", "trio")
    timing: Timing = Timing()


FULL = Config()
QUICK = Config(timing=Timing(window=2.0, short=1.5))
#: The frozen variant runs wsfleet's code and the freeze; the floor, coredis's: both on each
#: event loop, each step for a moment.
SMOKE = Config(
    modes=("wsfleet-frozen", "coredis"),
    timing=Timing(window=0.2, short=0.2, latency_rate=200, first_burst=20),
)

# -- worker processes ------------------------------------------------------------------------


#: Set in a worker of the "wsfleet-frozen" variant: it calls ``gc.freeze()`` once set up.
FREEZE = False


def ready() -> None:
    """Set-up is done: say so (after moving what exists to the GC's permanent generation,
    in the frozen variant, as a server does after start-up to keep full collections short)."""
    if FREEZE:
        gc.collect()
        gc.freeze()
    emit(ready=True)


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def summary(samples_ns: Sequence[int]) -> dict[str, float]:
    if not samples_ns:
        return {"count": 0}
    ordered = sorted(samples_ns)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] / 1e6

    return {
        "count": len(ordered),
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "max_ms": ordered[-1] / 1e6,
        "mean_ms": statistics.fmean(ordered) / 1e6,
    }


class Tally:
    """What the receiver saw: probe delays, fan-out deliveries and when."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.delays: list[int] = []
        self.deliveries = 0
        self.first = 0.0
        self.last = 0.0

    def probe(self, message: object) -> bool:
        text = message.decode() if isinstance(message, bytes) else str(message)
        fields = text.split()
        if len(fields) != 2:  # the bare sender's "hello"
            return False
        self.delays.append(time.monotonic_ns() - int(fields[1]))
        return True

    def delivered(self, count: int) -> None:
        now = time.perf_counter()
        if not self.deliveries:
            self.first = now
        self.deliveries += count
        self.last = now

    def report(self) -> dict[str, Any]:
        return {
            "latency": summary(self.delays),
            "deliveries": self.deliveries,
            "seconds": self.last - self.first,
        }


async def commands(handle: Any) -> None:
    """Answer JSON commands from stdin, one by one, until ``quit`` or end of input."""
    while True:
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        if not line:
            return
        request = json.loads(line)
        if request["op"] == "quit":
            emit(ok=True)
            return
        emit(ok=True, **(await handle(request)))


async def pace(rate: float, seconds: float, send: Any) -> int:
    """Call ``send(message)`` ``rate`` times a second for ``seconds``; how many calls were
    made. Each message is stamped with the time of its call."""
    start = time.perf_counter()
    count = int(rate * seconds)
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await anyio.sleep(delay)
        await send(stamp(i))
    return count


async def poll(predicate: Callable[[], object], interval: float) -> None:
    """Wait until ``predicate()`` is true; what it reads changes in another task or process."""
    while not predicate():  # noqa: ASYNC110  (nothing in this process to wait on instead)
        await anyio.sleep(interval)


def stamp(i: int) -> str:
    return f"{i} {time.monotonic_ns()}"


async def wsfleet_receiver(url: str, namespace: str) -> None:
    from wsfleet import ConnectionManager, Transport
    from wsfleet.adapters.redis import RedisBackplane

    tally = Tally()

    class Probe(Transport):
        def send_nowait(self, batch: Sequence[Any]) -> bool:
            for message in batch:
                tally.probe(message)
            return True

        async def send(self, batch: Sequence[Any]) -> None:
            self.send_nowait(batch)

        async def close(self, code: int = 1000, reason: str = "") -> None:
            pass

    class Counting(Probe):
        def send_nowait(self, batch: Sequence[Any]) -> bool:
            tally.delivered(len(batch))
            return True

    backplane = RedisBackplane(url, namespace=namespace, node_id="receiver")
    async with ConnectionManager(backplane=backplane) as manager:
        for i in range(FAN):
            manager.register(Counting(), f"user-{i}")
            manager.add_to_group(f"user-{i}", "fan")
        manager.register(Probe(), "probe")
        await poll(lambda: manager.stats().backplane_state == "CONNECTED", 0.01)
        ready()

        async def handle(request: dict[str, Any]) -> dict[str, Any]:
            op = request["op"]
            if op == "reset":
                tally.reset()
            elif op == "probe_in_fan":
                manager.add_to_group("probe", "fan")
            elif op == "wait":  # until this many deliveries arrived, or the timeout
                with anyio.move_on_after(request["within"]):
                    await poll(
                        lambda: tally.deliveries + len(tally.delays) >= request["count"], 0.005
                    )
            return tally.report() | {"stats": manager.stats().as_dict()["backplane"]}

        await commands(handle)


async def wsfleet_sender(url: str, namespace: str) -> None:
    from wsfleet import ConnectionManager
    from wsfleet.adapters.redis import RedisBackplane

    backplane = RedisBackplane(url, namespace=namespace, node_id="sender")
    async with ConnectionManager(backplane=backplane) as manager:
        with anyio.fail_after(10):  # until the receiver is known
            await poll(lambda: manager.nodes_of("probe") == {"receiver"}, 0.01)
        ready()
        queued = backplane.stats

        async def handle(request: dict[str, Any]) -> dict[str, Any]:
            op = request["op"]
            if op == "latency":

                async def one(message: str) -> None:
                    await manager.send_to_one("probe", message)

                sent = await pace(request["rate"], request["seconds"], one)
            elif op == "sustained":

                async def fan(message: str) -> None:
                    await manager.send_to_group("fan", message)

                sent = await pace(request["rate"], request["seconds"], fan)
            else:  # burst
                sent = 0
                while sent < request["count"]:
                    if queued["queued sends"] >= QUEUE_BOUND:
                        await anyio.sleep(0.001)
                        continue
                    await manager.send_to_group("fan", stamp(sent))
                    sent += 1
            await poll(lambda: not queued["queued sends"], 0.001)
            return {"sent": sent, "drops": dict(manager.stats().drops)}

        await commands(handle)


async def coredis_receiver(url: str, namespace: str) -> None:
    import coredis

    tally = Tally()
    channel = f"{namespace}:raw"
    async with (
        coredis.Redis.from_url(url) as client,
        client.pubsub(channels=[channel]) as pubsub,
        anyio.create_task_group() as tg,
    ):

        async def listen() -> None:
            async for message in pubsub:
                if message["type"] == "message" and tally.probe(message["data"]):
                    tally.delivered(1)

        tg.start_soon(listen)
        emit(ready=True)

        async def handle(request: dict[str, Any]) -> dict[str, Any]:
            op = request["op"]
            if op == "reset":
                tally.reset()
            elif op == "wait":
                with anyio.move_on_after(request["within"]):
                    await poll(lambda: tally.deliveries >= request["count"], 0.005)
            return tally.report()

        await commands(handle)
        tg.cancel_scope.cancel()


async def coredis_sender(url: str, namespace: str) -> None:
    import coredis

    channel = f"{namespace}:raw"
    queue_in, queue_out = anyio.create_memory_object_stream[str](math.inf)
    async with (
        coredis.Redis.from_url(url) as client,
        queue_in,
        queue_out,
        anyio.create_task_group() as tg,
    ):
        with anyio.fail_after(10):
            for _ in range(1000):
                if await client.publish(channel, "hello") >= 1:  # the receiver is subscribed
                    break
                await anyio.sleep(0.01)
        emit(ready=True)

        async def publisher() -> None:
            """Like wsfleet's publish loop: the caller queues, one task publishes."""
            async for message in queue_out:
                await client.publish(channel, message)

        tg.start_soon(publisher)

        async def publish(message: str) -> None:
            queue_in.send_nowait(message)

        async def handle(request: dict[str, Any]) -> dict[str, Any]:
            op = request["op"]
            if op == "burst":
                sent = 0
                while sent < request["count"]:
                    await client.publish(channel, stamp(sent))
                    sent += 1
            else:
                sent = await pace(request["rate"], request["seconds"], publish)
            return {"sent": sent, "drops": {}}

        await commands(handle)
        tg.cancel_scope.cancel()


WORKERS = {
    ("wsfleet", "receiver"): wsfleet_receiver,
    ("wsfleet", "sender"): wsfleet_sender,
    ("coredis", "receiver"): coredis_receiver,
    ("coredis", "sender"): coredis_sender,
}


def worker(mode: str, role: str, url: str, backend: str) -> None:
    global FREEZE
    namespace = f"bench-{mode}-{backend}"
    FREEZE = mode.endswith("-frozen")
    anyio.run(WORKERS[mode.removesuffix("-frozen"), role], url, namespace, backend=backend)


# -- the conductor ---------------------------------------------------------------------------


class Worker:
    """A worker process and its line protocol, every wait bounded."""

    def __init__(self, mode: str, role: str, url: str, backend: str, log: IO[bytes]) -> None:
        argv = [sys.executable, __file__, "--worker", mode, role, url, backend]
        self.name = f"{mode}/{role}/{backend}"
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
        )

    def read(self, timeout: float) -> dict[str, Any]:
        stdout = self.process.stdout
        assert stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise TimeoutError(f"{self.name}: no answer in {timeout} s")
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} exited with {self.process.wait()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, op: str, timeout: float = 60.0, **args: Any) -> dict[str, Any]:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(json.dumps({"op": op, **args}) + "\n")
        stdin.flush()
        return self.read(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def run_pair(url: str, mode: str, backend: str, timing: Timing, log: IO[bytes]) -> dict[str, Any]:
    receiver = Worker(mode, "receiver", url, backend, log)
    sender: Worker | None = None
    try:
        receiver.read(30)
        # The sender starts once the receiver is up: it learns of the receiver's sockets
        # from what the receiver announces, at once only if it is subscribed by then.
        sender = Worker(mode, "sender", url, backend, log)
        sender.read(30)
        window, short = timing.window, timing.short
        result: dict[str, Any] = {}

        receiver.call("reset")
        sent = sender.call("latency", rate=timing.latency_rate, seconds=window)
        seen = receiver.call("wait", count=sent["sent"], within=10, timeout=20)
        result["latency"] = seen["latency"] | {
            "sent": sent["sent"],
            "lost": sent["sent"] - seen["latency"]["count"],
        }

        per_message = FAN if mode.startswith("wsfleet") else 1

        def burst(count: int) -> tuple[dict[str, Any], float, float]:
            """``count`` messages back to back: the receiver's rate of complete fan-outs."""
            receiver.call("reset")
            sent = sender.call("burst", count=count)
            seen = receiver.call("wait", count=count * per_message, within=60, timeout=70)
            fanouts = seen["deliveries"] / per_message
            return sent, fanouts, fanouts / seen["seconds"] if seen["seconds"] else 0.0

        first = timing.first_burst
        _, _, guess = burst(first)  # a first guess sizes the measured burst to ``short`` s
        sent, fanouts, rate = burst(max(first, int(guess * short)))
        result["burst"] = {
            "sent": sent["sent"],
            "fanouts": fanouts,
            "messages_per_s": rate,
            "deliveries_per_s": rate * per_message,
            "sender_drops": sent["drops"],
        }

        if mode.startswith("wsfleet"):
            # The highest paced rate the receiver keeps up with: nothing lost and the
            # probe's delay (it is in the group) bounded, in steps up to the burst rate.
            receiver.call("probe_in_fan")
            steps = result["sustained"] = []
            for fraction in FRACTIONS:
                receiver.call("reset")
                sent = sender.call("sustained", rate=fraction * rate, seconds=short)
                expected = sent["sent"] * (FAN + 1)
                seen = receiver.call("wait", count=expected, within=30, timeout=40)
                lost = expected - seen["deliveries"] - seen["latency"]["count"]
                # a step that delivered no probe message (too short) shows nothing kept up
                p99 = seen["latency"].get("p99_ms", math.inf)
                kept_up = lost == 0 and p99 <= SUSTAINED_P99_MS
                steps.append(
                    {
                        "rate": fraction * rate,
                        "sent": sent["sent"],
                        "lost_deliveries": lost,
                        "latency": seen["latency"],
                        "kept_up": kept_up,
                        "sender_drops": sent["drops"],
                    }
                )
                if not kept_up:
                    break
        for live in (sender, receiver):
            live.call("quit", timeout=15)
        return result
    finally:
        for worker_ in (sender, receiver):
            if worker_ is not None:
                worker_.kill()


def measure(config: Config) -> dict[str, Any]:
    """Every mode on every event loop, through one throw-away redis-server."""
    from _harness.redis import RedisServer

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    results: dict[str, Any] = {}
    with (
        RedisServer() as redis,
        tempfile.TemporaryFile() as log,  # the workers' stderr, shown if something fails
    ):
        try:
            for mode in config.modes:
                for backend in config.backends:
                    key = f"{mode}/{backend}"
                    print(f"== {key}", file=sys.stderr, flush=True)
                    results[key] = run_pair(redis.url, mode, backend, config.timing, log)
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-5000:])
            raise
    return {
        "load_average": (load_before, os.getloadavg()[0]),
        "seconds": time.perf_counter() - started,
        "results": results,
        "config": asdict(config),
    }


def render(data: dict[str, Any]) -> str:
    results = data["results"]
    load = data["load_average"]
    elapsed = data["seconds"]
    timing = data["config"]["timing"]
    rows = []
    for key, r in results.items():
        lat = r["latency"]
        top = r["burst"]
        kept = [step for step in r.get("sustained", []) if step["kept_up"]]
        if "sustained" not in r:
            sustained = "-"
        elif kept:
            best = kept[-1]
            sustained = (
                f"{best['rate']:,.0f}/s = {best['rate'] * FAN:,.0f} deliveries/s "
                f"(p50 {best['latency']['p50_ms']:.2f}, p99 {best['latency']['p99_ms']:.2f} ms)"
            )
        else:
            first = r["sustained"][0]
            p99 = first["latency"].get("p99_ms", math.nan)
            sustained = (
                f"none: at {first['rate']:,.0f}/s already p99 "
                f"{p99:.1f} ms, {first['lost_deliveries']} lost"
            )
        rows.append(
            (
                key,
                f"{lat['p50_ms']:.2f} / {lat['p99_ms']:.2f} / {lat['max_ms']:.2f}",
                f"{lat['lost']}",
                f"{top['messages_per_s']:,.0f} ({top['deliveries_per_s']:,.0f})",
                sustained,
            )
        )
    body = table(
        [
            "sender -> Redis -> receiver",
            f"latency ms p50 / p99 / max at {timing['latency_rate']:,}/s",
            "lost",
            "burst messages/s (deliveries/s)",
            f"max sustained fan-out to {FAN:,} sockets",
        ],
        rows,
    )
    met = {key: r["latency"]["p99_ms"] <= 5.0 for key, r in results.items() if key.startswith("ws")}
    verdict = ", ".join(f"{key} {'met' if ok else 'NOT met'}" for key, ok in met.items())
    body += (
        f"\n\nTarget, latency p99 <= 5 ms at {timing['latency_rate']:,} messages per second: "
        f"{verdict}.\n\n"
        "Rows: `wsfleet` as it is; `wsfleet-frozen`, the same in processes that call "
        "`gc.collect(); gc.freeze()` once set up, as a long-lived server may: the receiver "
        "holds 1,000 connections, and a full collection that walks all of them pauses the "
        "event loop for tens of milliseconds, which is the p99 of the sustained fan-out "
        "without it; `coredis`, the floor: a paced producer queueing for one task that "
        "awaits PUBLISH per message (as wsfleet's publish loop does, but without its "
        "batching), and a bare subscriber that only notes each message, no manager, no "
        "fan-out (there a delivery is a message). python-socketio's Redis manager is not "
        "installed here, so it is not compared.\n\n"
        "Delays run from the sender's call to the receiving manager's write to the socket "
        "(`time.monotonic_ns()`, one clock for both processes). Burst: messages back to back "
        "(the sender keeps at most 2,000 queued), the receiver's rate from its first "
        "delivery to its last; a burst coalesces writes, so the paced rate the receiver "
        "keeps up with is lower: the last column is the highest paced step (10, 30, 50, 70, "
        f"85 or 100 % of the burst rate, {timing['short']:g} s each) with nothing "
        f"lost and the probe's p99 under {SUSTAINED_P99_MS:.0f} ms (the probe is in the "
        "group, so its delay includes the fan-out).\n\n"
        "Two worker processes and redis-server share the machine's "
        f"{os.cpu_count()} CPUs, unpinned; the 1-minute load average was {load[0]:.2f} "
        f"before the run and {load[1]:.2f} after: other work on the machine shows in the "
        f"tails, of the floor as much as of wsfleet. The run took {elapsed:.0f} s.\n"
    )
    return body


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--worker", nargs=4, metavar=("MODE", "ROLE", "URL", "BACKEND"))
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    cli.run(
        args,
        SMOKE if args.smoke else QUICK if args.quick else FULL,
        measure,
        render,
        name="backplane",
        title="Redis backplane: two processes on loopback",
        script="backplane_bench.py",
    )


if __name__ == "__main__":
    main()
