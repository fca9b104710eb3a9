"""The command line every benchmark shares, around its ``measure`` and ``render``.

Each benchmark script is ``measure(config) -> results`` (JSON-able figures) and
``render(results) -> markdown``; its ``main`` builds its parser and its config from the
arguments and hands both functions to ``run``, which adds:

* ``--smoke``: every case at a tiny size, in seconds, to prove the code still runs; the
  report is rendered (so that is proved too), nothing is written, and an ``error`` recorded
  anywhere in the results fails the run;
* ``--json PATH``: the raw results to PATH (for tools) and nothing under ``results/``;
* ``--no-write``: print the report instead of writing it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from _harness.results import write

C = TypeVar("C")


def parser(
    doc: str | None, *, quick: bool = True, rebuild: str | None = None
) -> argparse.ArgumentParser:
    """A benchmark's parser, with the options every one has: ``--quick`` where it has a
    quick mode; ``rebuild`` names the file a ``--report-only`` run rebuilds its report
    from, for those that can."""
    out = argparse.ArgumentParser(
        description=(doc or "").strip().splitlines()[0] if doc else None,
    )
    out.add_argument(
        "--smoke",
        action="store_true",
        help="every case at a tiny size, in seconds; writes nothing",
    )
    if quick:
        out.add_argument("--quick", action="store_true", help="fewer rounds, shorter windows")
    out.add_argument("--json", type=Path, default=None, help="write the raw results here only")
    out.add_argument("--no-write", action="store_true", help="print the report, write nothing")
    if rebuild is not None:
        out.add_argument(
            "--report-only",
            action="store_true",
            help=f"measure nothing: rebuild the report from the figures in {rebuild}",
        )
    return out


def command(script: str, argv: list[str] | None = None) -> str:
    """How the report says it was made: ``python benchmarks/<script> <arguments>``."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join([f"python benchmarks/{script}", *args])


def errors(results: object, path: str = "") -> list[str]:
    """Every ``error`` a benchmark recorded instead of figures, with where it is; a smoke
    run fails on any (a variant ``missing`` an optional package is not an error)."""
    found: list[str] = []
    if isinstance(results, dict):
        for key, value in results.items():
            where = f"{path}/{key}"
            if key == "error" and value:
                found.append(f"{path or '/'}: {value}")
            else:
                found += errors(value, where)
    elif isinstance(results, list):
        for i, value in enumerate(results):
            found += errors(value, f"{path}[{i}]")
    return found


def run(
    args: argparse.Namespace,
    config: C,
    measure: Callable[[C], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
    *,
    name: str,
    title: str,
    script: str,
    measured: str | None = None,
) -> dict[str, Any]:
    """Measure, render, and then write, print or keep quiet as the arguments say."""
    started = time.monotonic()
    results = measure(config)
    body = render(results)
    if args.smoke:
        failures = errors(results)
        took = time.monotonic() - started
        if failures:
            raise SystemExit(f"smoke: {name} failed in {took:.1f} s: " + "; ".join(failures))
        sys.stderr.write(f"smoke: {name} ran in {took:.1f} s\n")
    elif args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    elif args.no_write:
        sys.stdout.write(body + "\n")
    else:
        write(name, title, command(script), body, results, measured)
    return results
