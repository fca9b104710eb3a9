"""Regenerate docs/demo-dashboard.png: the demo's dashboard with connections in every state.

    python scripts/screenshot_demo.py [--output docs/demo-dashboard.png] [--backend trio]

Starts ``python -m wsfleet demo`` on a free port, drives the system's Chromium with
Playwright (``apt-get install chromium``, ``pip install playwright``; no browser download)
through what a visitor would do, and takes the picture:

* alice and bob chat in the lobby, alice also in ``room:42``;
* bob is forced IDLE from the dashboard;
* a simulated client is stalled and evicted as a slow consumer (DISCONNECTED, drops counted);
* carol closes her page (DISCONNECTED);
* dave's connection is dropped and his page is gone: his session is held (RECONNECTING);
* erin's connection is dropped as the picture is taken (ERROR, on its way back).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT = 10_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def chat(page: Page, base: str, name: str) -> Page:
    page.goto(f"{base}?name={name}")
    expect(page.locator("#status")).to_have_text(f"connected as {name}", timeout=WAIT)
    expect(page.locator('#groups li[data-group="lobby"]')).to_have_count(1, timeout=WAIT)
    return page


def row(dashboard: Page, name: str, part: str = "") -> str:
    return f'#connections tr[data-identifier="{name}"]:not(.gone) {part}'.strip()


def shoot(base: str, output: Path, chromium: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        dashboard = context.new_page()
        dashboard.clock.install()  # the page's timers run as usual until paused below
        dashboard.goto(f"{base}dashboard")
        expect(dashboard.locator("#link")).to_have_text("live", timeout=WAIT)
        pages = {name: chat(context.new_page(), base, name) for name in ("alice", "bob", "carol")}
        pages["dave"] = chat(context.new_page(), base, "dave")
        pages["erin"] = chat(context.new_page(), base, "erin")

        alice, bob = pages["alice"], pages["bob"]
        alice.fill("#group", "room:42")
        alice.click("#join-form button")
        expect(alice.locator('#groups li[data-group="room:42"]')).to_have_count(1, timeout=WAIT)
        alice.fill("#say-text", "hello lobby")
        alice.click("#say-form button")
        expect(bob.locator("#messages")).to_contain_text("hello lobby", timeout=WAIT)
        bob.fill("#tell-to", "alice")
        bob.fill("#tell-text", "psst")
        bob.click("#tell-form button")
        expect(alice.locator("#messages")).to_contain_text("psst", timeout=WAIT)

        dashboard.click(row(dashboard, "bob", 'button[data-op="idle"]'))
        expect(dashboard.locator(row(dashboard, "bob", ".state"))).to_have_text(
            "IDLE", timeout=WAIT
        )

        dashboard.click("#stall")
        simulated = dashboard.locator('#connections tr[data-kind="simulated"] .state')
        expect(simulated).to_have_text("DISCONNECTED", timeout=WAIT)

        pages.pop("carol").close()
        expect(dashboard.locator('#connections tr[data-identifier="carol"] .state')).to_have_text(
            "DISCONNECTED", timeout=WAIT
        )

        dashboard.click(row(dashboard, "dave", 'button[data-op="drop"]'))
        pages.pop("dave").close()  # before it can come back: the session stays held
        expect(dashboard.locator(row(dashboard, "dave", ".state"))).to_have_text(
            "RECONNECTING", timeout=WAIT
        )

        # The last one is caught in ERROR. The server moves a held session on to RECONNECTING
        # at once, and the dashboard replays each change for 0.7 s of its clock: with that
        # clock paused as the button is pressed, the replay stops at ERROR for the picture.
        dashboard.clock.pause_at(dashboard.evaluate("() => Date.now() + 1"))
        dashboard.click(row(dashboard, "erin", 'button[data-op="drop"]'))
        expect(dashboard.locator(row(dashboard, "erin", ".state"))).to_have_text(
            "ERROR", timeout=WAIT
        )
        dashboard.mouse.move(0, 0)  # no hover highlight in the picture
        output.parent.mkdir(parents=True, exist_ok=True)
        dashboard.screenshot(path=str(output), full_page=True)
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "demo-dashboard.png")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    port = free_port()
    command = [sys.executable, "-m", "wsfleet", "demo", "--port", str(port)]
    with subprocess.Popen(
        [*command, "--backend", args.backend],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as demo:
        try:
            assert demo.stdout is not None
            line = demo.stdout.readline()
            if f"http://127.0.0.1:{port}/" not in line:
                print(f"the demo did not start: {line!r}", file=sys.stderr)
                return 1
            shoot(f"http://127.0.0.1:{port}/", args.output, args.chromium)
        finally:
            demo.terminate()
            demo.wait(timeout=10)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
