"""Which pages may open the demo's WebSockets: the Origin check of every handshake.

A browser lets a page open a WebSocket to any address, 127.0.0.1 included, and tells the
server where the page came from in the ``Origin`` header, which the page's script cannot
change. Listening on loopback keeps other machines out, not the other sites open in the
visitor's browser (cross-site WebSocket hijacking): without this check any page could read
the dashboard's feed and press "kill". So every handshake to ``/ws`` and ``/admin`` passes
here first, and is accepted when:

* **the page is the demo's own**: the Origin is ``http://`` and the request's ``Host``, and
  that Host names this server: the address the connection came in on, the ``--host`` name,
  or, on loopback, any of 127.0.0.1, localhost and [::1] with the same port. A page opened
  at http://localhost:8000 is the demo as much as one at http://127.0.0.1:8000; a page of
  evil.example whose name was made to resolve to 127.0.0.1 (DNS rebinding) is not, since its
  Host is evil.example;
* **the origin was allowed** (``--allow-origin``), exactly: the https:// name of a proxy in
  front of the demo, say;
* **there is no Origin header**. Browsers send one with every WebSocket handshake, so a
  request without one comes from a program, and a program can send any Origin it likes:
  the check cannot stop programs, only pages. What keeps programs out is the address the
  demo listens on. (websockets' ``origins=[..., None]`` means the same.)

Anything else is answered 403 before the handshake and changes nothing. The first refusal
of each origin is logged, not every one: a page that retries in a loop does not flood the
log.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import urlsplit

from websockets.datastructures import MultipleValuesError
from websockets.http11 import Request

from ..errors import InvalidArgument

__all__ = ["OriginCheck", "normalize_origin"]

logger = logging.getLogger("wsfleet.demo")

#: The names of this machine's loopback interface as a browser may be given them.
LOOPBACK: Final = ("127.0.0.1", "localhost", "[::1]")
#: Addresses that mean "every interface": no name of the server follows from them.
WILDCARD: Final = frozenset(("", "0.0.0.0", "::"))
#: Ports a browser leaves out of an origin.
DEFAULT_PORTS: Final = {"http": 80, "https": 443}
#: No origin is longer: a longer header is cut to this before it is compared or logged.
MAX_ORIGIN: Final = 300
#: How many refused origins are remembered so as to log each once; past that, no more logs.
LOGGED_MAX: Final = 100


def _url_host(name: str) -> str:
    """``name`` as it appears in a URL: lower case, IPv6 in brackets, IPv4-mapped as IPv4."""
    name = name.lower()
    try:
        address = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return name
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return f"[{address.compressed}]"
    return str(address)


def _is_loopback(url_host: str) -> bool:
    if url_host == "localhost":
        return True
    try:
        return ipaddress.ip_address(url_host.strip("[]")).is_loopback
    except ValueError:
        return False


def _origin(scheme: str, url_host: str, port: int | None) -> str:
    if port is None or port == DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{url_host}"
    return f"{scheme}://{url_host}:{port}"


def normalize_origin(value: str) -> str:
    """``value`` as a browser writes an origin (``https://chat.example``); else ``InvalidArgument``.

    An origin is a scheme (http or https), a host and a port: no path, query or user name.
    The default port is left out and the host is lower case, as in the header browsers send.
    """
    problem = f"an origin is http(s)://host[:port], as a browser sends it; got {value!r}"
    if not isinstance(value, str):
        raise InvalidArgument(problem)
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        raise InvalidArgument(problem) from None
    if (
        parts.scheme not in DEFAULT_PORTS
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise InvalidArgument(problem)
    return _origin(parts.scheme, _url_host(parts.hostname), port)


class OriginCheck:
    """Whether a handshake's page may open a socket here: from the request and its address."""

    def __init__(self, host: str, allow: Iterable[str] = ()) -> None:
        if isinstance(allow, str):  # one origin, not its characters
            allow = [allow]
        #: The origins allowed besides the demo's own (``--allow-origin``), normalized.
        self.allowed: frozenset[str] = frozenset(normalize_origin(origin) for origin in allow)
        self._names = frozenset(() if host in WILDCARD else (_url_host(host),))
        #: How many handshakes were refused, and the origins already logged.
        self.refused = 0
        self._logged: set[str] = set()

    def own_origins(self, local_address: Any) -> frozenset[str]:
        """The origins of the demo's own pages, for a connection in on ``local_address``."""
        names = set(self._names)
        port: int | None = None
        if isinstance(local_address, tuple) and len(local_address) >= 2:
            names.add(_url_host(str(local_address[0])))
            port = int(local_address[1])
        if any(_is_loopback(name) for name in names):
            names.update(LOOPBACK)
        return frozenset(_origin("http", name, port) for name in names)

    def refusal(self, request: Request, local_address: Any) -> str | None:
        """Why the page behind ``request`` may not open a socket here; ``None`` if it may.

        A refusal is counted, and logged if it is the first from its origin.
        """
        try:
            origin = request.headers.get("Origin")
            host = request.headers.get("Host")
        except MultipleValuesError:
            return self._refused("(several)", request.path, "more than one Origin or Host header")
        if origin is None:
            return None  # not a browser: see the module's docstring
        origin = origin.strip().lower()[:MAX_ORIGIN]
        if origin in self.allowed:
            return None
        if (
            host is not None
            and origin == f"http://{host.strip().lower()}"
            and origin in self.own_origins(local_address)
        ):
            return None
        return self._refused(origin, request.path, f"the page is from {origin}, not this demo")

    def _refused(self, origin: str, path: str, why: str) -> str:
        self.refused += 1
        if origin not in self._logged and len(self._logged) < LOGGED_MAX:
            self._logged.add(origin)
            if len(self._logged) == LOGGED_MAX:
                tail = f"{LOGGED_MAX} origins refused: no further origin will be logged"
            else:
                tail = "further refusals of this origin are not logged"
            logger.warning(
                "refused a WebSocket handshake to %s with 403: %s (--allow-origin widens "
                "the check); %s",
                path.partition("?")[0],
                why,
                tail,
            )
        return why
