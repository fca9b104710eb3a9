"""Authentication on real sockets, on every adapter and every loop it runs on.

One hook, ``ConnectionManager(authenticate=hook)``, reads the same ``Handshake`` whatever
served the socket. At the handshake (websockets' ``process_request``, trio-websocket's
``accept``, ASGI's ``asgi_auth.accept``) a refusal is an HTTP 401 (403 behind hypercorn)
and no WebSocket; after it (``manager.session(ws)`` without an identifier), a close with
4401. Either way nothing is registered. A resume token is bound to the identity that
authenticated its socket: another identity presenting it starts afresh.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import jwt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from support import ROOT, wait_for
from wsfleet import ConnectionManager, ConnectionState, Unauthenticated
from wsfleet.handshake import Handshake

from .auth_servers import COMBOS, App, Combo, serve
from .clients import client, raw_upgrade

pytestmark = pytest.mark.anyio

TOKENS = {"alice-token": "alice", "bob-token": "bob"}
SECRET = "a secret the tests share with their tokens, long enough for HS256"


@pytest.fixture(params=COMBOS, ids=lambda combo: combo.id)
def combo(request: pytest.FixtureRequest) -> Combo:
    found: Combo = request.param
    return found


@pytest.fixture
def anyio_backend(combo: Combo) -> str:
    return combo.backend


class Hook:
    """A token from the query or a bearer header names the identity; records what it saw."""

    def __init__(self) -> None:
        self.seen: list[Handshake] = []

    def __call__(self, handshake: Handshake) -> str | None:
        self.seen.append(handshake)
        token = handshake.query.get("token")
        bearer = handshake.headers.get("authorization", "")
        if token is None and bearer.startswith("Bearer "):
            token = bearer.removeprefix("Bearer ")
        return TOKENS.get(token or "")


@asynccontextmanager
async def running(
    combo: Combo, mode: str, hook: Callable[[Handshake], Any], **settings: Any
) -> AsyncIterator[tuple[App, str]]:
    settings.setdefault("heartbeat", None)
    async with ConnectionManager(authenticate=hook, close_timeout=1.0, **settings) as manager:
        app = App(manager)
        async with serve(combo, app, mode) as url:
            yield app, url


async def greeting(ws: Any) -> dict[str, str]:
    """The server's first message, ``hello <who> resumed=<bool> token=<token>``, parsed."""
    with anyio.fail_after(5):
        text = await ws.recv()
    word, who, *fields = text.split()
    assert word == "hello", text
    return {"identifier": who, **dict(field.split("=", 1) for field in fields)}


async def handshake(url: str, **options: Any) -> None:
    """Open a WebSocket and close it at once: what the handshake answers, raised."""
    with anyio.fail_after(10):
        async with client(url, **options):
            pass


async def refused_with(url: str, **options: Any) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as caught:
        await handshake(url, **options)
    return caught.value


# -- at the handshake ---------------------------------------------------------------------------


async def test_a_valid_token_registers_the_identifier_the_hook_named(combo: Combo) -> None:
    hook = Hook()
    async with running(combo, "handshake", hook) as (app, url):
        async with client(f"{url}/ws?token=alice-token") as ws:
            assert (await greeting(ws))["identifier"] == "alice"
            assert app.manager.identifiers() == {"alice"}
            await ws.send("hi")
            with anyio.fail_after(5):
                assert await ws.recv() == "echo hi"
        assert len(hook.seen) == 1  # asked at the handshake only: the session remembered it
        assert app.sessions[0].identifier == "alice"


async def test_a_refusal_at_the_handshake_is_an_http_error_and_registers_nothing(
    combo: Combo, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wsfleet")
    hook = Hook()
    async with running(combo, "handshake", hook) as (app, url):
        refusal = await refused_with(f"{url}/ws?token=forged")
        assert refusal.response.status_code == 401
        assert refusal.response.body.strip() == b"unauthenticated"
        assert app.handled == 0  # no WebSocket: the application never saw one
        assert app.manager.count() == 0
        assert app.manager.stats().states["CONNECTED"] == 0
        assert len(hook.seen) == 1
        refusals = [r.getMessage() for r in caplog.records if r.name == "wsfleet"]
        assert refusals == ["refused a socket: unauthenticated (/ws from 127.0.0.1)"]


@pytest.mark.parametrize(
    "combo", [c for c in COMBOS if c.server == "websockets"], ids=lambda c: c.id
)
async def test_a_plain_http_request_is_left_to_websockets_without_asking_the_hook(
    combo: Combo,
) -> None:
    """A health check or a crawler (no ``Upgrade: websocket``): websockets answers it 426
    as it always does; the hook (a database lookup, perhaps) is not asked, nothing logged."""
    hook = Hook()
    async with running(combo, "handshake", hook) as (app, url):
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with anyio.fail_after(10):
            stream = await anyio.connect_tcp("127.0.0.1", port)
            async with stream:
                await stream.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answer = await stream.receive()
        assert answer.startswith(b"HTTP/1.1 426"), answer[:40]
        assert hook.seen == []
        assert app.handled == 0


@pytest.mark.parametrize("combo", [c for c in COMBOS if c.adapter == "asgi"], ids=lambda c: c.id)
async def test_an_asgi_server_without_http_answers_closes_before_accepting(combo: Combo) -> None:
    """Without ``websocket.http.response`` the app closes the socket it never accepted,
    which ASGI servers answer with HTTP 403."""
    async with running(combo, "handshake-no-denial", Hook()) as (app, url):
        refusal = await refused_with(f"{url}/ws?token=forged")
        assert refusal.response.status_code == 403
        assert app.handled == 0
        assert app.manager.count() == 0
        async with client(f"{url}/ws?token=alice-token") as ws:
            assert (await greeting(ws))["identifier"] == "alice"


@pytest.mark.parametrize("mode", ["handshake", "session"])
async def test_the_hook_sees_the_same_handshake_on_every_adapter(combo: Combo, mode: str) -> None:
    """At the handshake every adapter shows all of it; after it too, except trio-websocket,
    whose accepted connection keeps its path and peer only (the how-to says so)."""
    hook = Hook()
    headers = [
        ("Authorization", "Bearer not-a-token"),
        ("X-Tenant", "one"),
        ("X-Tenant", "two"),
        ("Cookie", 'session=s1; junk; theme="dark"; session=s2'),
    ]
    async with running(combo, mode, hook) as (_, url):
        target = f"{url}/ws/room%201?room=lobby&x=1&x=2&name=J%C3%BCrgen"
        with suppress(InvalidStatus, ConnectionClosed):  # refused before or after the upgrade
            await handshake(
                target, additional_headers=headers, subprotocols=["wsfleet.v1", "token.abc"]
            )
        await wait_for(lambda: len(hook.seen) == 1)
    (seen,) = hook.seen
    port = int(url.rsplit(":", 1)[1])
    assert seen.path == "/ws/room 1"
    assert seen.query_string == "room=lobby&x=1&x=2&name=J%C3%BCrgen"
    assert dict(seen.query) == {"room": "lobby", "x": "1", "name": "Jürgen"}
    assert seen.client is not None
    assert seen.client[0] == "127.0.0.1"
    assert seen.client[1] not in (0, port)
    if mode == "session" and combo.adapter == "trio_websocket":
        assert (len(seen.headers), len(seen.cookies), seen.subprotocols) == (0, 0, ())
        return
    assert seen.headers["authorization"] == "Bearer not-a-token"
    assert seen.headers["X-TENANT"] == "one, two"
    assert seen.headers["host"] == f"127.0.0.1:{port}"
    assert dict(seen.cookies) == {"session": "s1", "theme": "dark"}
    assert seen.subprotocols == ("wsfleet.v1", "token.abc")
    assert seen.headers["sec-websocket-protocol"] == "wsfleet.v1, token.abc"


async def test_an_async_hook_is_awaited(combo: Combo) -> None:
    async def hook(handshake: Handshake) -> str | None:
        await anyio.sleep(0.01)  # a database or a token service
        return TOKENS.get(handshake.query.get("token", ""))

    async with running(combo, "handshake", hook) as (app, url):
        async with client(f"{url}/ws?token=bob-token") as ws:
            assert (await greeting(ws))["identifier"] == "bob"
            assert app.manager.identifiers() == {"bob"}
        refusal = await refused_with(f"{url}/ws?token=nope")
        assert refusal.response.status_code == 401


async def test_a_hook_that_raises_is_the_applications_bug_and_registers_nothing(
    combo: Combo, caplog: pytest.LogCaptureFixture
) -> None:
    def hook(handshake: Handshake) -> str | None:
        raise RuntimeError("the token service is down")

    async with running(combo, "handshake", hook) as (app, url):
        with pytest.raises(InvalidHandshake) as caught:
            await handshake(f"{url}/ws?token=alice-token")
        assert app.manager.count() == 0
        assert app.handled == 0
        assert isinstance(caught.value, InvalidStatus)
        assert caught.value.response.status_code == 500
        if combo.adapter == "websockets":  # websockets logs it and answers 500
            assert "process_request failed" in caplog.text
        else:  # it reached the application's handler, as a bug should
            await wait_for(lambda: len(app.errors) == 1)
            assert isinstance(app.errors[0], RuntimeError)


async def test_a_jwt_names_the_identity_and_an_expired_one_is_refused(combo: Combo) -> None:
    def hook(handshake: Handshake) -> str:
        token = handshake.headers.get("authorization", "").removeprefix("Bearer ")
        try:
            claims = jwt.decode(token, SECRET, algorithms=["HS256"])
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired") from None
        except jwt.InvalidTokenError:
            raise Unauthenticated("invalid token") from None
        subject: str = claims["sub"]
        return subject

    now = int(time.time())
    valid = jwt.encode({"sub": "carol", "exp": now + 60}, SECRET, algorithm="HS256")
    expired = jwt.encode({"sub": "carol", "exp": now - 60}, SECRET, algorithm="HS256")
    forged = jwt.encode({"sub": "mallory", "exp": now + 60}, "another key" * 4, algorithm="HS256")
    async with running(combo, "handshake", hook) as (app, url):
        async with client(
            f"{url}/ws", additional_headers=[("Authorization", f"Bearer {valid}")]
        ) as ws:
            assert (await greeting(ws))["identifier"] == "carol"
            assert app.manager.identifiers() == {"carol"}
        for token, reason in ((expired, b"token expired"), (forged, b"invalid token")):
            refusal = await refused_with(
                f"{url}/ws", additional_headers=[("Authorization", f"Bearer {token}")]
            )
            assert refusal.response.status_code == 401
            assert refusal.response.body.strip() == reason
        await wait_for(lambda: app.manager.count() == 0)
        assert app.handled == 1


# -- after the handshake: manager.session(ws) ------------------------------------------------


async def test_a_session_without_an_identifier_asks_the_hook(combo: Combo) -> None:
    hook = Hook()
    async with running(combo, "session", hook) as (app, url):
        async with client(f"{url}/ws?token=bob-token") as ws:
            assert (await greeting(ws))["identifier"] == "bob"
            assert app.manager.identifiers() == {"bob"}
        assert len(hook.seen) == 1


async def test_a_refused_session_closes_with_4401_and_registers_nothing(
    combo: Combo, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wsfleet")

    def hook(handshake: Handshake) -> str:
        raise Unauthenticated("sign in first")

    async with running(combo, "session", hook) as (app, url):
        async with client(f"{url}/ws?token=alice-token") as ws:
            with pytest.raises(ConnectionClosed) as closed, anyio.fail_after(10):
                await ws.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4401, "sign in first")
        await wait_for(lambda: len(app.sessions) == 1)
        (session,) = app.sessions
        assert session.refused == "sign in first"
        assert session.close_code == 4401
        assert app.manager.count() == 0
        refusals = [r.getMessage() for r in caplog.records if r.name == "wsfleet"]
        assert refusals == ["refused a socket: sign in first (/ws from 127.0.0.1)"]


@pytest.mark.parametrize("mode", ["session", "handshake"])
async def test_an_identifier_from_the_url_never_overrides_the_hook(combo: Combo, mode: str) -> None:
    """``manager.session(ws, who)`` with ``who`` from the URL, under a hook: the socket of
    alice's token claiming to be bob is refused (4401), as is one with no token at all in
    session mode; claiming the hook's own answer works."""
    async with running(combo, mode, Hook()) as (app, url):
        async with client(f"{url}/ws?token=alice-token&as=alice") as ws:
            assert (await greeting(ws))["identifier"] == "alice"
        claims = ["?token=alice-token&as=bob"] + (["?as=bob"] if mode == "session" else [])
        for claim in claims:
            async with client(f"{url}/ws{claim}") as ws:
                with pytest.raises(ConnectionClosed) as closed, anyio.fail_after(10):
                    await ws.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4401
        await wait_for(lambda: len(app.sessions) == 1 + len(claims))
        assert [s.identifier for s in app.sessions if s.refused is None] == ["alice"]
        assert "bob" not in app.manager.identifiers()


# -- resume tokens are bound to the identity --------------------------------------------------


async def vanishing(url: str) -> dict[str, str]:
    """A client that gets its greeting, then loses its TCP connection (no close frame)."""
    stream = await raw_upgrade(url)
    with anyio.fail_after(5):
        header = b""
        while len(header) < 2:
            header += await stream.receive(2 - len(header))
        assert header[0] == 0x81, header  # a text frame
        assert header[1] < 126, header  # a short one
        payload = b""
        while len(payload) < header[1]:
            payload += await stream.receive(header[1] - len(payload))
    await stream.aclose()
    _, who, *fields = payload.decode().split()
    return {"identifier": who, **dict(field.split("=", 1) for field in fields)}


async def test_another_identity_cannot_resume_a_held_session(combo: Combo) -> None:
    hook = Hook()
    async with running(combo, "session", hook, resume_window=30.0) as (app, url):
        manager = app.manager
        alice = await vanishing(f"{url}/ws?token=alice-token")
        assert alice["identifier"] == "alice"
        held = app.sessions[0].connection
        await wait_for(lambda: held.state is ConnectionState.RECONNECTING)

        # bob presents alice's token: he gets a session of his own, hers stays held
        async with client(f"{url}/ws?token=bob-token&resume={alice['token']}") as bob:
            answer = await greeting(bob)
            assert (answer["identifier"], answer["resumed"]) == ("bob", "False")
            assert manager.identifiers() == {"alice", "bob"}
            assert held.state is ConnectionState.RECONNECTING
            assert held.identifier == "alice"
            assert not app.sessions[1].resumed

        # alice herself, with her token, takes it over
        async with client(f"{url}/ws?token=alice-token&resume={alice['token']}") as ws:
            answer = await greeting(ws)
            assert (answer["identifier"], answer["resumed"]) == ("alice", "True")
            assert held.state is ConnectionState.CONNECTED


# -- the how-to's FastAPI app does what the page says ------------------------------------------


# starlette.testclient, on import, asks for httpx2 (the project's dev extra has httpx)
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")
def test_the_how_to_fastapi_app_authenticates_with_a_jwt() -> None:
    """``docs/howto/authentication.md``'s ``auth_app.py``, run with FastAPI's TestClient."""
    from fastapi.testclient import TestClient
    from starlette.testclient import WebSocketDenialResponse

    page = ROOT / "docs" / "howto" / "authentication.md"
    (source,) = re.findall(
        r'```python title="auth_app.py"\n(.*?)^```', page.read_text(), re.M | re.S
    )
    namespace: dict[str, Any] = {"__name__": "auth_app"}
    exec(compile(source, "auth_app.py", "exec"), namespace)
    secret = namespace["SECRET"]
    now = int(time.time())
    good = jwt.encode({"sub": "dana", "exp": now + 60}, secret, algorithm="HS256")
    expired = jwt.encode({"sub": "dana", "exp": now - 60}, secret, algorithm="HS256")
    with TestClient(namespace["app"]) as http:
        headers = {"Authorization": f"Bearer {good}"}
        with http.websocket_connect("/ws", headers=headers) as ws:
            ws.send_text("hi")
            assert ws.receive_text() == "dana: hi"
        with http.websocket_connect(f"/ws?token={good}") as ws:
            ws.send_text("again")
            assert ws.receive_text() == "dana: again"
        for token, reason in ((expired, "token expired"), ("junk", "invalid token")):
            with (
                pytest.raises(WebSocketDenialResponse) as denied,
                http.websocket_connect(f"/ws?token={token}"),
            ):
                pass
            assert (denied.value.status_code, denied.value.text) == (401, reason)
        assert http.app.state.manager.count() == 0  # type: ignore[attr-defined]
