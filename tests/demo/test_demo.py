"""``wsfleet demo``: the pages, the chat and the dashboard's buttons, over real sockets.

Each async test starts the demo in-process on a free loopback port, on asyncio and on trio,
and talks to it as the browser pages do: HTTP GETs for the pages, websockets clients for
``/ws?id=<name>`` (the chat) and ``/admin`` (the dashboard). The browser itself is driven in
``test_browser.py``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import anyio
import pytest
from anyio.abc import SocketAttribute
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidStatus

from adapters.clients import client
from redis_server import running_redis
from support import ROOT, free_port
from wsfleet import ConnectionState, InvalidArgument
from wsfleet.cli import main
from wsfleet.demo import Demo, _board, open_demo
from wsfleet.demo._board import GROUPS_SHOWN, PUSH_INTERVAL
from wsfleet.demo._chat import MAX_GROUPS, WHO_SHOWN
from wsfleet.demo._controls import MAX_STALLED
from wsfleet.demo._origins import OriginCheck, normalize_origin
from wsfleet.demo._pages import ENDPOINTS

T = TypeVar("T")


# -- helpers ------------------------------------------------------------------------------------


async def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """One GET over a raw TCP connection: status, headers (lower-case names), body."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        data = b""
        with anyio.fail_after(5):
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in lines[1:])
            while len(body) < int(headers["content-length"]):
                body += await stream.receive()
    return int(lines[0].split()[1]), headers, body


async def handshake(port: int, path: str, headers: list[tuple[str, str]]) -> tuple[int, bytes]:
    """A WebSocket opening handshake over raw TCP, with exactly ``headers`` besides the
    upgrade's own (Host included, so that a test can send any): the status and the body."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        *(f"{name}: {value}" for name, value in headers),
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        with anyio.fail_after(5):
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            head, _, body = data.partition(b"\r\n\r\n")
            status = int(head.split()[1])
            if status != 101:
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                while len(body) < length:
                    body += await stream.receive()
    return status, body


async def receive(ws: Any) -> dict[str, Any]:
    """The next message; a room's line comes framed with its position, which the page keeps
    (``ws.positions``, per room) as the demo's page does."""
    with anyio.fail_after(5):
        message: dict[str, Any] = json.loads(await ws.recv())
    if isinstance(message.get("position"), str) and isinstance(message.get("data"), str):
        line: dict[str, Any] = json.loads(message["data"])
        if not hasattr(ws, "positions"):
            ws.positions = {}
        ws.positions[line["group"]] = message["position"]
        return line
    return message


async def ask(ws: Any, **request: Any) -> None:
    await ws.send(json.dumps(request))


class Admin:
    """A dashboard socket: keeps the latest snapshot's rows and every change it was told of."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.hello: dict[str, Any] | None = None
        self.snapshot: dict[str, Any] | None = None
        self.snapshots = 0
        self.events: list[dict[str, Any]] = []
        self.acks: list[dict[str, Any]] = []
        #: The largest message received, in bytes.
        self.largest = 0

    async def next(self) -> dict[str, Any]:
        with anyio.fail_after(5):
            raw = await self.ws.recv()
        self.largest = max(self.largest, len(raw.encode() if isinstance(raw, str) else raw))
        message: dict[str, Any] = json.loads(raw)
        if message["type"] == "hello":
            self.hello = message
            self.events.extend(message["feed"])
        elif message["type"] == "snapshot":
            self.snapshot = message
            self.snapshots += 1
            self.events.extend(message["events"])
        elif message["type"] == "ack":
            self.acks.append(message)
        return message

    async def until(self, check: Callable[[], T | None], timeout: float = 5.0) -> T:
        """Read messages until ``check()`` returns something true; return it."""
        with anyio.fail_after(timeout):
            while True:
                result = check()
                if result:
                    return result
                await self.next()

    def row(self, identifier: str, state: str | None = None) -> dict[str, Any] | None:
        """The identifier's row in the latest snapshot (in ``state``, if given)."""
        for row in (self.snapshot or {}).get("rows", []):
            if row["identifier"] == identifier and state in (None, row["state"]):
                return dict(row)
        return None

    def changes(self, identifier: str) -> list[tuple[str | None, str, str | None]]:
        return [
            (e["old"], e["new"], e["reason"]) for e in self.events if e["identifier"] == identifier
        ]

    async def press(self, **request: Any) -> dict[str, Any]:
        """Press a button; return the server's ack."""
        return await self.send(json.dumps(request))

    async def send(self, message: str | bytes) -> dict[str, Any]:
        """Send anything at all; return the server's ack."""
        seen = len(self.acks)
        await self.ws.send(message)
        return await self.until(lambda: self.acks[seen] if len(self.acks) > seen else None)


@asynccontextmanager
async def admin(demo: Demo) -> AsyncIterator[Admin]:
    async with client(f"{demo.ws_url}/admin") as ws:
        board = Admin(ws)
        await board.until(lambda: board.hello)
        yield board


@asynccontextmanager
async def chatter(demo: Demo, name: str, resume: str | None = None) -> AsyncIterator[Any]:
    """A chat page's socket, past its welcome (``ws.welcome``; what came before: ``ws.before``)."""
    query = f"id={quote(name)}" + (f"&resume={resume}" if resume else "")
    async with client(f"{demo.ws_url}/ws?{query}") as ws:
        ws.before = []
        while (message := await receive(ws))["op"] != "welcome":
            ws.before.append(message)
        ws.welcome = message
        yield ws


async def drain(ws: Any) -> None:
    """Read until the connection closes (``ConnectionClosed``)."""
    while True:
        await ws.recv()


async def join(ws: Any, group: str) -> None:
    await ask(ws, op="join", group=group)
    reply = await receive(ws)
    assert (reply["op"], reply["already"]) == ("joined", False)


pytestmark = pytest.mark.anyio


# -- the pages -----------------------------------------------------------------------------------


async def test_pages_are_served_on_the_websocket_port() -> None:
    async with open_demo("127.0.0.1", 0) as demo:
        status, headers, body = await http_get(demo.port, "/")
        assert status == 200
        assert headers["content-type"].startswith("text/html")
        assert b"wsfleet demo" in body
        assert b"/static/chat.js" in body
        assert "connect-src 'self'" in headers["content-security-policy"]

        status, headers, body = await http_get(demo.port, "/dashboard")
        assert status == 200
        assert headers["content-type"].startswith("text/html")
        assert b"<svg" in body  # the state diagram, inline: nothing fetched
        assert b"stateDiagram-v2" in body  # and its mermaid text, rendered from the table
        assert b"<?xml" not in body

        for path, kind in [
            ("/static/chat.js", "text/javascript"),
            ("/static/dashboard.js", "text/javascript"),
            ("/static/demo.css", "text/css"),
            ("/static/connection-states.svg", "image/svg+xml"),
        ]:
            status, headers, _ = await http_get(demo.port, path)
            assert (status, headers["content-type"].split(";")[0]) == (200, kind), path

        for path in ["/nope", "/static/nope.js", "/static/../_server.py", "/static/"]:
            status, _, _ = await http_get(demo.port, path)
            assert status == 404, path


async def test_pages_fetch_nothing_from_the_network() -> None:
    async with open_demo("127.0.0.1", 0) as demo:
        for path in ["/", "/dashboard", "/static/chat.js", "/static/dashboard.js"]:
            _, _, body = await http_get(demo.port, path)
            text = body.decode()
            for scheme in ("https://", "http://"):
                # The only absolute URLs are SVG/XML namespace names, which are not fetched.
                for line in text.splitlines():
                    if scheme in line:
                        assert "xmlns" in line or "DTD" in line, (path, line)


async def test_websocket_requests_are_checked_before_the_handshake() -> None:
    async with open_demo("127.0.0.1", 0) as demo:
        for query, status in [("/ws", 400), ("/ws?id=", 400), ("/ws?id=dashboard", 400)]:
            with pytest.raises(InvalidStatus) as caught:
                async with client(demo.ws_url + query):
                    pass
            assert caught.value.response.status_code == status, query
        with pytest.raises(InvalidStatus) as caught:
            async with client(demo.ws_url + "/elsewhere"):
                pass
        assert caught.value.response.status_code == 404


# -- the origin check ---------------------------------------------------------------------------

#: A request to each WebSocket endpoint that the demo would accept but for its origin.
ENDPOINT_REQUESTS = {"/ws": "/ws?id=mallory", "/admin": "/admin"}
EVIL = "https://evil.example"


def test_every_endpoint_has_a_request_in_the_origin_tests() -> None:
    assert set(ENDPOINT_REQUESTS) == set(ENDPOINTS)


async def test_pages_of_another_site_may_not_open_any_socket(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        open_demo("127.0.0.1", 0) as demo,
        admin(demo) as board,
        chatter(demo, "alice") as alice,
    ):
        await join(alice, "lobby")
        await board.until(lambda: board.row("alice", "CONNECTED"))
        port = demo.port
        here = f"127.0.0.1:{port}"
        refused = [
            (EVIL, here),
            ("null", here),  # a sandboxed frame, a file:// page
            (f"https://{here}", here),  # the right host, another scheme
            (f"http://127.0.0.1:{port + 1}", here),  # another port
            (f"http://localhost:{port}", here),  # an alias, but not what the page was served as
            (f"http://evil.example:{port}", f"evil.example:{port}"),  # DNS rebinding
        ]
        before = demo.manager.stats()
        for rounds in range(2):  # the second round is not logged again
            for path in ENDPOINT_REQUESTS.values():
                for origin, host in refused:
                    status, body = await handshake(port, path, [("Host", host), ("Origin", origin)])
                    assert status == 403, (path, origin, host)
                    assert b"not this demo" in body
                status, _ = await handshake(
                    port, path, [("Host", here), ("Origin", EVIL), ("Origin", f"http://{here}")]
                )
                assert status == 403, "two Origin headers"
            # What a browser page would do: its websockets client gets the same answer.
            for path in ENDPOINT_REQUESTS.values():
                with pytest.raises(InvalidStatus) as caught:
                    async with client(demo.ws_url + path, origin=EVIL):
                        pass
                assert caught.value.response.status_code == 403, path
            if rounds == 0:
                logged = [r for r in caplog.records if r.name == "wsfleet.demo"]
        assert demo.origins.refused == 2 * len(ENDPOINT_REQUESTS) * (len(refused) + 2)
        warnings = [r for r in caplog.records if r.name == "wsfleet.demo"]
        assert warnings == logged, "a refused origin is logged once"
        assert len(warnings) == len(refused) + 1  # each origin, and "(several)"
        assert all(r.levelno == logging.WARNING and "403" in r.getMessage() for r in warnings)
        assert any(EVIL in r.getMessage() for r in warnings)

        # Nothing changed: no connection, no state change, no drop; the fleet goes on.
        pushed = board.snapshots
        await board.until(lambda: board.snapshots >= pushed + 2)
        after = demo.manager.stats()
        assert demo.manager.identifiers() == {"alice", "dashboard"}
        assert (after.connections, after.drops, after.groups) == (
            before.connections,
            before.drops,
            before.groups,
        )
        assert board.changes("mallory") == []
        assert board.row("mallory") is None
        assert board.acks == []
        await ask(alice, op="say", group="lobby", text="still here")
        assert (await receive(alice))["text"] == "still here"
        assert board.row("alice", "CONNECTED") is not None


async def test_the_demos_own_pages_may_open_every_socket() -> None:
    async with open_demo("127.0.0.1", 0) as demo:
        port = demo.port
        own = f"http://127.0.0.1:{port}"
        # As the browser sends it: the Origin is the page's, the Host is where it connects.
        for name in ("127.0.0.1", "localhost", "[::1]"):
            here = f"{name}:{port}"
            for path in ENDPOINT_REQUESTS.values():
                status, _ = await handshake(
                    port, path, [("Host", here), ("Origin", f"http://{here}")]
                )
                assert status == 101, (path, here)
        # A program sends no Origin at all: let in (the check is against pages, not programs).
        for path in ENDPOINT_REQUESTS.values():
            status, _ = await handshake(port, path, [("Host", f"127.0.0.1:{port}")])
            assert status == 101, path
        async with client(f"{demo.ws_url}/ws?id=alice", origin=own) as ws:
            assert (await receive(ws))["op"] == "welcome"
        async with client(f"{demo.ws_url}/admin", origin=own) as ws:
            assert (await receive(ws))["type"] == "hello"
        assert demo.origins.refused == 0


async def test_allow_origin_widens_the_check() -> None:
    allowed = ["https://Chat.Example:443", "http://10.0.0.7:8080/"]
    async with open_demo("127.0.0.1", 0, allow_origins=allowed) as demo:
        assert demo.origins.allowed == {"https://chat.example", "http://10.0.0.7:8080"}
        here = f"127.0.0.1:{demo.port}"
        for path in ENDPOINT_REQUESTS.values():
            for origin, status in [
                ("https://chat.example", 101),
                ("http://10.0.0.7:8080", 101),
                (f"http://{here}", 101),  # the demo's own pages still may
                ("https://chat.example:8443", 403),
                ("http://chat.example", 403),
                (EVIL, 403),
            ]:
                got, _ = await handshake(demo.port, path, [("Host", here), ("Origin", origin)])
                assert got == status, (path, origin)
        async with client(f"{demo.ws_url}/admin", origin="https://chat.example") as ws:
            assert (await receive(ws))["type"] == "hello"


BAD_ORIGINS = [
    "chat.example",
    "https://chat.example/path",
    "https://chat.example?x=1",
    "https://user@chat.example",
    "https://chat.example:99999",
    "ftp://chat.example",
    "https://",
    "null",
    "*",
    "",
]


@pytest.mark.parametrize("bad", BAD_ORIGINS)
def test_an_origin_that_is_not_one_is_refused_clearly(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="an origin is http"):
        normalize_origin(bad)
    with pytest.raises(InvalidArgument):
        OriginCheck("127.0.0.1", ["https://fine.example", bad])


async def test_a_bad_allowed_origin_stops_the_demo_before_it_starts() -> None:
    entered = False
    with pytest.raises(InvalidArgument, match=r"'chat\.example'"):
        async with open_demo("127.0.0.1", 0, allow_origins=["chat.example"]):
            entered = True
    assert not entered


def test_demo_command_refuses_a_bad_allowed_origin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--port", "0", "--allow-origin", "https://chat.example/x"]) == 2
    assert "--allow-origin: an origin is http(s)://host[:port]" in capsys.readouterr().err


def test_own_origins_follow_the_address_the_demo_is_reached_on() -> None:
    wildcard = OriginCheck("0.0.0.0")
    assert wildcard.own_origins(("192.0.2.5", 8000)) == {"http://192.0.2.5:8000"}
    assert wildcard.own_origins(("::ffff:127.0.0.1", 80, 0, 0)) == {
        "http://127.0.0.1",
        "http://localhost",
        "http://[::1]",
    }
    named = OriginCheck("demo.example")
    assert named.own_origins(("192.0.2.5", 8000)) == {
        "http://demo.example:8000",
        "http://192.0.2.5:8000",
    }
    assert OriginCheck("::1").own_origins(("::1", 8000, 0, 0)) == {
        "http://127.0.0.1:8000",
        "http://localhost:8000",
        "http://[::1]:8000",
    }


# -- the chat ----------------------------------------------------------------------------------


async def test_chat_groups_people_and_everyone() -> None:
    async with (
        open_demo("127.0.0.1", 0) as demo,
        chatter(demo, "alice") as alice,
        chatter(demo, "bob") as bob,
    ):
        assert alice.welcome["resume"]  # the retry policy makes every session resumable
        assert alice.welcome["resumed"] is False
        await join(alice, "lobby")
        await join(bob, "lobby")

        await ask(alice, op="say", group="lobby", text="hi all")
        said = {"op": "said", "group": "lobby", "from": "alice", "text": "hi all"}
        assert await receive(alice) == said
        assert await receive(bob) == said

        await ask(bob, op="tell", to="alice", text="psst")
        told = {"op": "told", "from": "bob", "to": "alice", "text": "psst"}
        assert await receive(alice) == told
        assert await receive(bob) == told  # the sender's own tabs see it too

        await ask(alice, op="shout", text="hello world")
        shouted = {"op": "shouted", "from": "alice", "text": "hello world"}
        assert await receive(bob) == shouted
        assert await receive(alice) == shouted

        await ask(bob, op="who")
        assert await receive(bob) == {
            "op": "people",
            "people": ["alice", "bob"],
            "more_people": 0,
            "groups": ["lobby"],
            "more_groups": 0,
        }

        # Joining twice is harmless and says so (the page shows "already in lobby").
        await ask(bob, op="join", group="lobby")
        assert await receive(bob) == {
            "op": "joined",
            "group": "lobby",
            "groups": ["lobby"],
            "already": True,
        }
        await ask(bob, op="leave", group="lobby")
        assert await receive(bob) == {
            "op": "left",
            "group": "lobby",
            "groups": [],
            "already": False,
        }
        await ask(bob, op="leave", group="lobby")
        assert (await receive(bob))["already"] is True
        await ask(bob, op="say", group="lobby", text="ghost")
        assert (await receive(bob))["op"] == "error"
        for bad in [
            {"op": "dance"},
            {"op": "join", "group": "admins"},
            {"op": "tell", "to": "carol", "text": "?"},
        ]:
            await ask(bob, **bad)
            assert (await receive(bob))["op"] == "error", bad
        await bob.send("not json")
        assert (await receive(bob))["op"] == "error"


async def test_a_page_whose_session_is_gone_rejoins_and_misses_no_line() -> None:
    async with open_demo("127.0.0.1", 0) as demo, chatter(demo, "bob") as bob:
        await join(bob, "lobby")
        async with chatter(demo, "alice") as alice:
            await join(alice, "lobby")
            for n in range(3):
                await ask(bob, op="say", group="lobby", text=f"line {n}")
                assert (await receive(alice))["text"] == f"line {n}"
            since = alice.positions["lobby"]
        for n in range(3, 5):  # alice's page is gone (a clean close: no session is held)
            await ask(bob, op="say", group="lobby", text=f"line {n}")
        async with chatter(demo, "alice") as back:
            assert back.welcome["resumed"] is False
            await ask(back, op="join", group="lobby", since=since)
            replayed = [await receive(back) for _ in range(2)]
            assert [line["text"] for line in replayed] == ["line 3", "line 4"]
            reply = await receive(back)
            assert (reply["op"], reply["recovered"]) == ("joined", 2)
            await ask(back, op="join", group="lobby", since="gone:1")
            assert (await receive(back))["lost"].startswith("the group's history was lost")
            await ask(back, op="join", group="lobby", since=3)
            assert (await receive(back))["op"] == "error"


# -- the dashboard -------------------------------------------------------------------------------


async def test_dashboard_sees_every_connection_with_its_state_and_groups() -> None:
    async with open_demo("127.0.0.1", 0) as demo, admin(demo) as board:
        assert board.hello is not None
        assert set(board.hello["policies"]) == {"heartbeat", "retry", "overflow"}
        async with chatter(demo, "alice") as alice:
            await join(alice, "lobby")
            row = await board.until(lambda: board.row("alice", "CONNECTED"))
            assert row["groups"] == ["lobby"]
            assert row["kind"] == "browser"
            assert row["queued"] == 0
            assert row["trail"] == ["CONNECTED"]
            me = board.row("dashboard")
            assert me is not None
            assert me["groups"] == ["admins"]
            assert me["kind"] == "dashboard"
            assert board.snapshot is not None
            assert board.snapshot["rows"][-1] == me  # the fleet first, the dashboard last
            # The dashboard is not counted among the fleet it watches.
            assert board.snapshot["states"]["CONNECTED"] == 1
            assert board.snapshot["dashboards"] == 1
            counters = board.snapshot["stats"]
            assert (counters["connections"], counters["identifiers"], counters["groups"]) == (
                1,
                1,
                1,
            )
            assert demo.manager.stats().connections == 2  # the manager's own count is whole
            assert board.snapshot["backend"] in ("asyncio", "trio")
            assert (None, "CONNECTED", "registered") in board.changes("alice")

        # A page that goes away cleanly: DISCONNECTED, and still shown for a while.
        gone = await board.until(lambda: board.row("alice", "DISCONNECTED"))
        assert gone["trail"] == ["CONNECTED", "DISCONNECTED"]
        assert ("CONNECTED", "DISCONNECTED") in [c[:2] for c in board.changes("alice")]
        assert board.snapshot is not None
        assert board.snapshot["gone"] == 1
        # The fleet's rows, the gone ones included, come before the dashboard watching them.
        assert [row["identifier"] for row in board.snapshot["rows"]] == ["alice", "dashboard"]


async def test_dashboard_updates_are_batched() -> None:
    async with open_demo("127.0.0.1", 0) as demo, admin(demo) as board:
        await board.until(lambda: board.snapshot)
        first = board.snapshots
        started = anyio.current_time()
        names = [f"user{i}" for i in range(12)]
        for name in names:  # 24 state changes in quick succession
            async with chatter(demo, name):
                pass

        def all_gone() -> bool:
            return all(board.row(name, "DISCONNECTED") for name in names)

        await board.until(all_gone)
        elapsed = anyio.current_time() - started
        assert len([e for e in board.events if e["identifier"] in names]) == 24
        # At most one snapshot per PUSH_INTERVAL (plus the one that was under way).
        assert board.snapshots - first <= elapsed / PUSH_INTERVAL + 2


async def test_drop_goes_error_then_reconnecting_and_the_page_resumes() -> None:
    async with (
        open_demo("127.0.0.1", 0) as demo,
        admin(demo) as board,
        chatter(demo, "bob") as bob,
    ):
        await join(bob, "lobby")
        async with chatter(demo, "alice") as alice:
            token = alice.welcome["resume"]
            await join(alice, "lobby")
            row = await board.until(lambda: board.row("alice", "CONNECTED"))
            ack = await board.press(op="drop", key=row["key"])
            assert ack["ok"], ack
            with anyio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
                await alice.recv()
            assert closed.value.rcvd is None  # no close frame: an abnormal close
            await board.until(lambda: board.row("alice", "RECONNECTING"))
            changes = board.changes("alice")
            assert ("CONNECTED", "ERROR", "abnormal close (1006)") in changes
            assert ("ERROR", "RECONNECTING") in [c[:2] for c in changes]

            # Held: it keeps its groups and what is sent to it meanwhile.
            await ask(bob, op="say", group="lobby", text="while you were away")
            assert (await receive(bob))["text"] == "while you were away"

        async with chatter(demo, "alice", resume=token) as again:
            # The missed message comes first, then the welcome.
            said = {"op": "said", "group": "lobby", "from": "bob", "text": "while you were away"}
            assert again.before == [said]
            welcome = again.welcome
            assert welcome["resumed"] is True
            assert welcome["groups"] == ["lobby"]
            back = await board.until(lambda: board.row("alice", "CONNECTED"))
            assert back["key"] == row["key"]  # the same connection, taken over
            assert back["trail"][-4:] == ["CONNECTED", "ERROR", "RECONNECTING", "CONNECTED"]
            assert ("RECONNECTING", "CONNECTED", "resumed") in board.changes("alice")
            # A token is good once: the welcome hands over the next one, which resumes too.
            token, used = welcome["resume"], token
            assert token
            assert token != used
            assert (await board.press(op="drop", key=row["key"]))["ok"]
            with anyio.fail_after(5), pytest.raises(ConnectionClosed):
                await drain(again)
            await board.until(lambda: board.row("alice", "RECONNECTING"))
        async with chatter(demo, "alice", resume=token) as third:
            assert third.welcome["resumed"] is True
            assert third.welcome["resume"] not in (token, used)


async def test_force_idle_and_activity_brings_it_back() -> None:
    async with open_demo("127.0.0.1", 0) as demo, admin(demo) as board:
        async with chatter(demo, "alice") as alice:
            row = await board.until(lambda: board.row("alice", "CONNECTED"))
            assert (await board.press(op="idle", key=row["key"]))["ok"]
            await board.until(lambda: board.row("alice", "IDLE"))
            refused = await board.press(op="idle", key=row["key"])  # IDLE -> IDLE: no-op
            assert refused["ok"] or "IDLE" in refused["detail"]
            await ask(alice, op="who")
            await receive(alice)
            await board.until(lambda: board.row("alice", "CONNECTED"))
            assert ("IDLE", "CONNECTED", "activity") in board.changes("alice")
        for request in [{"op": "idle", "key": "c999"}, {"op": "drop", "key": None}, {"op": "x"}]:
            assert not (await board.press(**request))["ok"], request


async def test_stall_evicts_a_slow_consumer() -> None:
    async with open_demo("127.0.0.1", 0) as demo, admin(demo) as board:
        ack = await board.press(op="stall")
        assert ack["ok"]
        assert "slow-1" in ack["detail"]
        row = await board.until(lambda: board.row("slow-1", "CONNECTED"))
        assert row["kind"] == "simulated"
        assert row["groups"] == ["lobby"]

        gone = await board.until(lambda: board.row("slow-1", "DISCONNECTED"), timeout=10)
        assert ("CONNECTED", "ERROR", "slow consumer") in board.changes("slow-1")
        # Its row says both why it failed and why it was not retried.
        assert gone["reason"].startswith("slow consumer / ")
        assert board.snapshot is not None
        assert board.snapshot["drops"].get("slow consumer", 0) > 0
        assert "slow-1" not in demo.manager.identifiers()  # forgotten once DISCONNECTED


async def test_an_evicted_slow_consumer_was_not_retried_for_want_of_a_policy() -> None:
    async with open_demo("127.0.0.1", 0) as demo, admin(demo) as board:
        assert (await board.press(op="stall"))["ok"]
        gone = await board.until(lambda: board.row("slow-1", "DISCONNECTED"), timeout=10)
        assert ("ERROR", "DISCONNECTED", "no retry policy") in board.changes("slow-1")
        assert gone["reason"] == "slow consumer / no retry policy"


async def test_kill_closes_every_chat_connection_with_1001() -> None:
    async with (
        open_demo("127.0.0.1", 0) as demo,
        admin(demo) as board,
        chatter(demo, "alice") as alice,
        chatter(demo, "bob") as bob,
    ):
        await board.until(lambda: board.row("alice") and board.row("bob"))
        ack = await board.press(op="kill")
        assert ack == {
            "type": "ack",
            "op": "kill",
            "ok": True,
            "detail": "closed 2 connection(s) with 1001",
        }
        for ws in (alice, bob):
            with anyio.fail_after(5), pytest.raises(ConnectionClosedOK) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1001
        await board.until(
            lambda: board.row("alice", "DISCONNECTED") and board.row("bob", "DISCONNECTED")
        )
        assert demo.manager.identifiers() == {"dashboard"}  # the dashboard stays to watch
        socket = demo.manager.sockets_of("dashboard")[0]
        assert demo.manager.get_connection_state(socket) is ConnectionState.CONNECTED


async def test_a_dashboard_that_drops_itself_resumes_its_membership() -> None:
    async with open_demo("127.0.0.1", 0) as demo:
        async with admin(demo) as board:
            assert board.hello is not None
            token = board.hello["resume"]
            me = await board.until(lambda: board.row("dashboard", "CONNECTED"))
            # Its ack is lost with the socket: a write that fails is dropped and counted.
            await ask(board.ws, op="drop", key=me["key"])
            with anyio.fail_after(5), pytest.raises(ConnectionClosed):
                await drain(board.ws)
        async with client(f"{demo.ws_url}/admin?resume={token}") as ws:
            again = Admin(ws)
            back = await again.until(lambda: again.row("dashboard", "CONNECTED"))
            assert back["key"] == me["key"]
            assert back["groups"] == ["admins"]
            assert ("RECONNECTING", "CONNECTED", "resumed") in again.changes("dashboard")


# coredis deprecates the ZRANGEBYSCORE call wsfleet.adapters.redis makes; with warnings as
# errors the backplane's link would fail on it.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_two_demos_share_a_fleet_through_redis() -> None:
    with running_redis() as redis:
        async with (
            open_demo("127.0.0.1", 0, redis=redis.url) as one,
            open_demo("127.0.0.1", 0, redis=redis.url) as two,
            admin(one) as board,
            chatter(one, "alice") as alice,
            chatter(two, "bob") as bob,
        ):
            with anyio.fail_after(5):
                while {
                    one.manager.stats().backplane_state,
                    two.manager.stats().backplane_state,
                } != {"CONNECTED"}:
                    await anyio.sleep(0.05)
            await join(alice, "lobby")
            await join(bob, "lobby")
            await ask(bob, op="say", group="lobby", text="across nodes")
            with anyio.fail_after(5):
                while (message := await receive(alice))["op"] != "said":
                    pass
            assert message["text"] == "across nodes"

            def linked() -> dict[str, Any] | None:
                latest = board.snapshot
                return latest if latest and latest["backplane"] == "CONNECTED" else None

            snapshot = await board.until(linked)
            assert snapshot["node"] == one.manager.node_id
            assert board.row("bob") is None  # a dashboard shows its own node's sockets


# -- whatever one user sends --------------------------------------------------------------------


def emoji(first: int, n: int = 32) -> str:
    """A name of ``n`` printable characters that JSON escapes to 12 bytes each."""
    return "".join(chr(first + i) for i in range(n))


def limit(demo: Demo) -> int:
    return demo.manager.overflow.max_message_size


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Records at WARNING and above, and any with a traceback: bad input must cause none."""
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.WARNING or r.exc_info
    ]


@pytest.mark.slow
async def test_one_user_cannot_end_the_demo_by_joining_groups() -> None:
    # One identity, five tabs, a thousand groups of 32 characters asked for, a dashboard
    # watching: every row listing every group, the snapshot would pass the manager's limit.
    async with open_demo("127.0.0.1", 0) as demo, admin(demo) as board, AsyncExitStack() as tabs:
        mallory = [await tabs.enter_async_context(chatter(demo, "mallory")) for _ in range(5)]
        refused = 0
        for i in range(1000):
            await ask(mallory[0], op="join", group=f"{i:04d}" + "g" * 28)
            reply = await receive(mallory[0])
            if reply["op"] == "error":
                assert "the most allowed" in reply["reason"], reply
                refused += 1
            else:
                assert reply["op"] == "joined", reply
        assert refused == 1000 - MAX_GROUPS
        assert len(demo.manager.groups_of("mallory")) == MAX_GROUPS

        def listed() -> list[dict[str, Any]]:
            rows = (board.snapshot or {}).get("rows", [])
            return [r for r in rows if r["identifier"] == "mallory" and r["more_groups"]]

        rows = await board.until(lambda: len(listed()) == 5 and listed())
        for row in rows:
            assert row["groups"] == [f"{i:04d}" + "g" * 28 for i in range(GROUPS_SHOWN)]
            assert row["more_groups"] == MAX_GROUPS - GROUPS_SHOWN
        pushed = board.snapshots
        await board.until(lambda: board.snapshots >= pushed + 2)  # still pushing
        assert board.largest <= limit(demo)
        async with chatter(demo, "alice") as alice:
            await join(alice, "lobby")
            assert (await board.press(op="stall"))["ok"]


async def test_a_snapshot_fits_one_message_whatever_the_fleet_holds() -> None:
    # Within the chat's own rules: the longest name, the most groups of the longest names,
    # in characters JSON escapes to 12 bytes each, in sixty tabs.
    name = emoji(0x1F600)
    groups = [emoji(0x1F300 + i, 31) + "g" for i in range(MAX_GROUPS)]
    async with open_demo("127.0.0.1", 0) as demo, admin(demo) as board, AsyncExitStack() as tabs:
        first = await tabs.enter_async_context(chatter(demo, name))
        for group in groups:
            await join(first, group)
        for _ in range(59):
            await tabs.enter_async_context(chatter(demo, name))

        def hiding() -> dict[str, Any] | None:
            latest = board.snapshot
            return (
                latest
                if latest and latest["hidden"] and latest["states"]["CONNECTED"] == 60
                else None
            )

        snapshot = await board.until(hiding)
        rows = [row for row in snapshot["rows"] if row["identifier"] == name]
        assert 0 < len(rows) < 60
        assert len(rows) + snapshot["hidden"] >= 60  # the dashboard's own row may be hidden too
        assert all(row["groups"] == sorted(groups)[:GROUPS_SHOWN] for row in rows)
        assert board.largest <= limit(demo)

        # A second dashboard's first message (the feed so far) fits as well.
        async with admin(demo) as second:
            await second.until(lambda: second.snapshot)
            assert second.largest <= limit(demo)
        pushed = board.snapshots
        await board.until(lambda: board.snapshots >= pushed + 2)
        assert board.largest <= limit(demo)
        assert demo.board.push_failures == 0


async def test_who_lists_the_first_people_and_groups_and_counts_the_rest() -> None:
    # 56 people, 400 groups of 12-byte characters: listed whole, the reply would pass the
    # manager's limit, and the one who asked would lose its connection.
    async with open_demo("127.0.0.1", 0) as demo, AsyncExitStack() as tabs:
        for i in range(55):
            ws = await tabs.enter_async_context(chatter(demo, emoji(0x1F600 + i)))
            if i < 20:
                for j in range(MAX_GROUPS):
                    await join(ws, emoji(0x1F300 + j, 31) + chr(0x1F600 + i))
        async with chatter(demo, "innocent") as innocent:
            await ask(innocent, op="who")
            reply = await receive(innocent)
            assert reply["op"] == "people"
            assert len(reply["people"]) == WHO_SHOWN
            assert reply["more_people"] == 56 - WHO_SHOWN
            assert len(reply["groups"]) == WHO_SHOWN
            assert reply["more_groups"] == 20 * MAX_GROUPS - WHO_SHOWN
            assert reply["groups"] == sorted(demo.manager.groups())[:WHO_SHOWN]
            await join(innocent, "lobby")  # still connected


#: What a client may send that is no request, and how the answer must begin.
UNREADABLE: list[tuple[str | bytes, str]] = [
    ("not json", "not JSON: send a JSON object such as {"),
    ("[" * 60_000, "nested too deeply: send a JSON object such as {"),
    ('{"op": ' * 9_000, "nested too deeply: send a JSON object such as {"),
    (b'{"op": "\xff"}', "not UTF-8 text: send a JSON object such as {"),
    ("1" * 5_000, "JSON this server cannot read: send a JSON object such as {"),
]


UNREADABLE_IDS = ["text", "nested", "nested-op", "bytes", "digits"]


@pytest.mark.parametrize(("message", "answer"), UNREADABLE, ids=UNREADABLE_IDS)
async def test_chat_answers_what_is_no_request_in_words(
    message: str | bytes, answer: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_demo("127.0.0.1", 0) as demo, chatter(demo, "alice") as alice:
        await alice.send(message)
        reply = await receive(alice)
        assert reply["op"] == "error"
        assert reply["reason"].startswith(answer), reply
        await join(alice, "lobby")  # still open
    assert errors_logged(caplog) == []


@pytest.mark.parametrize(("message", "answer"), UNREADABLE, ids=UNREADABLE_IDS)
async def test_dashboard_answers_what_is_no_request_in_words(
    message: str | bytes, answer: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_demo("127.0.0.1", 0) as demo, admin(demo) as board:
        ack = await board.send(message)
        assert (ack["ok"], ack["op"]) == (False, None)
        assert ack["detail"].startswith(answer), ack
        assert (await board.press(op="kill"))["ok"]  # still open
    assert errors_logged(caplog) == []


async def test_what_a_client_sent_is_repeated_only_in_part(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 64 KB in as UTF-8 (under the frame limit), 192 KB if repeated whole in escaped JSON.
    huge = "\U0001f600" * 16_000
    async with (
        open_demo("127.0.0.1", 0) as demo,
        admin(demo) as board,
        chatter(demo, "alice") as alice,
    ):
        await alice.send(json.dumps({"op": huge}, ensure_ascii=False))
        reply = await receive(alice)
        assert reply["reason"].startswith("unknown op '\U0001f600")
        assert len(reply["reason"]) < 100
        for request in [{"op": huge}, {"op": "drop", "key": huge}, {"op": [[[[[huge]]]]]}]:
            ack = await board.send(json.dumps(request, ensure_ascii=False))
            assert not ack["ok"]
            assert ack["op"] in (None, "drop")
            assert len(ack["detail"]) < 100, ack
        await join(alice, "lobby")
        assert errors_logged(caplog) == []


def socket_fds() -> int:
    """How many sockets this process has open (the demo runs in it)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with suppress(OSError):  # closed meanwhile
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts sockets in /proc")
async def test_connections_reset_before_the_answer_are_dropped_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with open_demo("127.0.0.1", 0) as demo:
        before = socket_fds()
        key = base64.b64encode(os.urandom(16)).decode()
        for i in range(200):
            path = ["/ws?id=mallory", "/admin", "/dashboard"][i % 3]
            async with await anyio.connect_tcp("127.0.0.1", demo.port) as stream:
                raw = stream.extra(SocketAttribute.raw_socket)
                # Closing with a zero linger time sends a reset, not a FIN.
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                await stream.send(
                    f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{demo.port}\r\n"
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
                )
        with anyio.fail_after(10):
            while socket_fds() > before:  # every reset connection closed by the server
                await anyio.sleep(0.01)
        status, _, _ = await http_get(demo.port, "/")
        assert status == 200
        async with chatter(demo, "alice") as alice:
            await join(alice, "lobby")
        assert errors_logged(caplog) == []


async def test_a_dashboard_push_that_fails_is_counted_and_the_next_one_goes(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing a client sends makes a push fail any more (the tests above): this failure is
    # made up, to show what the pusher does with whatever failure is left.
    snapshot = _board.Board.snapshot
    failures = iter(range(3))

    def failing(self: _board.Board) -> dict[str, Any]:
        if next(failures, None) is not None:
            raise RuntimeError("made to fail")
        return snapshot(self)

    monkeypatch.setattr(_board.Board, "snapshot", failing)
    async with open_demo("127.0.0.1", 0) as demo, admin(demo) as board:
        latest = await board.until(lambda: board.snapshot, timeout=15)
        assert latest["stats"]["dashboard_push_failures"] == 3
        assert demo.board.push_failures == 3
        async with chatter(demo, "alice"):
            await board.until(lambda: board.row("alice", "CONNECTED"))
    logged = [r for r in caplog.records if r.name == "wsfleet.demo" and r.levelno >= logging.ERROR]
    assert len(logged) == 1, "the first failure of a kind is logged, not every one"
    assert logged[0].exc_info is not None


@pytest.mark.slow
async def test_stalled_clients_are_bounded() -> None:
    async with open_demo("127.0.0.1", 0) as demo, admin(demo) as board:
        for _ in range(MAX_STALLED):
            assert (await board.press(op="stall"))["ok"]
        refused = await board.press(op="stall")
        assert not refused["ok"]
        assert "wait for one to go" in refused["detail"]
        with anyio.fail_after(15):
            while demo.controls.stalled:  # each is evicted within about two seconds
                await anyio.sleep(0.05)
        assert (await board.press(op="stall"))["ok"]


# -- the files and the command -------------------------------------------------------------------


def test_packaged_diagram_is_the_committed_one() -> None:
    packaged = ROOT / "src" / "wsfleet" / "demo" / "static" / "connection-states.svg"
    committed = ROOT / "diagrams" / "connection-states.svg"
    assert packaged.read_bytes() == committed.read_bytes(), (
        "the demo's diagram is stale; run: "
        "cp diagrams/connection-states.svg src/wsfleet/demo/static/connection-states.svg"
    )


def test_demo_command_line_options() -> None:
    with pytest.raises(SystemExit) as usage:
        main(["demo", "--backend", "curio"])
    assert usage.value.code == 2


@pytest.fixture(params=["asyncio", "trio"])
def demo_process(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, Any]]:
    """``python -m wsfleet demo --backend <loop>`` on a free port: (port, process)."""
    port = free_port()
    command = [sys.executable, "-m", "wsfleet", "demo", "--port", str(port)]
    with (
        (tmp_path / "stderr.txt").open("w") as errors,
        subprocess.Popen(
            [*command, "--backend", request.param],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        ) as process,
    ):
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert f"chat at http://127.0.0.1:{port}/ " in line, line
            assert f"({request.param})" in line
            yield port, process
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


def test_demo_command_serves_and_stops_on_sigterm(demo_process: tuple[int, Any]) -> None:
    port, process = demo_process

    async def fetch() -> int:
        status, _, _ = await http_get(port, "/dashboard")
        return status

    assert anyio.run(fetch) == 200
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0


def test_demo_command_reports_a_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["demo", "--port", str(port)]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
