"""The demo in a real browser: Debian's Chromium, driven by Playwright's sync API.

``python -m wsfleet demo`` runs as a program on a free port (once per backend) and real
pages do what a visitor does: chat between two pages, watch them on the dashboard, close
one, drop one, stall a simulated client. No browser is downloaded: Playwright launches the
system's ``chromium`` (``apt-get install chromium``); these tests are skipped, saying why,
when it or Playwright is missing. Every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

try:
    from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
except ImportError:
    pytest.skip("Playwright is not installed (pip install playwright)", allow_module_level=True)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)

#: Headless, and quiet: nothing but the demo's own traffic.
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
WAIT = 5_000  # ms, for anything the server should do at once


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def demo_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``python -m wsfleet demo --backend <loop>`` on a free port; its base URL."""
    port = free_port()
    stderr = tmp_path_factory.mktemp("demo") / "stderr.txt"
    with (
        stderr.open("w") as errors,
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wsfleet",
                "demo",
                "--port",
                str(port),
                "--backend",
                request.param,
            ],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        ) as process,
    ):
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert f"http://127.0.0.1:{port}/" in line, line + stderr.read_text()
            yield f"http://127.0.0.1:{port}/"
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Visit:
    """A browser context whose pages may only talk to the demo, and must not log errors."""

    def __init__(self, browser: Browser, base: str) -> None:
        self.base = base
        self.context: BrowserContext = browser.new_context(viewport={"width": 1300, "height": 900})
        self.elsewhere: list[str] = []
        self.errors: list[str] = []

    def page(self, path: str) -> Page:
        page = self.context.new_page()
        page.set_default_timeout(WAIT)
        page.on("request", self._request)
        page.on("websocket", lambda ws: self._request_url(ws.url))
        page.on("pageerror", lambda exc: self.errors.append(f"{path}: {exc}"))
        page.on("console", lambda msg: self._console(path, msg))
        page.goto(self.base + path.lstrip("/"))
        return page

    def _request(self, request: Any) -> None:
        self._request_url(request.url)

    def _request_url(self, url: str) -> None:
        if urlsplit(url).netloc != urlsplit(self.base).netloc:
            self.elsewhere.append(url)

    def _console(self, path: str, message: Any) -> None:
        # A WebSocket cut on purpose (the drop button) is reported by the browser; it is the
        # point of the test, not an error of the page.
        if message.type == "error" and "WebSocket" not in message.text:
            self.errors.append(f"{path}: {message.text}")

    def close(self) -> None:
        self.context.close()
        assert self.elsewhere == [], "the pages fetched from outside the demo"
        assert self.errors == []


@pytest.fixture
def visit(browser: Browser, demo_url: str) -> Iterator[Visit]:
    visit = Visit(browser, demo_url)
    try:
        yield visit
    finally:
        visit.close()


def chat(visit: Visit, name: str) -> Page:
    """A chat page connected as ``name`` (it joins the lobby by itself)."""
    page = visit.page(f"/?name={name}")
    expect(page.locator("#status")).to_have_text(f"connected as {name}", timeout=WAIT)
    expect(page.locator('#groups li[data-group="lobby"]')).to_have_count(1, timeout=WAIT)
    return page


def state_of(dashboard: Page, name: str) -> Any:
    return dashboard.locator(f'#connections tr[data-identifier="{name}"] .state')


def test_a_message_typed_in_one_page_appears_in_the_other(visit: Visit) -> None:
    alice = chat(visit, "alice")
    bob = chat(visit, "bob")

    alice.fill("#say-text", "hello from alice")
    alice.click("#say-form button")
    expect(bob.locator("#messages")).to_contain_text("hello from alice", timeout=WAIT)
    expect(alice.locator("#messages")).to_contain_text("hello from alice", timeout=WAIT)

    bob.fill("#tell-to", "alice")
    bob.fill("#tell-text", "just for you")
    bob.click("#tell-form button")
    expect(alice.locator("#messages li.told")).to_contain_text("just for you", timeout=WAIT)

    alice.fill("#shout-text", "hello everyone")
    alice.click("#shout-form button")
    expect(bob.locator("#messages li.shouted")).to_contain_text("hello everyone", timeout=WAIT)


def test_dashboard_shows_new_connections_and_closed_pages(visit: Visit) -> None:
    dashboard = visit.page("/dashboard")
    expect(dashboard.locator("#link")).to_have_text("live", timeout=WAIT)
    carol = chat(visit, "carol")
    dave = chat(visit, "dave")
    for name in ("carol", "dave"):
        expect(state_of(dashboard, name)).to_have_text("CONNECTED", timeout=WAIT)
    row = dashboard.locator('#connections tr[data-identifier="carol"]')
    expect(row.locator(".groups")).to_have_text("lobby", timeout=WAIT)
    expect(dashboard.locator("#diagram svg")).to_be_visible()

    carol.close()  # the browser says goodbye with 1001: a clean close
    expect(state_of(dashboard, "carol")).to_have_text("DISCONNECTED", timeout=WAIT)
    expect(state_of(dashboard, "dave")).to_have_text("CONNECTED")
    expect(
        dashboard.locator('#feed li[data-identifier="carol"][data-state="DISCONNECTED"]')
    ).to_have_count(1, timeout=WAIT)
    dave.close()


def test_drop_shows_error_then_connected_again(visit: Visit) -> None:
    dashboard = visit.page("/dashboard")
    erin = chat(visit, "erin")
    state = state_of(dashboard, "erin")
    expect(state).to_have_text("CONNECTED", timeout=WAIT)

    dashboard.locator('#connections tr[data-identifier="erin"] button[data-op="drop"]').click()
    # ERROR lasts a moment on the server; the dashboard replays it for 0.7 s. Poll often.
    dashboard.wait_for_function(
        "() => document.querySelector('#connections tr[data-identifier=\"erin\"] .state')"
        ".textContent === 'ERROR'",
        polling=50,
        timeout=WAIT,
    )
    expect(state).to_have_text("CONNECTED", timeout=10_000)
    trail = dashboard.locator('#connections tr[data-identifier="erin"] .trail')
    expect(trail).to_have_text("CONNECTED → ERROR → RECONNECTING → CONNECTED", timeout=WAIT)
    expect(erin.locator("#status")).to_have_text("connected as erin (resumed)", timeout=WAIT)


def test_stall_shows_a_slow_consumer_evicted(visit: Visit) -> None:
    dashboard = visit.page("/dashboard")
    expect(dashboard.locator("#link")).to_have_text("live", timeout=WAIT)
    before = dashboard.locator('#connections tr[data-kind="simulated"]').count()
    dashboard.click("#stall")
    expect(dashboard.locator("#ack")).to_contain_text("stopped reading", timeout=WAIT)
    slow = dashboard.locator('#connections tr[data-kind="simulated"]')
    expect(slow).to_have_count(before + 1, timeout=WAIT)
    expect(slow.last.locator(".state")).to_have_text("DISCONNECTED", timeout=10_000)
    expect(slow.last.locator(".trail")).to_contain_text("ERROR", timeout=WAIT)
    expect(dashboard.locator("#drops")).to_contain_text("slow consumer", timeout=WAIT)
