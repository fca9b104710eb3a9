"""The pages, served by the WebSocket server itself: one port, no second server.

websockets calls ``process_request`` before the opening handshake; a ``Response`` returned
there is sent instead of upgrading the connection. That is all a demo needs to serve a few
static files, on asyncio and on trio alike, without an HTTP or ASGI server next to it.

The files ship inside the package (``wsfleet/demo/static``) and are read once, into a dict
looked up by file name: no request path ever reaches the file system. A WebSocket
handshake is let through to the handler only to a known endpoint, from a page the
``OriginCheck`` accepts (403 otherwise), with a usable name for the chat. The dashboard gets
the state diagram inlined (the committed SVG, drawn from the transition table, and the
mermaid text rendered from the table at start-up), so nothing is fetched from the network;
the Content-Security-Policy says so to the browser as well.

A client may reset its connection between sending a request and reading the answer. On
trio, websockets has closed the socket by then, and asking it for its address raises
``OSError``; a hook that let that escape would make websockets log a traceback for every
such reset. Nobody is left to read an answer, so the request is refused with one line at
DEBUG (websockets sends nothing on a closed connection).
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from ._chat import ChatError, check_identity
from ._metrics import Exposition
from ._origins import OriginCheck

__all__ = ["ENDPOINTS", "Pages"]

logger = logging.getLogger("wsfleet.demo")

#: The WebSocket endpoints: chat pages, and dashboards.
ENDPOINTS: Final = ("/ws", "/admin")

PAGES: Final = {"/": "index.html", "/dashboard": "dashboard.html"}

TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}

#: Same origin only, WebSockets included; no inline script.
CSP: Final = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_PROLOG = re.compile(r"^\s*(<\?xml[^>]*\?>\s*)?(<!DOCTYPE[^>]*>\s*)?", re.DOTALL)


def _mermaid() -> str:
    """The state diagram as mermaid text, drawn from the table now; a note if it cannot be."""
    try:
        from ..diagram import render

        text = render("mermaid")
    except Exception as exc:  # transitions' diagram extension needs the graphviz package
        return f"(mermaid text unavailable: {exc})"
    return text if isinstance(text, str) else text.decode()


def _response(status: int, reason: str, content_type: str, body: bytes) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("Content-Security-Policy", CSP),
        ]
    )
    return Response(status, reason, headers, body)


def _text(status: int, reason: str, text: str) -> Response:
    return _response(status, reason, "text/plain; charset=utf-8", f"{text}\n".encode())


def _is_upgrade(request: Request) -> bool:
    return "websocket" in request.headers.get("Upgrade", "").lower()


class Pages:
    """The static files, and the ``process_request`` hook that serves them."""

    def __init__(self, origins: OriginCheck) -> None:
        self.origins = origins
        #: ``/metrics``, once the manager runs (``None``: prometheus-client is not installed).
        self.metrics: Exposition | None = None
        static = resources.files(__package__) / "static"
        self.files: dict[str, bytes] = {
            entry.name: entry.read_bytes()
            for entry in static.iterdir()
            if entry.is_file() and any(entry.name.endswith(ext) for ext in TYPES)
        }
        svg = self.files["connection-states.svg"].decode()
        dashboard = self.files["dashboard.html"].decode()
        dashboard = dashboard.replace("<!-- diagram -->", _PROLOG.sub("", svg), 1)
        dashboard = dashboard.replace("<!-- mermaid -->", html.escape(_mermaid()), 1)
        self.files["dashboard.html"] = dashboard.encode()

    def file(self, name: str) -> Response:
        body = self.files.get(name)
        if body is None:
            return _text(404, "Not Found", f"no such file: {name}")
        content_type = next(t for ext, t in TYPES.items() if name.endswith(ext))
        return _response(200, "OK", content_type, body)

    def metrics_page(self) -> Response:
        """The Prometheus exposition of the demo's manager."""
        if self.metrics is None:
            return _text(
                404,
                "Not Found",
                "metrics need prometheus-client: pip install 'wsfleet[prometheus]'",
            )
        body, content_type = self.metrics()
        return _response(200, "OK", content_type, body)

    def route(self, request: Request, local_address: Any = None) -> Response | None:
        """The HTTP answer to ``request``, or ``None`` to go on with a WebSocket handshake.

        ``local_address`` is the server's end of the connection (``(host, port)``): it tells
        the origin check which origins are the demo's own.
        """
        parts = urlsplit(request.path)
        if _is_upgrade(request):
            if parts.path not in ENDPOINTS:
                return _text(404, "Not Found", f"no WebSocket endpoint at {parts.path}")
            refusal = self.origins.refusal(request, local_address)
            if refusal is not None:
                return _text(403, "Forbidden", refusal)
            if parts.path == "/ws":
                try:
                    check_identity(parse_qs(parts.query))
                except ChatError as exc:
                    return _text(400, "Bad Request", str(exc))
            return None
        if parts.path in PAGES:
            return self.file(PAGES[parts.path])
        if parts.path.startswith("/static/"):
            return self.file(parts.path.removeprefix("/static/"))
        if parts.path == "/metrics":
            return self.metrics_page()
        return _text(404, "Not Found", f"nothing at {parts.path}; try /, /dashboard or /metrics")

    def hook(self) -> Callable[[Any, Request], Response | None]:
        """``process_request`` for websockets' ``serve`` (asyncio and trio alike)."""

        def process_request(connection: Any, request: Request) -> Response | None:
            try:
                local_address = connection.local_address
            except OSError as exc:  # reset by the peer: websockets has closed the socket
                logger.debug(
                    "a request to %s came from a connection already gone: %s",
                    request.path.partition("?")[0],
                    exc,
                )
                return _text(400, "Bad Request", "the connection is gone")
            return self.route(request, local_address)

        return process_request
