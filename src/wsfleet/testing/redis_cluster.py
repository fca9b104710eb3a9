"""A throw-away Redis Cluster for tests: six ``redis-server`` on loopback, three shards.

For an application's tests of a fleet on Redis Cluster, as for wsfleet's own::

    with RedisCluster() as cluster:     # RedisServerError if a binary is missing or old
        backplane = RedisBackplane(cluster.url, cluster=True,
                                   startup_nodes=cluster.startup_nodes)
        ...
        old = cluster.master_for("{wsfleet}")
        cluster.kill(old)                # SIGKILL; its replica takes over
        cluster.wait_for_failover(old)   # until every live node agrees, and says "ok"

Each node is a ``RedisServer`` started with ``--cluster-enabled yes``, its own free port and
cluster bus port (``--cluster-port``, so nothing depends on ``port + 10000`` being free),
its own temp dir for ``nodes.conf``, no persistence. ``redis-cli --cluster create`` makes
three masters and a replica for each; the start returns once every node says
``cluster_state:ok`` and every replica's link to its master is up. ``node_timeout`` is low
(1 s) so that a killed master is replaced within a few seconds, and a replica fails over
whatever the age of its data (``cluster-replica-validity-factor 0``). ``close()`` stops every
node and removes every temp dir. Every wait is bounded in time.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .redis import HOST, Launched, RedisServer, RedisServerError, redis_binary

__all__ = ["ClusterNode", "RedisCluster", "cluster_binaries", "command"]

#: Sharded pub/sub and ``--cluster-port`` came with Redis 7.
MIN_VERSION = (7, 0)


def cluster_binaries() -> tuple[str, str] | str:
    """``(redis-server, redis-cli)`` if both are installed and recent enough; otherwise why
    not, as a sentence (a test skips with it)."""
    server = redis_binary()
    cli = shutil.which("redis-cli")
    if server is None or cli is None:
        missing = " and ".join(
            name for name, path in (("redis-server", server), ("redis-cli", cli)) if path is None
        )
        return f"{missing} not installed (apt-get install redis-server redis-tools)"
    out = subprocess.run(
        [server, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    match = re.search(r"v=(\d+)\.(\d+)", out)
    if match is None or (int(match[1]), int(match[2])) < MIN_VERSION:
        return f"Redis Cluster tests need redis-server 7 or later (sharded pub/sub): {out.strip()}"
    return server, cli


class _Reader:
    """RESP2 replies off a socket: simple strings, errors, integers, bulk strings, arrays."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._data = b""

    def _fill(self, size: int) -> None:
        while len(self._data) < size:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise OSError("connection closed")
            self._data += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self._data:
            self._fill(len(self._data) + 1)
        line, _, self._data = self._data.partition(b"\r\n")
        return line

    def reply(self) -> object:
        head = self._line()
        kind, value = head[:1], head[1:]
        if kind == b"+":
            return value.decode()
        if kind == b"-":
            raise RedisServerError(value.decode())
        if kind == b":":
            return int(value)
        if kind == b"$":
            size = int(value)
            if size < 0:
                return None
            self._fill(size + 2)
            data, self._data = self._data[:size], self._data[size + 2 :]
            return data.decode()
        if kind == b"*":
            count = int(value)
            return None if count < 0 else [self.reply() for _ in range(count)]
        raise RedisServerError(f"unexpected reply {head!r}")


def command(port: int, *args: str, timeout: float = 1.0) -> object:
    """Send one command to ``127.0.0.1:port`` and return its reply (strings, integers,
    ``None`` and lists of them); ``OSError`` if nothing answers, ``RedisServerError`` for
    an error reply."""
    request = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(arg.encode())}\r\n".encode() + arg.encode() + b"\r\n" for arg in args
    )
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(request)
        return _Reader(sock).reply()


def _info(port: int, *args: str) -> dict[str, str]:
    """``INFO``-like ``key:value`` lines (``CLUSTER INFO``, ``INFO replication``) as a dict;
    empty if the node does not answer."""
    try:
        reply = command(port, *args)
    except (OSError, RedisServerError):
        return {}
    lines = str(reply).splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line and not line.startswith("#"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class ClusterNode(RedisServer):
    """A ``RedisServer`` started as a cluster node; its bus port is kept across restarts,
    like its port, so that a killed node can come back as itself."""

    def __init__(self, binary: str | None = None, *, node_timeout_ms: int = 1000) -> None:
        super().__init__(binary)
        self.node_timeout_ms = node_timeout_ms
        self.bus_port: int | None = None

    def _argv(self, port: int, directory: str) -> list[str]:
        if self._port is None:  # a first start, maybe a retry after a lost race: new ports
            self.bus_port = _free_port()
        return [
            *super()._argv(port, directory),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-port", str(self.bus_port),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-replica-validity-factor", "0",
            # A replica syncs at once (the default waits 5 s for more replicas to come).
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip

    def cluster_info(self) -> dict[str, str]:
        """``CLUSTER INFO`` as a dict; empty if the node does not answer."""
        return _info(self.port, "CLUSTER", "INFO")


@dataclass(frozen=True)
class Shard:
    """One master and its replicas, as a live node reports them (ports on ``127.0.0.1``)."""

    master: int
    replicas: tuple[int, ...]
    slots: tuple[tuple[int, int], ...]

    def owns(self, slot: int) -> bool:
        return any(low <= slot <= high for low, high in self.slots)


class RedisCluster(Launched):
    """``masters`` shards of ``1 + replicas`` nodes each, on ``127.0.0.1``."""

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
        startup_timeout: float = 30.0,
    ) -> None:
        found = cluster_binaries()
        if isinstance(found, str):
            raise RedisServerError(found)
        if masters < 3:
            raise ValueError(f"redis-cli --cluster create needs 3 masters at least, not {masters}")
        self._server, self._cli = found
        self._count = masters * (1 + replicas)
        self._masters = masters
        self._replicas = replicas
        self._node_timeout_ms = node_timeout_ms
        self._startup_timeout = startup_timeout
        self.nodes: list[ClusterNode] = []

    # -- addresses --------------------------------------------------------------------------

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        """The first node's URL (a cluster client finds the others from any one)."""
        return self.nodes[0].url

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """Every node as ``(host, port)``: a client that knows them all can start while any
        of them is down."""
        return [(HOST, node.port) for node in self.nodes]

    def node(self, port: int) -> ClusterNode:
        return next(node for node in self.nodes if node.port == port)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> RedisCluster:
        if self.nodes:
            return self
        try:
            for _ in range(self._count):
                node = ClusterNode(self._server, node_timeout_ms=self._node_timeout_ms)
                self.nodes.append(node)
                node.start()
            self._create()
            self.wait(self._ready, "every node in cluster_state:ok, every replica in sync")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL) and remove their temp dirs."""
        nodes, self.nodes = self.nodes, []
        for node in nodes:
            node.close()

    def __repr__(self) -> str:
        return f"<RedisCluster {HOST}:{self.ports}>"

    # -- topology ---------------------------------------------------------------------------

    def shards(self) -> list[Shard]:
        """The shards as the first live node sees them (``CLUSTER NODES``), failed nodes
        left out."""
        for node in self.live():
            with contextlib.suppress(OSError, RedisServerError):
                return _parse_nodes(str(command(node.port, "CLUSTER", "NODES")))
        raise RedisServerError("no node of the cluster answers")

    def keyslot(self, key: str) -> int:
        for node in self.live():
            with contextlib.suppress(OSError, RedisServerError):
                slot = command(node.port, "CLUSTER", "KEYSLOT", key)
                assert isinstance(slot, int)
                return slot
        raise RedisServerError("no node of the cluster answers")

    def shard_for(self, key: str) -> Shard:
        """The shard that holds ``key`` (or a channel of that name: sharded pub/sub places
        channels as keys), hash tags considered."""
        slot = self.keyslot(key)
        return next(shard for shard in self.shards() if shard.owns(slot))

    def master_for(self, key: str) -> ClusterNode:
        return self.node(self.shard_for(key).master)

    def live(self) -> Iterator[ClusterNode]:
        return (node for node in self.nodes if node.running)

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL one node; the cluster sees it fail after ``node_timeout_ms``."""
        node.kill()

    def wait_for_failover(self, old_master: ClusterNode, timeout: float = 20.0) -> ClusterNode:
        """Wait until one of ``old_master``'s replicas is master of its slots on every live
        node's view and the cluster is ok again; return it."""
        replicas: set[int] = set()
        for shard in self.shards():
            if shard.master == old_master.port:
                replicas.update(shard.replicas)
        if not replicas:
            raise RedisServerError(f"{old_master!r} has no replica to take over")
        promoted: list[int] = []

        def done() -> bool:
            masters: set[int] = set()
            for node in self.live():
                try:
                    shards = _parse_nodes(str(command(node.port, "CLUSTER", "NODES")))
                except (OSError, RedisServerError):
                    return False
                masters.update(s.master for s in shards if s.slots)
                if old_master.port in masters:
                    return False
            new = masters & replicas
            if len(new) != 1 or not self._all_ok():
                return False
            promoted[:] = list(new)
            return True

        self.wait(done, f"a replica of {old_master!r} took over", timeout)
        return self.node(promoted[0])

    # -- internals --------------------------------------------------------------------------

    def _create(self) -> None:
        argv = [
            self._cli,
            "--cluster", "create",
            *(f"{HOST}:{port}" for port in self.ports),
            "--cluster-replicas", str(self._replicas),
            "--cluster-yes",
        ]  # fmt: skip
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self._startup_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RedisServerError(f"redis-cli --cluster create took over {exc.timeout}s") from exc
        if done.returncode != 0:
            raise RedisServerError(
                f"redis-cli --cluster create failed ({done.returncode}): "
                f"{(done.stdout + done.stderr).strip()[-2000:]}"
            )

    def _all_ok(self) -> bool:
        return all(node.cluster_info().get("cluster_state") == "ok" for node in self.live())

    def _ready(self) -> bool:
        """Every node ok, every replica in sync, and every node's view whole (a node learns
        of the others' roles by gossip, a little later than they take them)."""
        if not self._all_ok():
            return False
        for node in self.nodes:
            info = _info(node.port, "INFO", "replication")
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
            try:
                shards = _parse_nodes(str(command(node.port, "CLUSTER", "NODES")))
            except (OSError, RedisServerError):
                return False
            if (
                sorted(len(shard.replicas) for shard in shards if shard.slots)
                != [self._replicas] * self._masters
            ):
                return False
        return True

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float | None = None) -> None:
        """Poll ``predicate`` until it holds; ``RedisServerError`` naming ``what`` after
        ``timeout`` seconds (the startup timeout by default)."""
        deadline = time.monotonic() + (self._startup_timeout if timeout is None else timeout)
        delay = 0.01
        while not predicate():
            if time.monotonic() > deadline:
                raise RedisServerError(f"Redis Cluster: not in time: {what}")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _parse_nodes(text: str) -> list[Shard]:
    """``CLUSTER NODES`` -> shards, failed nodes left out (``fail`` flag)."""
    masters: dict[str, tuple[int, list[tuple[int, int]]]] = {}
    replicas: dict[str, list[int]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        node_id, address, flags, master_id = fields[0], fields[1], fields[2], fields[3]
        port = int(address.split("@")[0].rsplit(":", 1)[1])
        flag_set = set(flags.split(","))
        if "fail" in flag_set or "noaddr" in flag_set:
            continue
        if "master" in flag_set:
            slots = []
            for spec in fields[8:]:
                if spec.startswith("["):
                    continue  # a slot being migrated
                low, _, high = spec.partition("-")
                slots.append((int(low), int(high or low)))
            masters[node_id] = (port, slots)
        else:
            replicas.setdefault(master_id, []).append(port)
    return [
        Shard(port, tuple(sorted(replicas.get(node_id, []))), tuple(sorted(slots)))
        for node_id, (port, slots) in masters.items()
    ]
