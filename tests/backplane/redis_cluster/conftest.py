"""One Redis Cluster per module for the tests that leave its topology as they found it;
a test that kills a node starts its own (``running_redis_cluster``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from redis_server import RedisCluster, running_redis_cluster


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    """Six ``redis-server --cluster-enabled yes`` on free loopback ports, three shards
    (skipped, with the reason, where redis-server 7 or redis-cli is missing)."""
    with running_redis_cluster() as cluster:
        yield cluster
