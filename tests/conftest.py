"""Every async test runs on asyncio and on trio, through anyio's pytest plugin."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from redis_server import RedisServer, running_redis


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A throw-away redis-server on a free loopback port (the test is skipped without one)."""
    with running_redis() as server:
        yield server
