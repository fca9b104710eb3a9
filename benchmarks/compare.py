"""The same benchmarks against two commits of wsfleet, back to back: was speed lost?

    python benchmarks/compare.py [--before 8c27eda] [--after HEAD] [--rounds 3]
        # writes benchmarks/results/compare.md and compare.json
    python benchmarks/compare.py --smoke   # HEAD against itself, tiny, one round; writes nothing

Each commit is checked out in a temporary worktree (``git worktree add --detach``, removed
at the end); this checkout's benchmark files then run against each tree's ``src`` through
``PYTHONPATH``, so the only difference between the two sides is the library. A round runs
``manager_bench`` (in-memory transports, asyncio and trio) and the fan-out over loopback
(``fanout_bench``: wsfleet with the websockets adapter on asyncio and on trio, and the plain
websockets loop on asyncio; N = 1,000, 64 B and 4 KiB; single (20 fan-outs), burst and
batch (50 messages)) on one side and then on
the other, in a fresh process each; the order of the sides alternates from round to round,
so a change in the load of a shared machine weighs on both alike. Per case the report gives
each side's median over the rounds with its spread, and the ratio after ÷ before: the
median of the rounds' own ratios (each of two runs a minute apart at most) and their range.
The manager's figures compared are CPU time (``time.process_time()`` around the same loops),
which other work on a shared machine inflates far less than the wall clock.
The plain loop does not use wsfleet: its ratios show what the machine's noise alone does.

Two diagnostic rows run the after side without a default the before side did not have, so
that what the library's code costs can be told from what a default costs: register +
unregister with ``heartbeat=None`` (the manager now pings by default, and each registration
arms its deadlines), and the websockets fan-out on asyncio with ``backpressure=None`` (a
producer waits once the fleet's queues hold 64 MiB: at N = 1,000 and 4 KiB, a 50-message
burst goes out in three writes per connection instead of one). On the before side both are
the same job as its default rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import PYTHON, Summary, cli, environment, summarise, table

#: The manager layer's refactor started after this commit.
BEFORE = "8c27eda"
AFTER = "HEAD"
#: Every child run is bounded; so is the whole comparison (rounds not begun by then are not).
CHILD_TIMEOUT_S = 600.0
BUDGET_S = 15 * 60.0

#: wsfleet with the websockets adapter on both loops, and websockets' plain loop (no
#: wsfleet: the same code on both sides, so its ratios are the machine's noise)
FANOUT_VARIANTS = ("ws-loop", "wsfleet-ws-asyncio", "wsfleet-ws-trio", "wsfleet-ws-asyncio-nobp")
BENCHES = ("manager", "fanout")


def manager_config(smoke: bool) -> Any:
    import manager_bench

    if smoke:
        return replace(manager_bench.SMOKE, backends=("asyncio",))
    # Scaled down from the full run (100k) to keep a round near a minute on a shared
    # machine: the figures are per operation, and both sides run the same sizes.
    return manager_bench.Config(
        sizes=(1_000, 10_000),
        cycles=5_000,
        large=20_000,
        broadcast_rounds=3,
        heartbeat_interval=2.0,
        heartbeat_s=2.0,
    )


def fanout_config(smoke: bool) -> Any:
    import fanout_bench as fb

    if smoke:
        return fb.Config(
            variants=("wsfleet-ws-asyncio",),
            connections=(fb.WARM + 24,),
            stall_variants=(),
            counts=fb.Counts(single=lambda n: 2, burst=4, reps=1),
            budget_s=60,
            quick=True,
        )
    return fb.Config(
        variants=FANOUT_VARIANTS,
        connections=(1_000,),
        message_sizes=(64, 4096),
        stall_variants=(),
        counts=fb.Counts(single=lambda n: 20, burst=50, reps=1),
        budget_s=300,
    )


def child(bench: str, smoke: bool, out: Path) -> None:
    """In a fresh process whose PYTHONPATH picks one tree's wsfleet: measure, write JSON."""
    import wsfleet

    started = time.monotonic()
    if bench == "manager":
        import manager_bench

        results = manager_bench.measure(manager_config(smoke))
    else:
        import fanout_bench

        results = fanout_bench.measure(fanout_config(smoke))
    results["wsfleet_file"] = wsfleet.__file__
    results["seconds"] = time.monotonic() - started
    out.write_text(json.dumps(results) + "\n", encoding="utf-8")


# -- the trees --------------------------------------------------------------------------------


def git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(HERE), *args], capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout.strip()


@contextmanager
def trees(revisions: dict[str, str]) -> Iterator[tuple[Path, dict[str, Path]]]:
    """A copy of these benchmark files, and a detached worktree per revision, in a temporary
    directory removed afterwards (on SIGTERM too). Both sides run the copy, so editing the
    benchmarks while a comparison runs changes neither."""
    base = Path(tempfile.mkdtemp(prefix="wsfleet-compare-"))
    made: dict[str, Path] = {}
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        bench = base / "benchmarks"
        shutil.copytree(HERE, bench, ignore=shutil.ignore_patterns("results", "__pycache__"))
        for side, rev in revisions.items():
            path = base / side
            git("worktree", "add", "--detach", "--quiet", str(path), rev)
            made[side] = path
        yield bench, made
    finally:
        signal.signal(signal.SIGTERM, previous)
        for path in made.values():
            subprocess.run(
                ["git", "-C", str(HERE), "worktree", "remove", "--force", str(path)],
                capture_output=True,
                check=False,
                timeout=120,
            )
        shutil.rmtree(base, ignore_errors=True)


def stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def run_side(
    benchmarks: Path, tree: Path, bench: str, smoke: bool, scratch: Path
) -> dict[str, Any]:
    """One benchmark in a fresh process: these benchmark files, that tree's wsfleet."""
    out = scratch / f"{bench}.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    argv = [PYTHON, str(benchmarks / "compare.py"), "--child", bench, str(out)]
    if smoke:
        argv.append("--smoke")
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-5:])
        return {"error": f"{bench} exited {done.returncode}: {tail}"}
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return result


# -- the figures compared --------------------------------------------------------------------

#: (case, unit, True if more is better, how to read it from one run's results)
Case = tuple[str, str, bool, Callable[[dict[str, Any]], float | None]]


def reader(*path: str) -> Callable[[dict[str, Any]], float | None]:
    """What reads the figure at ``path`` from one run's results (None where it is not)."""
    return lambda results: dig(results, *path)


def dig(data: Any, *path: str) -> float | None:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return float(data) if isinstance(data, int | float) else None


def manager_cases(config: dict[str, Any]) -> list[Case]:
    cases: list[Case] = []
    for backend in config["backends"]:
        for n in config["sizes"]:
            cases.append(
                (
                    f"manager {backend}: register+unregister at {n:,}",
                    "CPU µs",
                    False,
                    reader(backend, "churn_cpu_us", str(n)),
                )
            )
        first = config["sizes"][0]
        cases.append(
            (
                f"manager {backend}: register+unregister at {first:,}, heartbeat=None",
                "CPU µs",
                False,
                reader(backend, "churn_cpu_us_no_heartbeat", str(first)),
            )
        )
        large = f"{config['large']:,}"
        cases += [
            (
                f"manager {backend}: broadcast to {large}, until delivered",
                "CPU µs/delivery",
                False,
                reader(backend, "broadcast_100k", "cpu_us_per_delivery"),
            ),
            (
                f"manager {backend}: broadcast to {large}, in the call",
                "CPU µs/delivery",
                False,
                reader(backend, "broadcast_100k", "call_cpu_us_per_delivery"),
            ),
            (
                f"manager {backend}: memory per idle connection",
                "bytes",
                False,
                reader(backend, "bytes_per_idle_connection"),
            ),
            (
                f"manager {backend}: heartbeat, per ping ({large} idle)",
                "CPU µs",
                False,
                reader(backend, "heartbeat_100k", "cpu_us_per_ping"),
            ),
        ]
    return cases


def fanout_cases(meta: dict[str, Any]) -> list[Case]:
    import fanout_bench as fb

    cases: list[Case] = []
    n = str(meta["connections"][0])
    for key in meta["variants"]:
        label = fb.BY_KEY[key].label
        for size in meta["message_sizes"]:
            for mode in meta["modes"]:
                if mode not in fb.modes_of(fb.BY_KEY[key]):
                    continue
                where = ("fanout", key, "sizes", str(size), n, mode)
                what = f"fan-out {label}, N = {int(n):,}, {fb.size_label(size)}, {mode}"
                cases += [
                    (
                        what,
                        "server CPU µs/delivery",
                        False,
                        reader(*where, "cpu_us_per_delivery"),
                    ),
                    (
                        what,
                        "deliveries/s",
                        True,
                        reader(*where, "deliveries_per_s"),
                    ),
                ]
    return cases


def compare(rounds: list[dict[str, dict[str, Any]]], cases: list[Case]) -> list[dict[str, Any]]:
    """Per case: each side's summary over the rounds, and the rounds' own ratios."""
    out = []
    for name, unit, more_is_better, read in cases:
        before = [read(r["before"]) for r in rounds]
        after = [read(r["after"]) for r in rounds]
        ratios = [a / b for a, b in zip(after, before, strict=True) if a is not None and b]
        summary: Summary | None = summarise(ratios)
        out.append(
            {
                "case": name,
                "unit": unit,
                "more_is_better": more_is_better,
                "before": before,
                "after": after,
                "before_summary": _as_dict(summarise(before)),
                "after_summary": _as_dict(summarise(after)),
                "ratio": _as_dict(summary),
            }
        )
    return out


def _as_dict(summary: Summary | None) -> dict[str, float] | None:
    return None if summary is None else summary.as_dict()


# -- measure and render ----------------------------------------------------------------------


def measure(config: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    revisions = {"before": config["before"], "after": config["after"]}
    commits = {side: git("rev-parse", "--short", rev) for side, rev in revisions.items()}
    rounds: dict[str, list[dict[str, dict[str, Any]]]] = {b: [] for b in BENCHES}
    order: list[list[str]] = []
    load_before = os.getloadavg()[0]
    with trees(revisions) as (benchmarks, paths), tempfile.TemporaryDirectory() as scratch:
        for i in range(config["rounds"]):
            if i and time.monotonic() - started > config["budget_s"]:
                break
            sides = ["before", "after"] if i % 2 == 0 else ["after", "before"]
            order.append(sides)
            for bench in BENCHES:
                pair: dict[str, dict[str, Any]] = {}
                for side in sides:
                    progress(started, f"round {i + 1}: {bench} on {side} ({commits[side]})")
                    pair[side] = run_side(
                        benchmarks, paths[side], bench, config["smoke"], Path(scratch)
                    )
                rounds[bench].append(pair)
    return {
        "config": config,
        "commits": commits,
        "order": order,
        "rounds": rounds,
        "environment": environment(),
        "load_average": {"before": load_before, "after": os.getloadavg()[0]},
        "seconds": time.monotonic() - started,
    }


def progress(started: float, text: str) -> None:
    sys.stderr.write(f"[{time.monotonic() - started:6.1f} s] {text}\n")
    sys.stderr.flush()


def first_ok(pairs: list[dict[str, dict[str, Any]]]) -> dict[str, Any] | None:
    for pair in pairs:
        for side in ("before", "after"):
            if "error" not in pair.get(side, {"error": ""}):
                return pair[side]
    return None


def comparisons(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    manager = first_ok(results["rounds"]["manager"])
    if manager is not None:
        rows += compare(results["rounds"]["manager"], manager_cases(manager["config"]))
    fanout = first_ok(results["rounds"]["fanout"])
    if fanout is not None:
        rows += compare(results["rounds"]["fanout"], fanout_cases(fanout["meta"]))
    return rows


def cell(summary: dict[str, float] | None, spec: str) -> str:
    if summary is None:
        return "n/a"
    return f"{format(summary['median'], spec)} (±{summary['spread'] / 2:.0%})"


def spec_of(unit: str) -> str:
    return ",.0f" if unit in ("deliveries/s", "bytes") else ".2f"


def judge(ratio: dict[str, float], more_is_better: bool, unit: str) -> str:
    """*better* or *worse* only where every round's ratio says so by more than 5 %;
    otherwise *same* (all within 5 %) or *unclear* (the rounds disagree)."""
    low, high = ratio["low"], ratio["high"]
    if more_is_better:
        low, high = 1 / high, 1 / low  # as a cost: below 1 is better
    if high < 1 / 1.05:
        word = "smaller" if unit == "bytes" else "better"
    elif low > 1.05:
        word = "larger" if unit == "bytes" else "worse"
    elif low >= 1 / 1.05 and high <= 1.05:
        word = "same"
    else:
        word = "unclear"
    return word


def render(results: dict[str, Any]) -> str:
    commits = results["commits"]
    rows = []
    for entry in comparisons(results):
        spec = spec_of(entry["unit"])
        ratio = entry["ratio"]
        if ratio is None:
            shown = "n/a"
            verdict = "not measured"
        else:
            shown = f"{ratio['median']:.3f} ({ratio['low']:.3f} to {ratio['high']:.3f})"
            verdict = judge(ratio, entry["more_is_better"], entry["unit"])
        rows.append(
            (
                entry["case"],
                entry["unit"],
                cell(entry["before_summary"], spec),
                cell(entry["after_summary"], spec),
                shown,
                verdict,
            )
        )
    failures = [
        f"round {i + 1}, {bench}, {side}: {pair[side]['error']}"
        for bench, pairs in results["rounds"].items()
        for i, pair in enumerate(pairs)
        for side in ("before", "after")
        if "error" in pair.get(side, {})
    ]
    n_rounds = len(results["order"])
    orders = ", ".join(" then ".join(sides) for sides in results["order"])
    text = (
        f"Before: `{commits['before']}` (the manager layer before its refactor); after: "
        f"`{commits['after']}`. {n_rounds} rounds, each a fresh process per side and "
        f"benchmark, the sides in the order {orders}. The whole run took "
        f"{results['seconds']:.0f} s; the 1-minute load average was "
        f"{results['load_average']['before']:.2f} before it and "
        f"{results['load_average']['after']:.2f} after (other work shares this machine).\n\n"
        "Each side: the median over the rounds (± half the range, as a fraction of the "
        "median). Ratio: after ÷ before, the median of the rounds' own ratios (range in "
        "brackets); below 1 is less CPU time or memory, above 1 more deliveries per second "
        "for the rate rows. Verdict: *better* or *worse* only where every round's ratio says "
        "so by more than 5 %, *same* where all are within 5 %, *unclear* where the rounds "
        "disagree. The plain loop (websockets without wsfleet) runs the same code on both "
        "sides: its ratios are the machine's noise. The manager's rows are CPU time "
        "(`time.process_time()` around the same loops manager_bench times by the wall clock): "
        "on this shared machine the wall time of one loop moved by up to 5x between two runs "
        "of the same code, its CPU time much less. The fan-out's CPU is the server "
        "process's, its rate the wall clock's. The rows marked `heartbeat=None` and "
        "`backpressure=None` run the after side without a default the before side did not "
        "have (the manager's heartbeat; the producer's BackpressurePolicy); on the before "
        "side they are the same job as the default rows.\n\n"
        + table(
            ["case", "unit", "before", "after", "after ÷ before", "verdict"],
            rows,
        )
        + "\n"
    )
    if failures:
        text += "\nFailed runs (left out of the medians):\n\n" + "".join(
            f"- {f}\n" for f in failures
        )
    return text


def main() -> None:
    parser = cli.parser(__doc__, quick=False)
    parser.add_argument(
        "--before",
        default=None,
        help=f"a commit (default {BEFORE}; --smoke: {AFTER}, which a shallow clone has too)",
    )
    parser.add_argument("--after", default=AFTER, help=f"a commit (default {AFTER})")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (3; --smoke: 1)")
    parser.add_argument("--child", nargs=2, metavar=("BENCH", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.smoke, Path(args.child[1]))
        return
    rounds = args.rounds if args.rounds is not None else 1 if args.smoke else 3
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    config = {
        "before": args.before or (AFTER if args.smoke else BEFORE),
        "after": args.after,
        "rounds": rounds,
        "smoke": args.smoke,
        "budget_s": BUDGET_S,
    }
    cli.run(
        args,
        config,
        measure,
        render,
        name="compare",
        title="Before and after: the same benchmarks on two commits, back to back",
        script="compare.py",
    )


if __name__ == "__main__":
    main()
