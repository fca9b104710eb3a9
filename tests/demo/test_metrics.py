"""``wsfleet demo`` serves ``/metrics``, and its dashboard links to it."""

from __future__ import annotations

import sys
from typing import Any

import anyio
import httpx
import pytest
import sniffio
from prometheus_client.parser import text_string_to_metric_families

from wsfleet.demo import open_demo

pytestmark = pytest.mark.anyio


def http_client() -> httpx.AsyncClient:
    """websockets' server answers one request a connection, then closes it."""
    return httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0))


async def connect(url: str) -> Any:
    if sniffio.current_async_library() == "trio":
        from websockets.trio.client import connect as trio_connect

        return trio_connect(url, ping_interval=None)
    from websockets.asyncio.client import connect as asyncio_connect

    return asyncio_connect(url, ping_interval=None)


def connected(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "wsfleet_connections" and sample.labels["state"] == "CONNECTED":
                return sample.value
    raise AssertionError("no wsfleet_connections{state='CONNECTED'}")


async def test_the_demo_serves_its_managers_metrics_and_the_dashboard_links_them() -> None:
    async with open_demo(port=0) as demo, http_client() as http:
        dashboard = await http.get(demo.url + "dashboard")
        assert 'href="/metrics"' in dashboard.text
        before = await http.get(demo.url + "metrics")
        assert before.status_code == 200
        assert before.headers["content-type"].startswith("text/plain; version=")
        base = connected(before.text)  # the demo's own simulated clients, if any
        async with await connect(f"{demo.ws_url}/ws?id=metrics-test"):
            with anyio.fail_after(10):
                while connected((await http.get(demo.url + "metrics")).text) != base + 1:
                    await anyio.sleep(0.02)
        assert "metrics-test" not in (await http.get(demo.url + "metrics")).text


async def test_without_prometheus_client_the_demo_runs_and_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "wsfleet.metrics", raising=False)
    async with open_demo(port=0) as demo, http_client() as http:
        response = await http.get(demo.url + "metrics")
        assert response.status_code == 404
        assert "pip install 'wsfleet[prometheus]'" in response.text
        assert (await http.get(demo.url)).status_code == 200
