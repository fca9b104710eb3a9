"""``wsfleet.metrics``: what a Prometheus server scrapes agrees with ``stats()``.

A real manager with real websockets clients on 127.0.0.1, scraped by a real HTTP client:
on a port of its own (``start_http_server``) and mounted in a FastAPI app (under uvicorn on
asyncio, hypercorn on trio). Every scrape is parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
import sniffio
from fastapi import FastAPI, WebSocket
from prometheus_client import CollectorRegistry, generate_latest, make_asgi_app
from prometheus_client.parser import text_string_to_metric_families

from support import ROOT, wait_until
from wsfleet import Backplane, ConnectionManager, InMemoryHub, OverflowPolicy
from wsfleet.errors import InvalidArgument, WrongType
from wsfleet.metrics import FleetCollector, start_http_server

pytestmark = pytest.mark.anyio

DOCS = ROOT / "docs" / "howto" / "metrics.md"
NAMES = ("alice", "bob", "carol")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and labels (the parser refuses a bad one)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def scrape(registry: CollectorRegistry) -> Samples:
    return samples(generate_latest(registry).decode())


# -- a websockets server and clients on the test's loop ------------------------------------------


@asynccontextmanager
async def serve(manager: ConnectionManager) -> AsyncIterator[str]:
    """A websockets server on 127.0.0.1 whose handler hands each socket to ``manager``."""

    async def handler(ws: Any) -> None:
        who = parse_qs(urlsplit(ws.request.path).query)["id"][0]
        async with manager.session(ws, who) as session:
            async for _ in session:
                pass

    options: dict[str, Any] = {"ping_interval": None, "compression": None}
    if sniffio.current_async_library() == "trio":
        import trio
        from websockets.trio.server import serve as trio_serve

        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(trio_serve, handler, 0, host="127.0.0.1", **options)
            )
            try:
                yield f"ws://127.0.0.1:{server.listeners[0].socket.getsockname()[1]}/ws"
            finally:
                nursery.cancel_scope.cancel()
    else:
        from websockets.asyncio.server import serve as asyncio_serve

        async with asyncio_serve(handler, "127.0.0.1", 0, **options) as server:
            yield f"ws://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}/ws"


@asynccontextmanager
async def client(url: str) -> AsyncIterator[Any]:
    if sniffio.current_async_library() == "trio":
        from websockets.trio.client import connect as trio_connect

        async with trio_connect(url, ping_interval=None, compression=None) as ws:
            yield ws
    else:
        from websockets.asyncio.client import connect as asyncio_connect

        async with asyncio_connect(url, ping_interval=None, compression=None) as ws:
            yield ws


async def receive(ws: Any, count: int) -> list[str]:
    with anyio.fail_after(10):
        return [await ws.recv() for _ in range(count)]


# -- the collector against stats() --------------------------------------------------------------


async def test_a_scrape_says_what_stats_says_and_the_histograms_count_each_fan_out() -> None:
    registry = CollectorRegistry()
    overflow = OverflowPolicy(max_messages=8, action="drop-newest")
    async with (
        ConnectionManager(heartbeat=None, overflow=overflow) as manager,
        serve(manager) as url,
        AsyncExitStack() as stack,
    ):
        collector = stack.enter_context(FleetCollector(manager, registry=registry))
        clients = [await stack.enter_async_context(client(f"{url}?id={n}")) for n in NAMES]
        await wait_until(lambda: manager.count() == len(NAMES), "every client registered")
        manager.add_to_group("alice", "room:1")

        found = scrape(registry)
        assert value(found, "wsfleet_connections", state="CONNECTED") == len(NAMES)
        assert value(found, "wsfleet_connections", state="IDLE") == 0
        assert value(found, "wsfleet_identifiers") == len(NAMES)
        assert value(found, "wsfleet_groups") == 1
        assert value(found, "wsfleet_message_size_bytes_count") == 0

        broadcasts = 5
        for i in range(broadcasts):
            await manager.broadcast(f"hello {i}")  # 7 bytes each
        for ws in clients:
            assert await receive(ws, broadcasts) == [f"hello {i}" for i in range(broadcasts)]

        # Nine messages for alice at once, nothing written in between: the queue holds
        # eight, the ninth is dropped ("overflow: drop-newest").
        alice = manager.connection(manager.sockets_of("alice")[0])
        for i in range(9):
            await alice.send(f"m{i}")  # 2 bytes each
        assert await receive(clients[0], 8) == [f"m{i}" for i in range(8)]
        await wait_until(lambda: manager.stats().queued_messages == 0, "the queues drained")

        stats = manager.stats()
        found = scrape(registry)
        assert stats.drops == {"overflow: drop-newest": 1}
        assert value(found, "wsfleet_dropped_messages_total", reason="overflow: drop-newest") == 1
        for state, count in stats.states.items():
            assert value(found, "wsfleet_connections", state=state) == count
        for name in ("identifiers", "groups", "queued_messages", "queued_bytes"):
            assert value(found, f"wsfleet_{name}") == getattr(stats, name), name
        for name in (
            "sent_messages",
            "received_messages",
            "inbound_waits",
            "callback_errors",
            "callback_timeouts",
            "pings_sent",
            "heartbeat_timeouts",
            "producer_waits",
            "producer_wait_seconds",
        ):
            assert value(found, f"wsfleet_{name}_total") == getattr(stats, name), name
        assert stats.sent_messages == broadcasts * len(NAMES) + 8

        calls = broadcasts + 9
        assert value(found, "wsfleet_message_size_bytes_count") == calls
        assert value(found, "wsfleet_message_size_bytes_sum") == broadcasts * 7 + 9 * 2
        assert value(found, "wsfleet_message_size_bytes_bucket", le="64.0") == calls
        assert value(found, "wsfleet_fanout_recipients_count") == calls
        # The message a full queue dropped was for a recipient too (counted as a drop).
        assert value(found, "wsfleet_fanout_recipients_sum") == broadcasts * len(NAMES) + 9
        assert value(found, "wsfleet_fanout_recipients_sum") == stats.sent_messages + 1
        rounds = value(found, "wsfleet_fanout_latency_seconds_count")
        assert 1 <= rounds <= calls
        assert value(found, "wsfleet_fanout_latency_seconds_bucket", le="+Inf") == rounds
        assert value(found, "wsfleet_fanout_latency_seconds_sum") > 0

        # Closed: out of the registry, and the fan-outs are no longer observed.
        collector.close()
        collector.close()
        assert generate_latest(registry) == b""
        await manager.broadcast("after")
        again = CollectorRegistry()
        again.register(collector)
        assert value(scrape(again), "wsfleet_message_size_bytes_count") == calls


async def test_several_observers_each_see_every_fan_out_until_removed() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.sizes: list[tuple[int, int]] = []
            self.rounds = 0

        def fanned_out(self, size: int, recipients: int) -> None:
            self.sizes.append((size, recipients))

        def flushed(self, seconds: float) -> None:
            assert seconds >= 0
            self.rounds += 1

    first, second = Recorder(), Recorder()
    async with ConnectionManager(heartbeat=None) as manager, serve(manager) as url:
        one = manager.add_observer(first)
        two = manager.add_observer(second)
        async with client(f"{url}?id=alice") as ws:
            await wait_until(lambda: manager.count() == 1, "registered")
            await manager.send_to_one("alice", "hi")
            await manager.send_to_one("nobody", "lost")
            assert await receive(ws, 1) == ["hi"]
            await wait_until(lambda: first.rounds >= 1, "a flusher round observed")
            assert first.sizes == second.sizes == [(2, 1), (4, 0)]
            assert one.remove() is True
            assert one.remove() is False
            await manager.send_to_one("alice", "again")
            assert await receive(ws, 1) == ["again"]
            assert first.sizes == [(2, 1), (4, 0)]
            assert second.sizes[-1] == (5, 1)
            assert two.remove() is True


# -- serving: a port of its own, and mounted in an ASGI app ---------------------------------------


async def test_start_http_server_serves_the_metrics_on_its_own_port() -> None:
    async with (
        ConnectionManager(heartbeat=None) as manager,
        serve(manager) as url,
        client(f"{url}?id=alice"),
        client(f"{url}?id=bob"),
    ):
        await wait_until(lambda: manager.count() == 2, "both registered")
        with start_http_server(manager, 0) as server:
            assert server.host == "127.0.0.1"
            assert server.port > 0
            await manager.broadcast("hello")
            async with httpx.AsyncClient() as http:
                response = await http.get(server.url)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            found = samples(response.text)
            assert value(found, "wsfleet_connections", state="CONNECTED") == 2
            assert value(found, "wsfleet_message_size_bytes_count") == 1
            assert value(found, "wsfleet_fanout_recipients_sum") == 2
            port = server.port
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


@asynccontextmanager
async def serve_asgi(app: Any) -> AsyncIterator[int]:
    """``app`` under uvicorn on asyncio, hypercorn on trio; yields the port."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    stopped = anyio.Event()
    if sniffio.current_async_library() == "trio":
        from hypercorn.config import Config
        from hypercorn.trio import serve as hypercorn_serve

        config = Config()
        config.bind = [f"fd://{sock.detach()}"]
        stop = anyio.Event()

        async def run_hypercorn(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            try:
                await hypercorn_serve(
                    app, config, shutdown_trigger=stop.wait, task_status=task_status
                )
            finally:
                stopped.set()

        async with anyio.create_task_group() as tg:
            await tg.start(run_hypercorn)
            try:
                yield port
            finally:
                stop.set()
                with anyio.move_on_after(15, shield=True):
                    await stopped.wait()
    else:
        import uvicorn

        server = uvicorn.Server(uvicorn.Config(app, log_config=None))

        async def run_uvicorn() -> None:
            try:
                await server.serve(sockets=[sock])
            finally:
                stopped.set()

        with sock:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_uvicorn)
                try:
                    await wait_until(lambda: server.started, "uvicorn started")
                    yield port
                finally:
                    server.should_exit = True
                    with anyio.move_on_after(15, shield=True):
                        await stopped.wait()


def metrics_app() -> Any:
    """The FastAPI app of docs/howto/metrics.md: the collector lives as long as the manager."""
    registry = CollectorRegistry()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with ConnectionManager(heartbeat=None) as manager:
            with FleetCollector(manager, registry=registry):
                app.state.manager = manager
                yield

    app = FastAPI(lifespan=lifespan)
    app.mount("/metrics", make_asgi_app(registry))

    @app.websocket("/ws/{who}")
    async def chat(websocket: WebSocket, who: str) -> None:
        manager: ConnectionManager = websocket.app.state.manager
        await websocket.accept()
        async with manager.session(websocket, who) as session:
            async for message in session:
                await manager.broadcast(f"{who}: {message}")

    return app


async def test_mounted_in_a_fastapi_app_it_serves_the_apps_manager() -> None:
    app = metrics_app()
    async with serve_asgi(app) as port, httpx.AsyncClient(follow_redirects=True) as http:
        url = f"ws://127.0.0.1:{port}/ws"
        async with client(f"{url}/alice") as alice, client(f"{url}/bob") as bob:
            manager: ConnectionManager = app.state.manager
            await wait_until(lambda: manager.count() == 2, "both registered")
            await alice.send("hi")
            assert await receive(bob, 1) == ["alice: hi"]
            assert await receive(alice, 1) == ["alice: hi"]
            response = await http.get(f"http://127.0.0.1:{port}/metrics")
            assert response.status_code == 200
            found = samples(response.text)
            stats = manager.stats()
            assert value(found, "wsfleet_connections", state="CONNECTED") == 2
            assert value(found, "wsfleet_received_messages_total") == stats.received_messages == 1
            assert value(found, "wsfleet_sent_messages_total") == stats.sent_messages == 2
            assert value(found, "wsfleet_message_size_bytes_count") == 1
            assert value(found, "wsfleet_fanout_recipients_sum") == 2


# -- names, labels and the docs -------------------------------------------------------------------

#: Every metric, as Prometheus sees it (counters with their ``_total``): a rename is deliberate.
EXPECTED = {
    "wsfleet_connections": "gauge",
    "wsfleet_identifiers": "gauge",
    "wsfleet_groups": "gauge",
    "wsfleet_queued_messages": "gauge",
    "wsfleet_queued_bytes": "gauge",
    "wsfleet_backpressure_max_queued_bytes": "gauge",
    "wsfleet_sent_messages_total": "counter",
    "wsfleet_dropped_messages_total": "counter",
    "wsfleet_received_messages_total": "counter",
    "wsfleet_inbound_dropped_messages_total": "counter",
    "wsfleet_inbound_waits_total": "counter",
    "wsfleet_callback_errors_total": "counter",
    "wsfleet_callback_timeouts_total": "counter",
    "wsfleet_pings_sent_total": "counter",
    "wsfleet_heartbeat_timeouts_total": "counter",
    "wsfleet_producer_waits_total": "counter",
    "wsfleet_producer_wait_seconds_total": "counter",
    "wsfleet_backplane_state": "gauge",
    "wsfleet_backplane_queued_sends": "gauge",
    "wsfleet_backplane_published_messages_total": "counter",
    "wsfleet_backplane_received_messages_total": "counter",
    "wsfleet_backplane_malformed_messages_total": "counter",
    "wsfleet_backplane_late_messages_total": "counter",
    "wsfleet_backplane_replayed_messages_total": "counter",
    "wsfleet_backplane_stale_messages_total": "counter",
    "wsfleet_backplane_oversize_messages_total": "counter",
    "wsfleet_backplane_refused_messages_total": "counter",
    "wsfleet_backplane_expired_nodes_total": "counter",
    "wsfleet_backplane_link_changes_total": "counter",
    "wsfleet_fanout_latency_seconds": "histogram",
    "wsfleet_message_size_bytes": "histogram",
    "wsfleet_fanout_recipients": "histogram",
}

#: snake_case under the namespace; a unit, if any, last and in base units.
_NAME = re.compile(r"wsfleet(_[a-z0-9]+)+\Z")
_UNITS = ("seconds", "bytes")
_NOT_BASE_UNITS = ("milliseconds", "ms", "kilobytes", "kb", "mb", "minutes", "hours", "bits")


async def test_every_name_follows_prometheus_conventions_and_no_label_names_a_user() -> None:
    hub = InMemoryHub()
    async with (
        ConnectionManager(heartbeat=None, backplane=Backplane(hub)) as manager,
        serve(manager) as url,
        client(f"{url}?id=alice"),
    ):
        await wait_until(lambda: manager.count() == 1, "registered")
        manager.add_to_group("alice", "room:1")
        await manager.send_to_group("room:1", "hello")
        registry = CollectorRegistry()
        with FleetCollector(manager, registry=registry):
            text = generate_latest(registry).decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    exposed = {
        (name + "_total" if family.type == "counter" else name): family.type
        for name, family in families.items()
    }
    assert exposed == EXPECTED
    for name, kind in EXPECTED.items():
        assert _NAME.match(name), name
        assert name.endswith("_total") == (kind == "counter"), name
        words = name.removesuffix("_total").split("_")
        assert not set(words) & set(_NOT_BASE_UNITS), name
        for unit in _UNITS:
            if unit in words:
                assert words[-1] == unit, f"{name}: the unit goes last"
    everything = [sample for family in families.values() for sample in family.samples]
    labels = {key for sample in everything for key in sample.labels}
    assert labels <= {"state", "reason", "le"}
    assert "alice" not in text
    assert "room:1" not in text
    states = {
        s.labels["state"] for f in families.values() for s in f.samples if "state" in s.labels
    }
    assert states == {"CONNECTED", "IDLE", "ERROR", "RECONNECTING", "DISCONNECTED"}
    backplane = families["wsfleet_backplane_state"].samples
    assert [s.labels["state"] for s in backplane if s.value == 1] == ["CONNECTED"]


def test_the_how_to_lists_every_metric() -> None:
    text = DOCS.read_text(encoding="utf-8")
    missing = [name for name in EXPECTED if f"`{name}`" not in text]
    assert missing == []


# -- what it refuses ---------------------------------------------------------------------------


def test_constant_labels_go_on_every_series() -> None:
    manager = ConnectionManager(heartbeat=None)
    registry = CollectorRegistry()
    FleetCollector(manager, registry=registry, labels={"manager": "chat"}, namespace="chat")
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    assert families
    for family in families:
        assert family.name.startswith("chat_"), family.name
        for sample in family.samples:
            assert sample.labels["manager"] == "chat", sample


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"namespace": "1wsfleet"}, InvalidArgument),
        ({"namespace": "ws fleet"}, InvalidArgument),
        ({"namespace": 3}, InvalidArgument),
        ({"labels": {"state": "x"}}, InvalidArgument),
        ({"labels": {"__name": "x"}}, InvalidArgument),
        ({"labels": {"bad-name": "x"}}, InvalidArgument),
        ({"labels": {"manager": 1}}, WrongType),
        ({"labels": ["manager"]}, WrongType),
        ({"latency_buckets": ()}, InvalidArgument),
        ({"latency_buckets": (0.1, 0.1)}, InvalidArgument),
        ({"size_buckets": (2.0, 1.0)}, InvalidArgument),
        ({"size_buckets": (float("nan"),)}, InvalidArgument),
        ({"recipient_buckets": (-1.0, 1.0)}, InvalidArgument),
        ({"recipient_buckets": ("1",)}, WrongType),
        ({"recipient_buckets": "12"}, WrongType),
        ({"registry": object()}, WrongType),
    ],
)
def test_bad_settings_are_refused_and_nothing_is_attached(
    options: dict[str, Any], error: type[Exception]
) -> None:
    manager = ConnectionManager(heartbeat=None)
    registry = CollectorRegistry()
    options.setdefault("registry", registry)
    with pytest.raises(error):
        FleetCollector(manager, **options)
    assert generate_latest(registry) == b""


def test_a_collector_is_for_a_manager_and_an_observer_has_both_methods() -> None:
    with pytest.raises(WrongType, match="ConnectionManager"):
        FleetCollector(object())  # type: ignore[arg-type]
    manager = ConnectionManager(heartbeat=None)
    with pytest.raises(WrongType, match="fanned_out"):
        manager.add_observer(object())  # type: ignore[arg-type]


def test_a_second_collector_of_the_same_names_in_one_registry_is_refused() -> None:
    manager = ConnectionManager(heartbeat=None)
    registry = CollectorRegistry()
    first = FleetCollector(manager, registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        FleetCollector(manager, registry=registry)
    before = generate_latest(registry)
    first.close()
    assert before
    assert generate_latest(registry) == b""
    FleetCollector(manager, registry=registry, labels={"manager": "other"})  # free again


def test_bad_ports_are_refused_before_anything_listens() -> None:
    manager = ConnectionManager(heartbeat=None)
    for port in (-1, 65536, "9108", True):
        with pytest.raises(InvalidArgument):
            start_http_server(manager, port)  # type: ignore[arg-type]


def test_without_the_extra_the_import_error_names_it() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["prometheus_client"] = None
        import wsfleet
        wsfleet.ConnectionManager()
        try:
            import wsfleet.metrics
        except ImportError as exc:
            print(exc)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'wsfleet[prometheus]'" in result.stdout


def test_importing_wsfleet_does_not_import_prometheus_client() -> None:
    script = (
        "import sys, wsfleet\n"
        "wsfleet.ConnectionManager()\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"
