"""Draw the retry delay schedules of every jitter mode as an SVG: docs/backoff.svg.

    python scripts/plot_backoff.py            # writes docs/backoff.svg
    python scripts/plot_backoff.py --check    # exit 1 if docs/backoff.svg is stale

One panel per ``JitterMode``, for the policy ``RetryPolicy(max_attempts=8, base_delay=1,
max_delay=30)`` (``jitter=0.1`` for the proportional mode): the exponential schedule the
modes start from (dashed), the delay before each attempt for 40 clients seeded 0 to 39
(dots), and their mean (solid line). The delays come from ``RetryPolicy.delays()`` itself,
so the drawing shows what the library does, not a formula beside it.

No plotting library: the SVG is written here, with every number rounded to 0.1 px, so the
same code always writes the same bytes (``tests/docs/test_docs.py`` checks that the committed
file is fresh).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from wsfleet import JitterMode, RetryPolicy

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "backoff.svg"

ATTEMPTS = 8
BASE_DELAY = 1.0
MAX_DELAY = 30.0
CLIENTS = 40

COLOURS = {
    JitterMode.PROPORTIONAL: "#1f77b4",
    JitterMode.FULL: "#d62728",
    JitterMode.EQUAL: "#2ca02c",
    JitterMode.DECORRELATED: "#9467bd",
}

# Layout, in px: two columns of two panels under a legend.
WIDTH, HEIGHT = 840, 600
PANEL_W, PANEL_H = 340, 190
LEFT, TOP = 70, 80
GAP_X, GAP_Y = 70, 80
Y_MAX = 32.0
Y_TICKS = (0, 10, 20, 30)


def policy(mode: JitterMode, seed: int) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=ATTEMPTS,
        base_delay=BASE_DELAY,
        max_delay=MAX_DELAY,
        jitter=0.1,
        jitter_mode=mode,
        seed=seed,
    )


def schedules(mode: JitterMode) -> list[list[float]]:
    """The delays before attempts 1..ATTEMPTS of each seeded client."""
    return [list(policy(mode, seed).delays()) for seed in range(CLIENTS)]


def _n(value: float) -> str:
    """A coordinate with one decimal, without a trailing ``.0``."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _polyline(points: Sequence[tuple[float, float]], **attrs: str) -> str:
    coords = " ".join(f"{_n(x)},{_n(y)}" for x, y in points)
    extra = "".join(f' {key.replace("_", "-")}="{value}"' for key, value in attrs.items())
    return f'<polyline points="{coords}" fill="none"{extra}/>'


def _panel(mode: JitterMode, left: float, top: float) -> list[str]:
    def x_of(attempt: int) -> float:
        return left + (attempt - 0.5) * PANEL_W / ATTEMPTS

    def y_of(delay: float) -> float:
        return top + PANEL_H - delay * PANEL_H / Y_MAX

    colour = COLOURS[mode]
    title = mode.value + (" (jitter=0.1)" if mode is JitterMode.PROPORTIONAL else "")
    out = [f'<g id="{mode.value}">']
    out.append(f'<text x="{_n(left)}" y="{_n(top - 10)}" font-weight="bold">{title}</text>')
    for tick in Y_TICKS:
        y = y_of(tick)
        out.append(
            f'<line x1="{_n(left)}" y1="{_n(y)}" x2="{_n(left + PANEL_W)}" y2="{_n(y)}" '
            'stroke="#e4e4e4"/>'
        )
        out.append(f'<text x="{_n(left - 8)}" y="{_n(y + 4)}" text-anchor="end">{tick}</text>')
    for attempt in range(1, ATTEMPTS + 1):
        out.append(
            f'<text x="{_n(x_of(attempt))}" y="{_n(top + PANEL_H + 16)}" '
            f'text-anchor="middle">{attempt}</text>'
        )
    out.append(
        f'<rect x="{_n(left)}" y="{_n(top)}" width="{PANEL_W}" height="{PANEL_H}" '
        'fill="none" stroke="#999"/>'
    )
    out.append(
        f'<text x="{_n(left + PANEL_W / 2)}" y="{_n(top + PANEL_H + 34)}" '
        'text-anchor="middle" fill="#555">attempt</text>'
    )
    out.append(
        f'<text transform="translate({_n(left - 38)},{_n(top + PANEL_H / 2)}) rotate(-90)" '
        'text-anchor="middle" fill="#555">delay (s)</text>'
    )
    nominal = [min(MAX_DELAY, BASE_DELAY * 2.0 ** (n - 1)) for n in range(1, ATTEMPTS + 1)]
    out.append(
        _polyline(
            [(x_of(n), y_of(d)) for n, d in enumerate(nominal, 1)],
            stroke="#555",
            stroke_dasharray="5,4",
        )
    )
    runs = schedules(mode)
    for seed, run in enumerate(runs):
        spread = (seed - (CLIENTS - 1) / 2) * 0.4  # side by side, so the density shows
        for attempt, delay in enumerate(run, 1):
            out.append(
                f'<circle cx="{_n(x_of(attempt) + spread)}" cy="{_n(y_of(delay))}" r="2.4" '
                f'fill="{colour}" fill-opacity="0.35"/>'
            )
    means = [sum(run[i] for run in runs) / len(runs) for i in range(ATTEMPTS)]
    out.append(
        _polyline(
            [(x_of(n), y_of(m)) for n, m in enumerate(means, 1)], stroke=colour, stroke_width="2"
        )
    )
    out.append("</g>")
    return out


def render() -> str:
    """The whole SVG document, as text; the same bytes on every run."""
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        "<title>wsfleet retry delays per jitter mode</title>",
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="24" font-size="14" font-weight="bold">RetryPolicy(max_attempts='
        f"{ATTEMPTS}, base_delay={BASE_DELAY:g}, max_delay={MAX_DELAY:g}): "
        "delay before each attempt</text>",
        _polyline([(LEFT, 42), (LEFT + 30, 42)], stroke="#555", stroke_dasharray="5,4"),
        f'<text x="{LEFT + 36}" y="46">schedule min(30, 1 &#215; 2^(n&#8722;1)), '
        "before jitter</text>",
        f'<circle cx="{LEFT + 345}" cy="42" r="2.4" fill="#555" fill-opacity="0.6"/>',
        f'<text x="{LEFT + 354}" y="46">one client ({CLIENTS} seeded clients)</text>',
        _polyline([(LEFT + 540, 42), (LEFT + 570, 42)], stroke="#555", stroke_width="2"),
        f'<text x="{LEFT + 576}" y="46">their mean</text>',
    ]
    for index, mode in enumerate(JitterMode):
        row, column = divmod(index, 2)
        out.extend(_panel(mode, LEFT + column * (PANEL_W + GAP_X), TOP + row * (PANEL_H + GAP_Y)))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT, help="SVG file to write")
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if the file is stale"
    )
    args = parser.parse_args(argv)
    svg = render()
    path: Path = args.output
    if args.check:
        fresh = path.exists() and path.read_text(encoding="utf-8") == svg
        if not fresh:
            print(f"{path} is stale: run python scripts/plot_backoff.py", file=sys.stderr)
        return 0 if fresh else 1
    path.write_text(svg, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
