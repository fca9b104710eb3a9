"""Every example runs, on both event loops, and does what its docstring says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT

EXAMPLES = ROOT / "examples"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_quickstart_runs_a_fleet_in_memory(backend: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), "--backend", backend],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = result.stdout
    assert "broadcast -> 5 connections" in out
    assert "alice-1 received ['hello everyone', 'hi alice', 'lobby news']" in out
    assert "slow was closed with 1008" in out
    assert "CONNECTED -> ERROR        slow consumer" in out
    assert "CONNECTED -> ERROR        heartbeat timeout" in out
    assert "CONNECTED -> IDLE" in out
    assert "IDLE -> CONNECTED    activity" in out
    assert "bob's socket closed with 1001" in out


def test_the_readme_example_runs() -> None:
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "['hello']" in result.stdout
    assert "alice None -> ConnectionState.CONNECTED" in result.stdout


def test_the_readme_trio_server_survives_what_a_client_can_send(tmp_path: Path) -> None:
    """The README's trio snippet, run as written (on a free port): a bad identifier, a
    client that resets during its handshake, then clients that chat."""
    import socket
    import time

    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    code = next(
        block.split("```", 1)[0]
        for block in readme.split("```python\n")[1:]
        if "serve_websocket" in block.split("```", 1)[0]
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert "8765" in code
    script = tmp_path / "server.py"
    script.write_text(code.replace("8765", str(port)), encoding="utf-8")
    client = f"""
import anyio, trio, socket, struct
from trio_websocket import open_websocket_url, ConnectionClosed

async def main():
    url = "ws://127.0.0.1:{port}"
    for _ in range(200):  # the server starts
        try:
            socket.create_connection(("127.0.0.1", {port})).close()
            break
        except OSError:
            await trio.sleep(0.05)
    try:  # an identifier of 300 characters
        async with open_websocket_url(url + "/" + "x" * 300) as bad:
            await bad.get_message()
    except ConnectionClosed as closed:
        print("bad id closed with", closed.reason.code)
    try:  # a message as large as trio-websocket takes: over the manager's inbound limit
        async with open_websocket_url(url + "/mallory") as big:
            await big.send_message("a" * (1024 * 1024 - 2))
            await big.get_message()
    except ConnectionClosed as closed:
        print("big message closed with", closed.reason.code)
    for _ in range(5):  # resets during the handshake
        sock = socket.create_connection(("127.0.0.1", {port}))
        sock.sendall(b"GET /eve HTTP/1.1\\r\\nHost: x\\r\\nUpgrade: websocket\\r\\n"
                     b"Connection: Upgrade\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n"
                     b"Sec-WebSocket-Version: 13\\r\\n\\r\\n")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    await trio.sleep(0.3)
    async with open_websocket_url(url + "/alice") as alice, open_websocket_url(url + "/bob") as bob:
        await trio.sleep(0.1)
        await alice.send_message("hi")
        print("bob got", await bob.get_message())

trio.run(main)
"""
    with subprocess.Popen(
        [sys.executable, str(script)], stderr=subprocess.PIPE, text=True
    ) as server:
        try:
            result = subprocess.run(
                [sys.executable, "-c", client], capture_output=True, text=True, timeout=60
            )
            time.sleep(0.1)
            assert server.poll() is None, "the server died"
        finally:
            server.terminate()
            server.wait(timeout=10)
    assert result.returncode == 0, result.stderr
    assert "bad id closed with 1008" in result.stdout
    assert "big message closed with 1009" in result.stdout
    assert "bob got alice: hi" in result.stdout
