"""The throw-away ``redis-server`` (and Redis Cluster) the tests use, for the benchmarks
that need one.

Not imported by the package itself: the benchmarks that run against an older wsfleet (see
``compare.py``) do not need it, and that wsfleet may not have it.
"""

from __future__ import annotations

from wsfleet.testing.redis import RedisServer, RedisServerError
from wsfleet.testing.redis_cluster import RedisCluster

__all__ = ["RedisCluster", "RedisServer", "RedisServerError"]
