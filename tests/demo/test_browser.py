"""The demo in a real browser: Debian's Chromium, driven by Playwright's sync API.

``python -m wsfleet demo`` runs as a program on a free port (once per backend) and real
pages do what a visitor does: chat between two pages, watch them on the dashboard, close
one, drop one, stall a simulated client. A page of another site (a second origin: a tiny
server on another port) tries to take the demo's sockets over, and must fail. No browser is
downloaded: Playwright launches the system's ``chromium`` (``apt-get install chromium``);
these tests are skipped, saying why, when it or Playwright is missing. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from support import free_port, stop
from wsfleet.framing import unframe

try:
    from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
except ImportError:
    pytest.skip("Playwright is not installed (pip install playwright)", allow_module_level=True)

pytestmark = pytest.mark.slow  # a browser, and a demo program per backend

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


@dataclass(frozen=True)
class Served:
    """A demo program: its base URL and the file its standard error goes to."""

    url: str
    stderr: Path

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None
        return port


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """``python -m wsfleet demo --backend <loop>`` on a free port."""
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
            yield Served(f"http://127.0.0.1:{port}/", stderr)
        finally:
            stop(process)


@pytest.fixture
def demo_url(served: Served) -> str:
    return served.url


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
    # Why it failed, then why it was not retried.
    expect(slow.last.locator(".reason")).to_contain_text("slow consumer / ", timeout=WAIT)
    expect(dashboard.locator("#drops")).to_contain_text("slow consumer", timeout=WAIT)


# -- the newcomer's path ------------------------------------------------------------------------


def test_joined_lobby_is_said_once(visit: Visit) -> None:
    gina = chat(visit, "gina")
    lines = gina.locator("#messages li")
    joined = gina.locator("#messages li", has_text="joined lobby")
    expect(joined).to_have_count(1)
    # The join box is empty: joining the lobby again is not offered; an empty join sends
    # nothing.
    expect(gina.locator("#group")).to_have_value("")
    count = lines.count()
    gina.click("#join-form button")
    gina.fill("#group", "lobby")
    gina.click("#join-form button")
    expect(gina.locator("#messages li", has_text="already in lobby")).to_have_count(1)
    assert lines.count() == count + 1
    expect(joined).to_have_count(1)
    # A second tab of the same name is in the lobby already: it says so, and joins nothing.
    again = chat(visit, "gina")
    expect(again.locator("#messages li", has_text="already in lobby")).to_have_count(1)
    expect(again.locator("#messages li", has_text="joined")).to_have_count(0)


def test_the_message_list_says_when_it_trims_old_lines(visit: Visit, served: Served) -> None:
    from websockets.sync.client import connect

    hank = chat(visit, "hank")
    limit = 300  # MAX_MESSAGES in chat.js
    extra = 5
    with connect(f"ws://127.0.0.1:{served.port}/ws?id=ivy", open_timeout=5) as ivy:
        assert json.loads(ivy.recv(timeout=5))["op"] == "welcome"
        ivy.send(json.dumps({"op": "join", "group": "lobby"}))
        assert json.loads(ivy.recv(timeout=5))["op"] == "joined"
        # One line at a time, each read back, so that ivy never falls behind.
        for n in range(limit + extra):
            ivy.send(json.dumps({"op": "say", "group": "lobby", "text": f"line {n}"}))
            framed = unframe(ivy.recv(timeout=5))[1]  # a room's line comes with its position
            assert json.loads(framed)["text"] == f"line {n}"
    last = hank.locator("#messages li").last.locator(".text")
    expect(last).to_have_text(f"line {limit + extra - 1}", timeout=10_000)
    notice = hank.locator("#messages li.trimmed")
    # "joined lobby" and the first lines are gone: 1 + 305 lines, 300 kept.
    expect(notice).to_have_text(
        f"{extra + 1} older messages were trimmed: this list keeps the latest {limit}"
    )
    expect(hank.locator("#messages li:not(.trimmed)")).to_have_count(limit)
    expect(hank.locator("#messages li").first).to_have_class("trimmed")


def test_the_dashboard_does_not_count_itself(visit: Visit) -> None:
    dashboard = visit.page("/dashboard")
    expect(dashboard.locator("#link")).to_have_text("live", timeout=WAIT)
    chat(visit, "jill")
    expect(state_of(dashboard, "jill")).to_have_text("CONNECTED", timeout=WAIT)
    expect(dashboard.locator("#watching")).to_have_text(
        "not counted: 1 dashboard watching", timeout=WAIT
    )
    counts = dashboard.evaluate(
        """() => ({
            chip: Number(document.querySelector("#count-CONNECTED").textContent),
            rows: document.querySelectorAll(
                '#connections tr[data-state="CONNECTED"]:not([data-kind="dashboard"])').length,
            last: document.querySelector("#connections tbody tr:last-child").dataset.kind,
        })"""
    )
    assert counts["chip"] == counts["rows"] >= 1
    assert counts["last"] == "dashboard"  # the fleet's rows first, the watcher's last


def test_a_crowded_fleet_is_listed_in_part(visit: Visit, served: Served) -> None:
    from websockets.sync.client import connect

    dashboard = visit.page("/dashboard")
    expect(dashboard.locator("#link")).to_have_text("live", timeout=WAIT)
    lena = chat(visit, "lena")
    # The most groups one name may be in is 20: the lobby and 19 more; the 20th is refused.
    for n in range(1, 21):
        lena.fill("#group", f"g{n:02d}")
        lena.click("#join-form button")
        expect(lena.locator("#messages li").last).to_contain_text(
            f"joined g{n:02d}" if n < 20 else "the most allowed", timeout=WAIT
        )
    row = dashboard.locator('#connections tr[data-identifier="lena"]')
    expect(row.locator(".groups")).to_have_text("g01, g02, g03, g04, g05 and 15 more", timeout=WAIT)
    lena.click("#who")
    expect(lena.locator("#people")).to_contain_text("lena", timeout=WAIT)

    # Sixty tabs of a long name in many groups of long names: one update cannot list them
    # all, and the dashboard says how many it leaves out.
    name = "".join(chr(0x1F600 + i) for i in range(32))
    url = f"ws://127.0.0.1:{served.port}/ws?id={quote(name)}"
    with ExitStack() as stack:
        tabs = [stack.enter_context(connect(url, open_timeout=5)) for _ in range(60)]
        for tab in tabs:
            assert json.loads(tab.recv(timeout=5))["op"] == "welcome"
        for i in range(20):
            group = "".join(chr(0x1F300 + i + j) for j in range(32))
            tabs[0].send(json.dumps({"op": "join", "group": group}))
            assert json.loads(tabs[0].recv(timeout=5))["op"] == "joined"
        expect(dashboard.locator("#hidden")).to_contain_text(
            "more connections, not listed", timeout=WAIT
        )
        shown = dashboard.locator(f'#connections tr[data-identifier="{name}"]')
        expect(shown.first.locator(".groups")).to_contain_text(" and 15 more", timeout=WAIT)
        assert 0 < shown.count() < 60
    expect(state_of(dashboard, "lena")).to_have_text("CONNECTED")


# -- another site -------------------------------------------------------------------------------

#: A page of another site that tries to take the demo's sockets over: read the dashboard's
#: feed and press "kill", talk in the chat. It reports what each socket managed to do.
HOSTILE_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>elsewhere</title></head><body>
<script>
function attempt(url, requests) {
  return new Promise((resolve) => {
    const result = { opened: false, received: 0, code: null };
    const ws = new WebSocket(url);
    ws.onopen = () => {
      result.opened = true;
      for (const request of requests) ws.send(JSON.stringify(request));
    };
    ws.onmessage = () => { result.received += 1; };
    ws.onclose = (event) => { result.code = event.code; resolve(result); };
    setTimeout(() => { ws.close(); resolve(result); }, 3000);  // bounded, opened or not
  });
}
window.outcome = Promise.all([
  attempt("ws://127.0.0.1:PORT/admin", [{ op: "kill" }, { op: "stall" }]),
  attempt("ws://127.0.0.1:PORT/ws?id=mallory", [{ op: "shout", text: "pwned" }]),
]);
</script></body></html>
"""


@pytest.fixture
def elsewhere(served: Served) -> Iterator[str]:
    """A second origin: a tiny server on another port of 127.0.0.1 serving the hostile page."""
    page = HOSTILE_PAGE.replace("PORT", str(served.port)).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads what the browser says, not this server's access log."""

    with ThreadingHTTPServer(("127.0.0.1", 0), Handler) as server:
        thread = threading.Thread(target=server.serve_forever, name="elsewhere", daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()
            thread.join(timeout=10)


def test_a_page_of_another_site_cannot_use_the_demo(
    visit: Visit, browser: Browser, served: Served, elsewhere: str
) -> None:
    dashboard = visit.page("/dashboard")
    expect(dashboard.locator("#link")).to_have_text("live", timeout=WAIT)
    kate = chat(visit, "kate")
    expect(state_of(dashboard, "kate")).to_have_text("CONNECTED", timeout=WAIT)

    other = browser.new_context()
    console: list[str] = []
    try:
        hostile = other.new_page()
        hostile.set_default_timeout(WAIT)
        hostile.on("console", lambda message: console.append(message.text))
        hostile.goto(elsewhere)
        admin, chat_socket = hostile.evaluate("() => window.outcome")
    finally:
        other.close()
    for name, result in [("/admin", admin), ("/ws", chat_socket)]:
        assert result == {"opened": False, "received": 0, "code": 1006}, name
        # The browser says why: the server answered the handshake with 403.
        refused = [text for text in console if name in text and "403" in text]
        assert refused, (name, console)

    # The demo refused the page and said so, once for its origin; nothing happened.
    origin = elsewhere.rstrip("/")
    log = served.stderr.read_text()
    assert log.count(f"the page is from {origin}, not this demo") == 1, log
    expect(dashboard.locator("#link")).to_have_text("live")
    expect(dashboard.locator("#ack")).to_have_text("")
    expect(dashboard.locator('#connections tr[data-identifier="mallory"]')).to_have_count(0)
    expect(state_of(dashboard, "kate")).to_have_text("CONNECTED")
    expect(kate.locator("#status")).to_have_text("connected as kate")
    expect(kate.locator("#messages")).not_to_contain_text("pwned")
