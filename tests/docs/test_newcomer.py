"""What a newcomer reads is what happens: the FastAPI how-to's shutdown code, the build's
output kept out of the repository."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import ROOT, free_port

PAGE = ROOT / "docs" / "howto" / "fastapi.md"


def block(title: str) -> str:
    """The code block of the how-to titled ``title`` (``` ```python title="app.py" ```)."""
    text = PAGE.read_text(encoding="utf-8")
    found = re.findall(rf'```python title="{re.escape(title)}"\n(.*?)```', text, re.S)
    assert len(found) == 1, f"expected one block titled {title!r}"
    return found[0]


CLIENT = """
import asyncio, sys
from websockets.asyncio.client import connect

async def main():
    url = "ws://127.0.0.1:%d/ws/alice"
    for _ in range(300):
        try:
            ws = await connect(url, ping_interval=None)
            break
        except OSError:
            await asyncio.sleep(0.05)
    print("connected", flush=True)
    try:
        await asyncio.wait_for(ws.wait_closed(), 60)
    finally:
        print("closed with", ws.close_code, flush=True)

asyncio.run(main())
"""


@pytest.mark.parametrize("server", ["uvicorn"])
def test_the_close_code_the_fastapi_how_to_states_for_a_shutdown_is_what_clients_see(
    tmp_path: Path, server: str
) -> None:
    """The how-to's app under uvicorn, Ctrl-C: its connected client sees the code the page
    states (1012, service restart, under uvicorn)."""
    stated = re.search(r"clients see \*\*(\d{4})\*\*", PAGE.read_text(encoding="utf-8"))
    assert stated is not None, "the how-to states the close code clients see on shutdown"
    (tmp_path / "app.py").write_text(block("app.py"), encoding="utf-8")
    port = free_port()
    with subprocess.Popen(
        [sys.executable, "-m", server, "app:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as app:
        try:
            with subprocess.Popen(
                [sys.executable, "-c", CLIENT % port], stdout=subprocess.PIPE, text=True
            ) as client:
                assert client.stdout is not None
                assert client.stdout.readline().strip() == "connected"
                time.sleep(0.3)  # (the session registered: nothing asserts on it)
                app.send_signal(signal.SIGINT)  # Ctrl-C
                out, _ = client.communicate(timeout=60)
            assert app.wait(timeout=30) == 0
        finally:
            if app.poll() is None:
                app.kill()
    assert f"closed with {stated.group(1)}" in out, out


def test_the_docs_build_is_kept_out_of_the_repository() -> None:
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    assert "site/" in ignored or "/site/" in ignored
