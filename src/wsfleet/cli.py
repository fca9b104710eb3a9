"""The ``wsfleet`` command line: ``wsfleet diagram`` and ``wsfleet demo``."""

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


def _demo(args: argparse.Namespace) -> int:
    try:
        from .demo import run
    except ImportError as exc:  # the websockets library is an extra
        print(f"wsfleet demo: {exc} (pip install 'wsfleet[demo]')", file=sys.stderr)
        return 1
    if args.redis is not None:
        try:
            import wsfleet.adapters.redis  # noqa: F401
        except ImportError as exc:
            print(f"wsfleet demo --redis: {exc}", file=sys.stderr)
            return 1
    return run(
        args.host,
        args.port,
        backend=args.backend,
        redis=args.redis,
        allow_origins=args.allow_origin,
    )


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="wsfleet", description="wsfleet command line tools")
    parser.add_argument("--version", action="version", version=f"wsfleet {__version__}")
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
    demo = commands.add_parser(
        "demo",
        help="serve a chat and a live dashboard of its connections (pages and WebSockets)",
        description="Serve a chat (/), a live dashboard of the fleet (/dashboard) and its "
        "Prometheus metrics (/metrics) on one "
        "port: the websockets library's server answers the pages and the WebSockets, on "
        "asyncio or trio. Anyone who can reach the port can press the dashboard's buttons; "
        "in a browser, only the demo's own pages (and --allow-origin) may open its "
        "WebSockets.",
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    demo.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (8000)")
    demo.add_argument(
        "--backend", choices=["asyncio", "trio"], default="asyncio", help="event loop (asyncio)"
    )
    demo.add_argument(
        "--redis",
        metavar="URL",
        help="share the fleet through Redis (redis://host:6379/0; needs wsfleet[redis])",
    )
    demo.add_argument(
        "--allow-origin",
        metavar="ORIGIN",
        action="append",
        default=[],
        help="let pages from ORIGIN (https://chat.example) open the WebSockets too; "
        "repeatable. By default only the demo's own pages may; clients that send no "
        "Origin header (not browsers) are let in",
    )
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wsfleet`` console script and ``python -m wsfleet``."""
    args = _parser().parse_args(argv)
    code: int = args.run(args)
    return code
