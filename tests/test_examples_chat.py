"""The chat example of every adapter, started as a program and used by real clients."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from adapters.clients import client

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(params=["asyncio", "trio", "asgi"])
def chat_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
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
            yield line.split("listening on ", 1)[1].strip()
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


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
