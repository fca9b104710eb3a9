"""The ``wsfleet`` command line: ``wsfleet diagram``.

Later subcommands (the demo) hang off the same parser.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _diagram(args: argparse.Namespace) -> int:
    from .diagram import render

    try:
        data = render(args.format)
    except Exception as exc:  # graphviz missing or its ``dot`` binary absent
        print(f"wsfleet diagram: {exc}", file=sys.stderr)
        return 1
    if args.output is None or args.output == "-":
        if isinstance(data, bytes):
            sys.stdout.buffer.write(data)
        else:
            sys.stdout.write(data)
    else:
        path = Path(args.output)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data, encoding="utf-8")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsfleet", description="wsfleet command line tools")
    commands = parser.add_subparsers(dest="command", required=True)
    diagram = commands.add_parser(
        "diagram", help="draw the connection state diagram from the transition table"
    )
    diagram.add_argument(
        "--format",
        choices=["mermaid", "dot", "svg"],
        default="mermaid",
        help="mermaid text (no system dependency), graphviz dot text, or SVG (needs graphviz)",
    )
    diagram.add_argument("-o", "--output", help="file to write (default: standard output)")
    diagram.set_defaults(run=_diagram)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wsfleet`` console script and ``python -m wsfleet``."""
    args = _parser().parse_args(argv)
    code: int = args.run(args)
    return code
