"""A throw-away Redis Sentinel setup for tests: a primary, a replica, one Sentinel.

For an application's tests of a fleet behind Sentinel, as for wsfleet's own::

    with RedisSentinel() as setup:      # RedisServerError if redis-server is missing
        backplane = RedisBackplane(setup.url, sentinels=setup.sentinels,
                                   service=setup.service)
        ...
        setup.kill_primary()            # SIGKILL; Sentinel promotes the replica
        setup.wait_for_failover()       # until Sentinel names the replica, and it says so

Every process is a ``RedisServer`` on its own free loopback port, without persistence; the
Sentinel (``redis-server <conf> --sentinel``) writes its config file in its own temp dir,
as Sentinel must. It watches the primary with a quorum of 1, calls it down after
``down_after_ms`` (1 s) and fails over at once. ``close()`` stops all three and removes
their temp dirs. Every wait is bounded in time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from .redis import HOST, Launched, RedisServer, RedisServerError
from .redis_cluster import _info, command

__all__ = ["RedisSentinel"]

SERVICE = "wsfleet-primary"


class _Primary(RedisServer):
    def _argv(self, port: int, directory: str) -> list[str]:
        # The replica syncs at once (by default the primary waits 5 s for more to come).
        return [*super()._argv(port, directory), "--repl-diskless-sync-delay", "0"]


class _Replica(RedisServer):
    def __init__(self, primary: RedisServer) -> None:
        super().__init__()
        self._primary = primary

    def _argv(self, port: int, directory: str) -> list[str]:
        return [*super()._argv(port, directory), "--replicaof", HOST, str(self._primary.port)]


class _Sentinel(RedisServer):
    def __init__(self, primary: RedisServer, service: str, down_after_ms: int) -> None:
        super().__init__()
        self._primary = primary
        self._service = service
        self._down_after_ms = down_after_ms

    def _argv(self, port: int, directory: str) -> list[str]:
        conf = Path(directory) / "sentinel.conf"
        conf.write_text(
            f"sentinel monitor {self._service} {HOST} {self._primary.port} 1\n"
            f"sentinel down-after-milliseconds {self._service} {self._down_after_ms}\n"
            f"sentinel failover-timeout {self._service} 10000\n"
            f"sentinel parallel-syncs {self._service} 1\n"
        )
        return [
            self._binary, str(conf), "--sentinel",
            "--port", str(port),
            "--bind", HOST,
            "--dir", directory,
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", "",
        ]  # fmt: skip


class RedisSentinel(Launched):
    """A primary and its replica, watched by one Sentinel, all on ``127.0.0.1``."""

    def __init__(
        self, *, service: str = SERVICE, down_after_ms: int = 1000, timeout: float = 20.0
    ) -> None:
        self.service = service
        self._timeout = timeout
        self.primary: RedisServer = _Primary()
        self.replica = _Replica(self.primary)
        self.sentinel = _Sentinel(self.primary, service, down_after_ms)

    @property
    def url(self) -> str:
        """The first primary's URL: for credentials and database (Sentinel names the host)."""
        return self.primary.url

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [(HOST, self.sentinel.port)]

    def start(self) -> RedisSentinel:
        try:
            self.primary.start()
            self.replica.start()
            self.sentinel.start()
            self.wait(self._ready, "the replica in sync, Sentinel watching both")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for server in (self.sentinel, self.replica, self.primary):
            server.close()

    def named_primary(self) -> int | None:
        """The port of the primary Sentinel names now (``None`` if it names none)."""
        try:
            reply = command(self.sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        except (OSError, RedisServerError):
            return None
        return int(reply[1]) if isinstance(reply, list) and len(reply) == 2 else None

    def kill_primary(self) -> None:
        self.primary.kill()

    def wait_for_failover(self) -> None:
        """Until Sentinel names the replica and the replica is a primary."""
        self.wait(
            lambda: (
                self.named_primary() == self.replica.port
                and _info(self.replica.port, "INFO", "replication").get("role") == "master"
            ),
            "Sentinel promoted the replica",
        )

    def wait(self, predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self._timeout
        delay = 0.01
        while not predicate():
            if time.monotonic() > deadline:
                raise RedisServerError(f"Redis Sentinel: not in time: {what}")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _ready(self) -> bool:
        replication = _info(self.replica.port, "INFO", "replication")
        if replication.get("master_link_status") != "up":
            return False
        # Sentinel knows of the replica (it learns it from the primary's INFO, in a while).
        sentinel = _info(self.sentinel.port, "INFO", "sentinel")
        return self.named_primary() == self.primary.port and "slaves=1" in sentinel.get(
            "master0", ""
        )

    def __repr__(self) -> str:
        return f"<RedisSentinel {self.service} primary={self.primary!r}>"
