"""Tools for testing applications built on wsfleet.

* ``MemoryTransport``: a socket with no network behind it, that can be made slow, stalled,
  failing or closed, and answers pings as a healthy browser would.
* ``reconnect_storm``: a fleet of clients following a ``RetryPolicy`` losing their server,
  replayed on a virtual clock, to check a policy for herds.
* ``RedisServer``: a throw-away ``redis-server`` on a free loopback port, for the tests of a
  Redis-backed fleet (it can be killed, frozen and restarted on the same port).
* ``RedisCluster``: six of them as a Redis Cluster (three masters, a replica each), whose
  masters can be killed to see a replica take over.
* ``RedisSentinel``: a primary, its replica and a Sentinel, to see Sentinel promote the
  replica when the primary dies.
"""

from .memory import MemoryTransport
from .redis import RedisServer, RedisServerError
from .redis_cluster import RedisCluster
from .redis_sentinel import RedisSentinel
from .storm import Storm, reconnect_storm

__all__ = [
    "MemoryTransport",
    "RedisCluster",
    "RedisSentinel",
    "RedisServer",
    "RedisServerError",
    "Storm",
    "reconnect_storm",
]
