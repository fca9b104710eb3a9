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


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Collect coredis's unclosed leftovers of the last Redis test under the same filter as
    ``running_redis`` does, rather than at the interpreter's exit, where pytest would report
    them as unraisable errors of nobody's."""
    import gc
    import warnings

    from redis_server import UNCLOSED

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", UNCLOSED, ResourceWarning)
        gc.collect()
