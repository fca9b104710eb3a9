"""Shared plumbing for the benchmark scripts: timing, and writing results to a file."""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> str:
    return (
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.machine()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write(
    name: str, title: str, command: str, body: str, data: object, measured: str | None = None
) -> Path:
    """Write ``results/<name>.md`` (for people) and ``results/<name>.json`` (for tools).

    ``measured``: the environment the figures were measured in, when the report is rebuilt
    later from saved figures (``environment()`` then, not now)."""
    RESULTS.mkdir(exist_ok=True)
    md = RESULTS / f"{name}.md"
    md.write_text(
        f"# {title}\n\nMeasured with `{command}` on {measured or environment()}.\n\n{body}\n",
        encoding="utf-8",
    )
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(md.read_text(encoding="utf-8"))
    return md


class Deadline:
    """Bounds a benchmark loop in time as well as in count."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def passed(self) -> bool:
        return time.perf_counter() > self.end
