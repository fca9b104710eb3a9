"""The tests' side of ``wsfleet.testing.RedisServer``: a server per test, skipped without one.

The ``redis`` fixture of tests/conftest.py is ``running_redis()``; a test that wants a server
of its own writes::

    with running_redis() as server:  # skips the test if redis-server is not installed
        ...

and ``running_redis_cluster()`` starts a ``wsfleet.testing.RedisCluster`` (six nodes, three
masters) the same way, skipped where ``redis-server`` 7 or ``redis-cli`` is missing, and
``running_redis_sentinel()`` a ``wsfleet.testing.RedisSentinel`` (a primary, a replica, a
Sentinel).
"""

from __future__ import annotations

import contextlib
import gc
import warnings
from collections.abc import Iterator

from wsfleet.testing.redis import RedisServer, RedisServerError, ping, redis_binary
from wsfleet.testing.redis_cluster import RedisCluster, cluster_binaries
from wsfleet.testing.redis_sentinel import RedisSentinel

__all__ = [
    "UNCLOSED",
    "RedisCluster",
    "RedisSentinel",
    "RedisServer",
    "RedisServerError",
    "ping",
    "redis_binary",
    "running_redis",
    "running_redis_cluster",
    "running_redis_sentinel",
]

#: The ResourceWarning coredis leaves behind on a failed dial (its streams are not closed).
UNCLOSED = "Unclosed <MemoryObject"


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    """A started server for the block; the calling test is skipped if there is no binary.

    On the way out, coredis's unclosed leftovers are collected here, with their warning
    silenced, rather than in whichever later test the garbage collector happens to run.
    """
    import pytest

    binary = redis_binary()
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with RedisServer(binary) as server:
        yield server
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", UNCLOSED, ResourceWarning)
        gc.collect()


@contextlib.contextmanager
def running_redis_cluster(**options: int) -> Iterator[RedisCluster]:
    """A started Redis Cluster for the block (``options`` go to ``RedisCluster``); the
    calling test is skipped, with the reason, where the binaries are missing or too old."""
    import pytest

    found = cluster_binaries()
    if isinstance(found, str):
        pytest.skip(found)
    with RedisCluster(**options) as cluster:
        yield cluster
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", UNCLOSED, ResourceWarning)
        gc.collect()


@contextlib.contextmanager
def running_redis_sentinel() -> Iterator[RedisSentinel]:
    """A primary, its replica and a Sentinel watching them, for the block; the calling test
    is skipped if there is no redis-server (Sentinel is a mode of it)."""
    import pytest

    if redis_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with RedisSentinel() as setup:
        yield setup
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", UNCLOSED, ResourceWarning)
        gc.collect()
