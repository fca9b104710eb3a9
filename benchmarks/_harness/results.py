"""Results on disk and the pieces of a report: the environment line, tables, deadlines."""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "results"


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
    name: str,
    title: str,
    command: str,
    body: str,
    data: object,
    measured: str | None = None,
    *,
    directory: Path = RESULTS,
) -> Path:
    """Write ``<directory>/<name>.md`` (for people) and ``.json`` (for tools), and print the
    markdown.

    ``measured``: the environment the figures were measured in, when the report is rebuilt
    later from saved figures (``environment()`` then, not now)."""
    directory.mkdir(parents=True, exist_ok=True)
    md = directory / f"{name}.md"
    md.write_text(
        f"# {title}\n\nMeasured with `{command}` on {measured or environment()}.\n\n{body}\n",
        encoding="utf-8",
    )
    (directory / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(md.read_text(encoding="utf-8"))
    return md


class Deadline:
    """Bounds a benchmark loop in time as well as in count."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def passed(self) -> bool:
        return time.perf_counter() > self.end
