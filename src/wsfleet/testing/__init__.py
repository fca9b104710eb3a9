"""Tools for testing applications built on wsfleet.

* ``MemoryTransport``: a socket with no network behind it, that can be made slow, stalled,
  failing or closed, and answers pings as a healthy browser would.
* ``reconnect_storm``: a fleet of clients following a ``RetryPolicy`` losing their server,
  replayed on a virtual clock, to check a policy for herds.
* ``RedisServer``: a throw-away ``redis-server`` on a free loopback port, for the tests of a
  Redis-backed fleet (it can be killed, frozen and restarted on the same port).
"""

from .memory import MemoryTransport
from .redis import RedisServer, RedisServerError
from .storm import Storm, reconnect_storm

__all__ = ["MemoryTransport", "RedisServer", "RedisServerError", "Storm", "reconnect_storm"]
