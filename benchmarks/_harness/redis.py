"""The throw-away ``redis-server`` the tests use, for the benchmarks that need one.

Not imported by the package itself: the benchmarks that run against an older wsfleet (see
``compare.py``) do not need it, and that wsfleet may not have it.
"""

from __future__ import annotations

from wsfleet.testing.redis import RedisServer, RedisServerError

__all__ = ["RedisServer", "RedisServerError"]
