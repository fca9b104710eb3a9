"""The handshake an authentication hook reads, and the manager's side of authentication.

``Handshake``: the path without the query and percent-decoded, the query (first value per
name) and its raw string, headers by any case (repeats joined), cookies that survive junk,
the offered subprotocols, the peer. ``handshake_of`` reads it from each library's objects,
built here as the libraries build them; the real-socket tests are in
``tests/adapters/test_authentication.py``. Then the manager: the hook's answer is asked once
per socket and kept no longer than the socket, a bad answer is the hook's bug, a refused
session is closed with 4401 and registers nothing.
"""

from __future__ import annotations

import gc
import logging
import pickle
import subprocess
import sys
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from wsfleet import (
    ConnectionManager,
    InvalidArgument,
    RetryPolicy,
    TransportClosed,
    Unauthenticated,
    WrongType,
    WsfleetError,
)
from wsfleet.closecodes import UNAUTHENTICATED
from wsfleet.fsm.states import HELD
from wsfleet.handshake import Handshake, Headers, handshake_of, socket_of
from wsfleet.testing import MemoryTransport

SCOPE: dict[str, Any] = {
    "type": "websocket",
    "path": "/ws/room 1",
    "raw_path": b"/ws/room%201",
    "query_string": b"token=abc&x=1&x=2&name=J%C3%BCrgen",
    "headers": [
        (b"host", b"example.org"),
        (b"authorization", b"Bearer abc"),
        (b"x-tenant", b"one"),
        (b"x-tenant", b"two"),
        (b"cookie", b'session=s1; junk; theme="dark"; session=s2'),
        (b"sec-websocket-protocol", b"wsfleet.v1, token.abc"),
    ],
    "subprotocols": ["wsfleet.v1", "token.abc"],
    "client": ["10.0.0.7", 51234],
}

TARGET = "/ws/room%201?token=abc&x=1&x=2&name=J%C3%BCrgen"
HEADERS = [(name.decode(), value.decode()) for name, value in SCOPE["headers"]]


def check(handshake: Handshake, *, client: tuple[str, int] | None = ("10.0.0.7", 51234)) -> None:
    assert handshake.path == "/ws/room 1"
    assert handshake.query_string == "token=abc&x=1&x=2&name=J%C3%BCrgen"
    assert dict(handshake.query) == {"token": "abc", "x": "1", "name": "Jürgen"}
    assert handshake.headers["Authorization"] == "Bearer abc"
    assert handshake.headers["X-Tenant"] == "one, two"
    assert handshake.headers["host"] == "example.org"
    assert dict(handshake.cookies) == {"session": "s1", "theme": "dark"}
    assert handshake.subprotocols == ("wsfleet.v1", "token.abc")
    assert handshake.client == client


# -- Handshake ---------------------------------------------------------------------------------


def test_a_handshake_from_a_request_target_and_its_headers() -> None:
    handshake = Handshake.of_request(TARGET, HEADERS, client=("10.0.0.7", 51234))
    check(handshake)
    assert handshake_of(handshake) is handshake
    assert handshake == Handshake.of_request(TARGET, HEADERS, client=("10.0.0.7", 51234))


def test_headers_are_case_insensitive_and_read_only() -> None:
    headers = Headers([("X-A", "1"), ("x-a", "2"), ("Cookie", "a=1"), ("cookie", "b=2")])
    assert headers["x-A"] == "1, 2"
    assert headers["COOKIE"] == "a=1; b=2"  # cookies are joined as a Cookie header joins them
    assert "X-a" in headers
    assert 5 not in headers
    assert list(headers) == ["x-a", "cookie"]
    assert len(headers) == 2
    assert headers.get("missing") is None
    assert headers == Headers([("x-a", "1, 2"), ("cookie", "a=1; b=2")])
    with pytest.raises(TypeError):
        headers["x-a"] = "3"  # type: ignore[index]
    with pytest.raises(TypeError):
        hash(headers)


@pytest.mark.parametrize(
    ("header", "cookies"),
    [
        ("", {}),
        ("a=1", {"a": "1"}),
        ("a=1;b=2", {"a": "1", "b": "2"}),
        ("  a = 1 ;  ; =x; junk; b=", {"a": "1", "b": ""}),
        ('q="quoted value"; e="', {"q": "quoted value", "e": '"'}),
        ("a=1; a=2", {"a": "1"}),
        ("k=v=w", {"k": "v=w"}),
        ("\x00\xff=\x01", {"\x00\xff": "\x01"}),
    ],
)
def test_cookies_survive_junk(header: str, cookies: dict[str, str]) -> None:
    assert dict(Handshake.of_request("/", [("Cookie", header)]).cookies) == cookies


def test_odd_queries_and_paths() -> None:
    handshake = Handshake.of_request("/a%2Fb%ZZ?=x&&k&v=%FF&k=2")
    assert handshake.path == "/a/b%ZZ"
    assert dict(handshake.query) == {"": "x", "k": "", "v": "\ufffd"}
    assert Handshake.of_request("/").query == {}
    assert Handshake.of_request("/", subprotocols=["a"]).subprotocols == ("a",)
    with pytest.raises(WrongType):
        Handshake.of_request(b"/")  # type: ignore[arg-type]


def test_a_handshake_is_frozen() -> None:
    handshake = Handshake.of_request("/?a=1")
    with pytest.raises(AttributeError):
        handshake.path = "/other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        handshake.query["a"] = "2"  # type: ignore[index]


# -- every library's objects ---------------------------------------------------------------------


def test_an_asgi_scope_and_a_starlette_websocket() -> None:
    from starlette.websockets import WebSocket

    async def nothing(*_: Any) -> Any:
        raise AssertionError("the handshake does no I/O")

    check(handshake_of(SCOPE))
    check(handshake_of(WebSocket(dict(SCOPE), nothing, nothing)))
    without_raw = {key: value for key, value in SCOPE.items() if key != "raw_path"}
    without_raw["path"] = "/ws/100% ?sure"
    assert handshake_of(without_raw).path == "/ws/100% ?sure"
    assert handshake_of({"type": "websocket", "path": "/"}).client is None
    with pytest.raises(InvalidArgument, match="not a websocket scope"):
        handshake_of({"type": "http", "path": "/"})


def test_a_websockets_request_and_server_connection() -> None:
    from websockets.datastructures import Headers as WebsocketsHeaders
    from websockets.http11 import Request

    request = Request(TARGET, WebsocketsHeaders(HEADERS))
    check(handshake_of(request), client=None)

    class Connection:  # what a websockets ServerConnection holds, as process_request sees it
        def __init__(self, request: object, remote_address: object) -> None:
            self.request = request
            self.remote_address = remote_address

    check(handshake_of(Connection(request, ("10.0.0.7", 51234))))
    ipv6 = handshake_of(Connection(request, ("::1", 51234, 0, 0)))
    assert ipv6.client == ("::1", 51234)
    with pytest.raises(InvalidArgument, match="not received its request"):
        handshake_of(Connection(None, None))


def test_a_trio_websocket_request() -> None:
    from trio_websocket import WebSocketRequest
    from trio_websocket._impl import Endpoint
    from wsproto.events import Request

    class Connection:
        remote = Endpoint("10.0.0.7", 51234, False)

    # as wsproto hands it over: Host and Sec-WebSocket-Protocol taken out of the headers
    event = Request(
        host="example.org",
        target=TARGET,
        extra_headers=[
            (name.encode(), value.encode())
            for name, value in HEADERS
            if name not in ("host", "sec-websocket-protocol")
        ],
        subprotocols=["wsfleet.v1", "token.abc"],
    )
    request = WebSocketRequest(Connection(), event)  # type: ignore[arg-type]
    handshake = handshake_of(request)
    check(handshake)
    assert handshake.headers["sec-websocket-protocol"] == "wsfleet.v1, token.abc"
    assert socket_of(request) is request._connection


def test_a_trio_websocket_connection_keeps_its_path_and_peer_only() -> None:
    class Connection:  # what trio-websocket's WebSocketConnection holds once accepted
        handshake_headers = ()
        path = TARGET
        remote = "a stream without an address"
        is_client = False

    handshake = handshake_of(Connection())
    assert (handshake.path, handshake.query["token"], handshake.client) == (
        "/ws/room 1",
        "abc",
        None,
    )
    assert len(handshake.headers) == 0
    Connection.is_client = True
    with pytest.raises(InvalidArgument, match="client connection"):
        handshake_of(Connection())


@pytest.mark.parametrize("thing", [None, 3, "/ws", object(), MemoryTransport()])
def test_anything_else_is_a_wrong_type_that_says_what_is_accepted(thing: object) -> None:
    with pytest.raises(WrongType, match="Starlette/FastAPI WebSocket"):
        handshake_of(thing)
    assert socket_of(thing) is thing


def test_the_module_does_no_io() -> None:
    code = (
        "import sys, wsfleet.handshake\n"
        "loaded = {'anyio', 'trio', 'asyncio', 'socket', 'websockets', 'trio_websocket',"
        " 'starlette', 'wsfleet._runtime'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- the error ---------------------------------------------------------------------------------


def test_unauthenticated_is_a_permission_error_with_a_reason() -> None:
    error = Unauthenticated("token expired")
    assert isinstance(error, WsfleetError)
    assert isinstance(error, PermissionError)
    assert (error.reason, str(error)) == ("token expired", "token expired")
    assert Unauthenticated().reason == "unauthenticated"
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.reason) == (Unauthenticated, "token expired")


# -- the manager -------------------------------------------------------------------------------


class Socket(MemoryTransport):
    """A memory socket that carries an ASGI scope, as a Starlette WebSocket does."""

    def __init__(self, query: bytes) -> None:
        super().__init__()
        self.scope = {"type": "websocket", "path": "/ws", "query_string": query}


class Counting:
    def __init__(self, answer: object = "alice") -> None:
        self.calls = 0
        self.answer = answer

    def __call__(self, handshake: Handshake) -> Any:
        self.calls += 1
        return self.answer


@pytest.mark.anyio
async def test_the_hook_is_asked_once_per_socket_and_forgets_it_with_the_socket() -> None:
    hook = Counting()
    async with ConnectionManager(authenticate=hook, heartbeat=None) as manager:
        socket = Socket(b"token=a")
        assert await manager.authenticate(socket) == "alice"
        assert await manager.authenticate(socket) == "alice"
        async with manager.session(socket) as session:
            assert session.identifier == "alice"
            assert manager.identifiers() == {"alice"}
        assert hook.calls == 1
        assert await manager.authenticate(Socket(b"token=a")) == "alice"  # another socket
        assert hook.calls == 2
        known = manager._auth._known
        del socket, session
        gc.collect()
        assert len(known) == 0  # the memory keeps no socket alive
        assert await manager.authenticate(dict(SCOPE)) == "alice"  # a dict: not remembered
        assert len(known) == 0


@pytest.mark.anyio
async def test_an_async_hook_and_its_refusals() -> None:
    async def hook(handshake: Handshake) -> str | None:
        await anyio.lowlevel.checkpoint()
        token = handshake.query.get("token")
        if token == "expired":
            raise Unauthenticated("token expired")
        return {"a": "alice"}.get(token or "")

    async with ConnectionManager(authenticate=hook, heartbeat=None) as manager:
        assert await manager.authenticate(Socket(b"token=a")) == "alice"
        with pytest.raises(Unauthenticated) as refused:
            await manager.authenticate(Socket(b"token=nope"))
        assert refused.value.reason == "unauthenticated"
        with pytest.raises(Unauthenticated, match="token expired"):
            await manager.authenticate(Socket(b"token=expired"))
        assert manager.count() == 0


@pytest.mark.anyio
async def test_a_refused_session_is_closed_with_4401_and_registers_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="wsfleet")

    def hook(handshake: Handshake) -> str:
        raise Unauthenticated("sign in first")

    async with ConnectionManager(authenticate=hook, heartbeat=None) as manager:
        socket = Socket(b"")
        async with manager.session(socket) as session:
            assert session.refused == "sign in first"
            assert (session.close_code, session.close_reason) == (UNAUTHENTICATED, "sign in first")
            assert [message async for message in session] == []
            manager.add_to_group(session.identifier, "room")  # ends the block quietly
        assert (socket.close_code, socket.close_reason) == (4401, "sign in first")
        assert manager.count() == 0
        assert manager.stats().connections == 0
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert lines == ["refused a socket: sign in first (/ws)"]  # no query: it may hold a token


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("answer", "error"), [(42, WrongType), ("", InvalidArgument), ("x" * 257, InvalidArgument)]
)
async def test_a_bad_answer_is_the_hooks_bug(answer: object, error: type[Exception]) -> None:
    async with ConnectionManager(authenticate=Counting(answer), heartbeat=None) as manager:
        with pytest.raises(error):
            await manager.authenticate(Socket(b""))
        socket = Socket(b"")
        with pytest.raises(error):
            async with manager.session(socket):
                raise AssertionError("never entered")
        assert manager.count() == 0


@pytest.mark.anyio
async def test_a_hook_that_raises_registers_nothing_and_its_error_goes_on() -> None:
    def hook(handshake: Handshake) -> str:
        raise RuntimeError("the token service is down")

    async with ConnectionManager(authenticate=hook, heartbeat=None) as manager:
        socket = Socket(b"")
        with pytest.raises(RuntimeError, match="token service"):
            async with manager.session(socket):
                raise AssertionError("never entered")
        assert manager.count() == 0
        assert socket.close_code is None  # the application decides what its bug closes


@pytest.mark.anyio
async def test_without_a_hook_a_session_needs_its_identifier() -> None:
    async with ConnectionManager(heartbeat=None) as manager:
        with pytest.raises(WrongType, match="authenticate= hook"):
            await manager.authenticate(Socket(b""))
        with pytest.raises(WrongType, match="authenticate= hook"):
            async with manager.session(Socket(b"")):
                raise AssertionError("never entered")
        async with manager.session(Socket(b""), "bob") as session:  # as before
            assert session.identifier == "bob"


def test_the_hook_must_be_a_function() -> None:
    with pytest.raises(WrongType, match="authenticate must be a function"):
        ConnectionManager(authenticate="alice")  # type: ignore[arg-type]


class Peer(Socket):
    """A socket a session can read from until it vanishes (1006) or is closed."""

    def __init__(self, query: bytes) -> None:
        super().__init__(query)
        self._ended = anyio.Event()
        self._closed_with = TransportClosed(1006, "connection lost")

    def vanish(self) -> None:
        self._ended.set()

    async def receive(self) -> str:
        await self._ended.wait()
        raise self._closed_with

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self._ended.is_set():
            self._closed_with = TransportClosed(code, reason)
            self._ended.set()
        await super().close(code, reason)


@pytest.mark.anyio
@pytest.mark.parametrize("settings", [{"resume_window": 30.0}, {"retry_policy": RetryPolicy()}])
async def test_a_resume_token_is_bound_to_the_identity_the_hook_named(
    settings: dict[str, Any],
) -> None:
    def hook(handshake: Handshake) -> str | None:
        return {"a": "alice", "b": "bob"}.get(handshake.query.get("token", ""))

    async with ConnectionManager(authenticate=hook, heartbeat=None, **settings) as manager:
        first = Peer(b"token=a")
        async with manager.session(first) as session:
            token = session.resume_token
            assert token is not None
            first.vanish()
            assert [message async for message in session] == []
        held = session.connection
        assert held.state in HELD

        async with manager.session(Peer(b"token=b"), resume=token) as other:
            assert (other.identifier, other.resumed) == ("bob", False)
            assert other.connection is not held
            assert manager.identifiers() == {"alice", "bob"}
        assert held.state in HELD
        assert held.resume_token == token  # not spent: bob's attempt named nothing

        async with manager.session(Peer(b"token=a"), resume=token) as again:
            assert (again.identifier, again.resumed) == ("alice", True)
            assert again.connection is held


# -- the adapters' helpers ---------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("status", [200, 500, True, "401"])
async def test_the_adapters_helpers_refuse_with_a_4xx_status_only(status: Any) -> None:
    from wsfleet.adapters import asgi_auth, trio_websocket, websockets

    with pytest.raises(InvalidArgument, match="4xx"):
        websockets.authenticate(object(), status=status)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="4xx"):
        await trio_websocket.accept(object(), object(), status=status)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="4xx"):
        await asgi_auth.accept(object(), object(), status=status)  # type: ignore[arg-type]
