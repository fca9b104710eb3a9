"""What a client sent to open its WebSocket, in one shape whatever library served it.

An authentication hook (``ConnectionManager(authenticate=...)``) reads the request that
opened a socket: a token in the query or a header, a session cookie, the subprotocols a
browser offers (where it can put a token, having no way to set a header). Each library
keeps that request in a shape of its own, some of them only until the socket is accepted;
``handshake_of`` reads it from any of them into a ``Handshake``, so a hook written once
works on every adapter. It recognizes objects by what they hold (duck typing) and imports
none of the libraries:

* websockets (asyncio or trio): the server connection a handler gets (``ws.request``,
  ``ws.remote_address``), or the ``Request`` a ``process_request`` hook is given;
* trio-websocket: the ``WebSocketRequest`` a handler gets before ``accept()``, or the
  ``WebSocketConnection`` after it (which keeps only the path and the peer's address: the
  library does not keep a server's request headers, so authenticate the request);
* ASGI: a Starlette (FastAPI) ``WebSocket``, or a raw ``websocket`` scope;
* a ``Handshake`` itself.

The module does no I/O: a handshake is data.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import parse_qsl, unquote

from .errors import InvalidArgument, WrongType

__all__ = ["Handshake", "Headers", "handshake_of", "socket_of"]

_ACCEPTED: Final = (
    "a websockets server connection or Request, a trio-websocket WebSocketRequest or "
    "WebSocketConnection, a Starlette/FastAPI WebSocket, an ASGI websocket scope, or a "
    "Handshake"
)


class Headers(Mapping[str, str]):
    """Request headers by name, case-insensitively; a header sent several times is its
    values joined with ``", "`` (``"; "`` for ``Cookie``), as HTTP allows."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        joined: dict[str, str] = {}
        for name, value in items:
            key = name.strip().lower()
            if key in joined:
                joined[key] += ("; " if key == "cookie" else ", ") + value
            else:
                joined[key] = value
        self._items = joined

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)  # lower-case names

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self._items == other._items
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


def _cookies(header: str) -> Mapping[str, str]:
    """The cookies of a ``Cookie`` header; a part that is no ``name=value`` is skipped (a
    browser sends what any script of the site set), the first of a repeated name wins."""
    found: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        found.setdefault(name, value)
    return MappingProxyType(found)


def _split(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


@dataclass(frozen=True, slots=True)
class Handshake:
    """The request that opened a WebSocket: what an authentication hook decides on.

    Build one with ``Handshake.of_request(target, headers, ...)`` (or ``handshake_of``);
    the fields derive from those and are consistent with each other.
    """

    #: The path, percent-decoded, without the query: ``"/ws/room 1"``.
    path: str
    #: The query as sent (still percent-encoded), without the ``?``.
    query_string: str = ""
    #: The query's parameters, decoded; the first value of a repeated name.
    query: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: The request's headers (``handshake.headers["authorization"]``, any case).
    headers: Headers = field(default_factory=Headers)
    #: The cookies of the ``Cookie`` header; a malformed part is skipped.
    cookies: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: The subprotocols the client offered (``Sec-WebSocket-Protocol``), in its order.
    subprotocols: tuple[str, ...] = ()
    #: The peer's address and port, when the library knows them.
    client: tuple[str, int] | None = None

    @classmethod
    def of_request(
        cls,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        *,
        subprotocols: Iterable[str] | None = None,
        client: tuple[str, int] | None = None,
    ) -> Handshake:
        """From a request target (``"/ws?token=..."``) and its headers, as sent.

        The subprotocols are the ``Sec-WebSocket-Protocol`` header's unless given.
        """
        if not isinstance(target, str):
            raise WrongType(f"a request target is a str, got {type(target).__name__}")
        path, _, query_string = target.partition("?")
        query: dict[str, str] = {}
        for name, value in parse_qsl(query_string, keep_blank_values=True, errors="replace"):
            query.setdefault(name, value)
        mapping = Headers(headers)
        if subprotocols is None:
            offered = _split(mapping.get("sec-websocket-protocol", ""))
        else:
            offered = tuple(subprotocols)
        return cls(
            path=unquote(path, errors="replace"),
            query_string=query_string,
            query=MappingProxyType(query),
            headers=mapping,
            cookies=_cookies(mapping.get("cookie", "")),
            subprotocols=offered,
            client=client,
        )


def _address(value: Any) -> tuple[str, int] | None:
    """``(host, port)`` from a socket address (IPv6's has four fields) or an endpoint."""
    if isinstance(value, tuple | list) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    address, port = getattr(value, "address", None), getattr(value, "port", None)
    if address is not None and isinstance(port, int):
        return (str(address), port)
    return None  # a stream without an address (trio-websocket gives its repr)


def _latin1(pairs: Iterable[tuple[Any, Any]]) -> list[tuple[str, str]]:
    """Headers as bytes (ASGI, wsproto) or str: HTTP's bytes are ISO-8859-1."""
    return [
        (
            name.decode("latin-1") if isinstance(name, bytes) else str(name),
            value.decode("latin-1") if isinstance(value, bytes) else str(value),
        )
        for name, value in pairs
    ]


def _of_scope(scope: Mapping[str, Any]) -> Handshake:
    if scope.get("type") != "websocket":
        raise InvalidArgument(f"not a websocket scope (its type is {scope.get('type')!r})")
    query = scope.get("query_string", b"")
    query_string = query.decode("latin-1") if isinstance(query, bytes) else str(query)
    raw = scope.get("raw_path")
    if isinstance(raw, bytes):
        path = raw.decode("latin-1").partition("?")[0]
    else:
        path = str(scope.get("path", "/"))  # already decoded: no "%" left to decode
        path = path.replace("%", "%25").replace("?", "%3F")
    target = path + ("?" + query_string if query_string else "")
    return Handshake.of_request(
        target,
        _latin1(scope.get("headers", ())),
        subprotocols=[str(item) for item in scope.get("subprotocols", ())],
        client=_address(scope.get("client")),
    )


def handshake_of(obj: object) -> Handshake:
    """The ``Handshake`` of a socket or request of any library wsfleet knows (see the
    module docstring); ``WrongType`` for anything else."""
    if isinstance(obj, Handshake):
        return obj
    scope = getattr(obj, "scope", None)
    if isinstance(scope, Mapping):  # Starlette's WebSocket (a Mapping itself: first)
        return _of_scope(scope)
    if isinstance(obj, Mapping):
        return _of_scope(obj)
    if hasattr(obj, "remote_address") and hasattr(obj, "request"):  # websockets
        request = getattr(obj, "request", None)
        if request is None:
            raise InvalidArgument("this websockets connection has not received its request yet")
        target, headers, offered = _of_websockets_request(request)
        client = _address(getattr(obj, "remote_address", None))
        return Handshake.of_request(target, headers, subprotocols=offered, client=client)
    if hasattr(obj, "proposed_subprotocols") and hasattr(obj, "headers"):  # trio-websocket
        headers = _latin1(getattr(obj, "headers", ()))
        event = getattr(obj, "_event", None)  # wsproto's Request: it holds the Host header
        host = getattr(event, "host", None)
        if isinstance(host, str) and not any(name == "host" for name, _ in headers):
            headers.insert(0, ("host", host))
        offered = tuple(getattr(obj, "proposed_subprotocols", ()))
        if offered and not any(name == "sec-websocket-protocol" for name, _ in headers):
            headers.append(("sec-websocket-protocol", ", ".join(offered)))
        return Handshake.of_request(
            str(getattr(obj, "path", "/")),
            headers,
            subprotocols=offered,
            client=_address(getattr(obj, "remote", None)),
        )
    if hasattr(obj, "handshake_headers") and hasattr(obj, "remote"):  # trio-websocket, accepted
        if getattr(obj, "is_client", False):
            raise InvalidArgument("a client connection has no client's handshake to read")
        path = getattr(obj, "path", None)
        return Handshake.of_request(
            path if isinstance(path, str) else "/",
            client=_address(getattr(obj, "remote", None)),
        )
    if hasattr(obj, "path") and hasattr(getattr(obj, "headers", None), "raw_items"):
        target, headers, offered = _of_websockets_request(obj)  # as process_request has it
        return Handshake.of_request(target, headers, subprotocols=offered)
    raise WrongType(f"no handshake can be read from {type(obj).__name__}: give {_ACCEPTED}")


def _of_websockets_request(request: Any) -> tuple[str, list[tuple[str, str]], tuple[str, ...]]:
    headers = _latin1(request.headers.raw_items())
    offered: list[str] = []
    for name, value in headers:
        if name.lower() == "sec-websocket-protocol":
            offered.extend(_split(value))
    return str(request.path), headers, tuple(offered)


def socket_of(obj: object) -> object:
    """The socket a session will be opened with for ``obj``: the connection a
    trio-websocket ``WebSocketRequest`` becomes once accepted, else ``obj`` itself.

    An answer of the authentication hook is remembered for both, so that a handler that
    authenticated the request opens ``manager.session(ws)`` on its connection without
    asking the hook again.
    """
    if hasattr(obj, "proposed_subprotocols"):
        connection = getattr(obj, "_connection", None)
        if connection is not None:
            return connection
    return obj
