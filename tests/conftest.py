"""The tests, laid out as the source is; every async test runs on asyncio and on trio.

Layout: a directory per part of ``src/wsfleet`` (``fsm/``, ``policies/``, ``runtime/``,
``manager/``, ``backplane/`` with ``backplane/redis/``, ``adapters/``, ``demo/``,
``testing/``), ``docs/`` for the docs and the examples, and the suites that cut across the
library (``conformance/``, ``reliability/``); checks of the whole package stay at the top.

Imports: each directory below is a package, ``tests/`` itself is not. This conftest puts
``tests/`` on ``sys.path``, so ``support`` (what several modules share: state aliases,
pollers, ``free_port``, backplane counts, the mock-clock backend), ``redis_server`` and the
adapters' harnesses (``adapters.clients`` ...) import by name from anywhere.

Loops: async tests run through anyio's pytest plugin, on the ``anyio_backend`` fixture below
(asyncio and trio), or on ``support.mock_clock_backend`` where a module imports it.

Markers: ``slow`` marks what takes more than a few seconds (a browser, OS processes, a
frozen or killed Redis, long periods); ``python -m pytest -m "not slow"`` is the inner loop,
``python -m pytest`` runs everything. ``reliability`` marks the fault-injection suite.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from redis_server import RedisServer, running_redis  # noqa: E402


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
