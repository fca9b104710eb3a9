"""The chat example of every adapter, started as a program and used by real clients."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from adapters.clients import client
from support import ROOT, stop

pytestmark = pytest.mark.anyio

EXAMPLES = ROOT / "examples"


class Chat(str):
    """The URL of a running chat example; ``log()`` is what it logged so far."""

    log_file: Path
    kind: str

    def log(self) -> str:
        return self.log_file.read_text(encoding="utf-8")


@pytest.fixture(params=["asyncio", "trio", "asgi"])
def chat_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Chat]:
    """Start ``examples/<kind>/chat.py`` on a free port; yield its URL."""
    script = EXAMPLES / request.param / "chat.py"
    errors = tmp_path / "stderr.txt"
    with (
        errors.open("w") as stderr,
        subprocess.Popen(
            [sys.executable, str(script), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        ) as process,
    ):
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith("listening on ws://127.0.0.1:"), line + errors.read_text()
            chat = Chat(line.split("listening on ", 1)[1].strip())
            chat.log_file = errors
            chat.kind = request.param
            yield chat
            assert process.poll() is None, "the server died: " + errors.read_text()
        finally:
            stop(process)


async def ask(ws: Any, request: dict[str, Any]) -> None:
    await ws.send(json.dumps(request))


async def reply(ws: Any) -> dict[str, Any]:
    with anyio.fail_after(5):
        answer: dict[str, Any] = json.loads(await ws.recv())
    return answer


async def test_chat_groups_private_messages_and_errors(chat_server: str) -> None:
    async with (
        client(f"{chat_server}?id=alice") as alice,
        client(f"{chat_server}?id=bob") as bob,
    ):
        await ask(alice, {"op": "join", "group": "g"})
        assert await reply(alice) == {"op": "joined", "group": "g"}
        await ask(bob, {"op": "join", "group": "g"})
        assert await reply(bob) == {"op": "joined", "group": "g"}

        await ask(alice, {"op": "say", "group": "g", "text": "hi all"})
        said = {"op": "said", "group": "g", "from": "alice", "text": "hi all"}
        assert await reply(alice) == said
        assert await reply(bob) == said

        await ask(bob, {"op": "tell", "to": "alice", "text": "psst"})
        assert await reply(alice) == {"op": "told", "from": "bob", "text": "psst"}

        await ask(bob, {"op": "leave", "group": "g"})
        assert await reply(bob) == {"op": "left", "group": "g"}
        await ask(alice, {"op": "say", "group": "g", "text": "alone"})
        assert (await reply(alice))["text"] == "alone"

        await ask(bob, {"op": "dance"})
        assert (await reply(bob))["op"] == "error"
        await ask(bob, [1, 2])
        assert (await reply(bob))["op"] == "error"
        await ask(bob, {"op": "tell", "to": "alice", "text": "still here"})
        assert await reply(alice) == {"op": "told", "from": "bob", "text": "still here"}


async def closed_with(url: str) -> tuple[int | None, str]:
    """Connect and wait for the server to close: the close code and reason it sent."""
    async with client(url) as ws:
        with anyio.fail_after(5):
            await ws.wait_closed()
        return ws.close_code, ws.close_reason


async def test_a_missing_or_bad_identifier_is_closed_with_1008_the_same_everywhere(
    chat_server: Chat,
) -> None:
    for url in (chat_server, f"{chat_server}?id=", f"{chat_server}?id={'x' * 300}"):
        code, reason = await closed_with(url)
        assert code == 1008
        assert reason.startswith("invalid identifier: identifier must")
    async with client(f"{chat_server}?id=alice") as alice:  # still serving
        await ask(alice, {"op": "join", "group": "g"})
        assert await reply(alice) == {"op": "joined", "group": "g"}


HOSTILE: list[str | bytes] = [
    "not json",
    "[" * 100_000 + "]" * 100_000,  # nesting deep enough to exhaust the parser's recursion
    json.dumps([1, 2]),
    json.dumps({"op": ["unhashable"]}),
    json.dumps({"op": "join"}),
    json.dumps({"op": "join", "group": 7}),
    json.dumps({"op": "join", "group": ""}),
    json.dumps({"op": "join", "group": "g" * 300}),
    json.dumps({"op": "say", "group": "g", "text": "\ud800 lone surrogate"}),
    '{"op": "say", "group": "g", "text": "\\ud800 as an escape in valid JSON"}',
    json.dumps({"op": "tell", "to": "x" * 300, "text": "hi"}),
    json.dumps({"op": "tell", "to": "nobody", "text": "hi"}),
    json.dumps({"op": "leave", "group": "never-joined"}),
    b"\xff\xfe binary, not UTF-8",
]


async def test_hostile_input_gets_a_readable_answer_and_harms_nobody(chat_server: Chat) -> None:
    async with (
        client(f"{chat_server}?id=alice", max_size=None) as alice,
        client(f"{chat_server}?id=mallory", max_size=None) as mallory,
    ):
        for ws in (alice, mallory):
            await ask(ws, {"op": "join", "group": "g"})
            assert (await reply(ws))["op"] == "joined"
        for message in HOSTILE:
            await mallory.send(message)
            with anyio.move_on_after(1):  # some requests are carried out without a reply
                answer = json.loads(await mallory.recv())
                if answer.get("op") == "error":
                    assert "Error" not in answer["reason"]  # no exception names
                    assert "'" not in answer["reason"][:1]
        # The lone surrogate, escaped by json.dumps, reached the group as text; nobody died.
        await ask(alice, {"op": "say", "group": "g", "text": "still here"})
        with anyio.fail_after(5):
            while (said := json.loads(await alice.recv())).get("text") != "still here":
                assert said["op"] == "said"
    async with client(f"{chat_server}?id=carol") as carol:  # and new clients are served
        await ask(carol, {"op": "join", "group": "g"})
        assert await reply(carol) == {"op": "joined", "group": "g"}


async def test_each_connection_and_disconnection_is_logged_once(chat_server: Chat) -> None:
    async with client(f"{chat_server}?id=dora") as dora:
        await ask(dora, {"op": "join", "group": "g"})
        await reply(dora)
        close = dora.aclose if hasattr(dora, "aclose") else dora.close  # trio: aclose
        await close(1000, "bye")
    with anyio.fail_after(5):
        while "dora disconnected" not in chat_server.log():
            await anyio.sleep(0.02)
    log = chat_server.log()
    assert log.count("dora connected") == 1
    assert log.count("dora disconnected: ") == 1
    # hypercorn (the ASGI example's server) reports 1006 for every close a client starts
    # (pgjones/hypercorn#127); the other servers pass the client's code and reason on.
    expected = (
        "dora disconnected: 1006" if chat_server.kind == "asgi" else "dora disconnected: 1000 bye"
    )
    assert expected in log
    assert "Executed callback" not in log  # the state machine library's INFO chatter


async def reset_during_handshake(url: str, *, wait_for_101: bool) -> None:
    """A client that sends its upgrade request, then resets the TCP connection (RST)."""
    import base64
    import os
    import socket
    import struct
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    stream = await anyio.connect_tcp(parts.hostname, parts.port)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send(
        f"GET {parts.path}?id=eve HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    if wait_for_101:
        with anyio.fail_after(5):
            await stream.receive()
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()


async def test_clients_that_reset_during_their_handshake_harm_nobody(chat_server: Chat) -> None:
    """On trio one escaping error ends the whole server: these once did."""
    async with client(f"{chat_server}?id=alice") as alice:
        await ask(alice, {"op": "join", "group": "g"})
        assert await reply(alice) == {"op": "joined", "group": "g"}
        for attempt in range(10):
            await reset_during_handshake(chat_server, wait_for_101=attempt % 2 == 1)
        await anyio.sleep(0.2)  # time for the server to trip over them, if it would
        await ask(alice, {"op": "say", "group": "g", "text": "still here"})
        said = await reply(alice)
        assert said["text"] == "still here"
    async with client(f"{chat_server}?id=bob") as bob:  # new clients are served too
        await ask(bob, {"op": "join", "group": "g"})
        assert await reply(bob) == {"op": "joined", "group": "g"}
